"""What an interval of a valuation result covers, what it leaves out, and an estimator's known bias.

The table a contributor is paid by carries these beside every value (``shapley_values`` in DuckDB and
``attribution-pipeline show``), so that a zero-width or a narrow interval is never read as certainty it
cannot claim. How the interval was obtained is the result's ``uncertainty`` text; this module adds
what is *not* in it, by estimator.
"""

from __future__ import annotations

from attribution_pipeline.valuation.result import ValuationResult

SFT_GAP = "the gap between the utility method (e.g. sFT) and retraining"
ENDS = "the noise of v(∅) and v(N), which is unknown (each measured once, no replicates)"
UNKNOWN_NOISE = "the utility noise, which is unknown (each coalition measured once, no replicates)"
HELD = "the utility noise of the complete sizes held fixed, which is unknown"

KNOWN_BIAS = {
    "proxy": "biased: the values of a bagged tree/linear proxy of the utility, shrunk toward equal shares; "
             "the interval covers their variance only (use regression-msr or kernelshap for unbiased values)",
    "loo": "not a Shapley value: each contributor's leave-one-out marginal only",
    "banzhaf-msr": "a Banzhaf value (every coalition weighted equally), not a Shapley value",
}


def interval_excludes(res: ValuationResult) -> str:
    """What the interval of ``res`` does not cover, as one '; '-joined sentence.

    With the utility noise known (replicates, or repeated rows), ``estimate`` puts the noise of v(∅),
    v(N) and of any coalitions its resampling holds fixed into every interval; without it, those are
    named here. The gap between the utility method and retraining is never in an interval."""
    out = []
    if res.estimator == "proxy":
        out.append("the proxy's bias")
    if res.noise_std is None:
        if res.estimator in ("exact", "loo"):
            out.append(UNKNOWN_NOISE)
        else:
            out.append(ENDS)
            if "held fixed" in res.uncertainty:
                out.append(HELD)
    out.append(SFT_GAP)
    return "; ".join(out)


def scope_columns(res: ValuationResult) -> dict:
    """The columns a stored row of ``res`` carries: uncertainty, interval_excludes, known_bias, warnings."""
    return {"uncertainty": res.uncertainty, "interval_excludes": interval_excludes(res),
            "known_bias": KNOWN_BIAS.get(res.estimator), "warnings": list(res.warnings)}
