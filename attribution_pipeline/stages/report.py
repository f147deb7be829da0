"""The attribution report: one HTML page (and PNG figures) a person reads, under ``<workdir>/report/``.

``build_report`` reads the result tables and the work directory's images and writes, atomically:

1. the Shapley table of each property (the latest round's default estimate) with its interval, rank,
   rank interval and what the interval covers;
2. a Table-1-style LDS table: every attribution (Shapley variants and baselines) × property, with the
   interval, the random range of the same test set (cells inside it greyed), the oracle ceiling and
   each method's cost (needs ``evaluate``; otherwise the section says so);
3. LDS against cost (Shapley variants and baselines as points);
4. the counterfactual figure: remove the top fraction by each ranking against random removals;
5. image grids: θ*'s samples, the top-3 and bottom-3 contributors' own images, and the model retrained
   without the top 40% beside the full coalition retrained with the same seed, on the same noise;
6. the rank agreement (Spearman) of every attribution's contributor values.

Returns the page, the figure files and a markdown summary with the figures inlined (data URIs) for
the Dagster asset page.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.contributors import to_uint8
from attribution_pipeline.evaluation import spearman
from attribution_pipeline.layout import RunLayout
from attribution_pipeline.reporting import figures
from attribution_pipeline.reporting.page import Cell, Figure, Section, Table, render_page
from attribution_pipeline.stages.contributors import contributor_ids
from attribution_pipeline.stages.result import Log, quiet
from attribution_pipeline.storage.artifacts import atomic_folder, is_complete, read_manifest
from attribution_pipeline.storage.results import ResultStore

PAGE = "index.html"


@dataclass
class ReportOutcome:
    folder: Path
    page: Path
    figures: dict[str, Path] = field(default_factory=dict)  # file name -> path
    markdown: str = ""
    missing: list[str] = field(default_factory=list)  # sections that wait for another step


def report_dir(layout: RunLayout) -> Path:
    return layout.workdir / "report"


def _fmt(x, spec: str = "{:.3g}") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else spec.format(x)


def _latest(store: ResultStore, table: str, extra: str = "") -> list[dict]:
    return store.query(f"SELECT * FROM {table} WHERE computed_at = (SELECT max(computed_at) FROM {table}) {extra}").to_dicts()


def _shapley_section(shap: list[dict], props: list[str]) -> Section:
    s = Section("Shapley values", [
        "Each contributor's Shapley value of each property (the valuation's default estimate), its 95% interval, "
        "its rank (1 = most credit) and the rank interval. Values sum to v(N) − v(∅)."])
    for p in props:
        rows = [r for r in shap if r["property"] == p]
        if not rows:
            continue
        covers = rows[0].get("uncertainty") or "–"
        excludes = rows[0].get("interval_excludes") or "–"
        s.tables.append(Table(
            ["contributor", "value", "95% interval", "rank", "rank interval"],
            [[r["contributor"], _fmt(r["value"], "{:+.4g}"),
              f"{_fmt(r['ci_low'], '{:+.4g}')} to {_fmt(r['ci_high'], '{:+.4g}')}", str(r["rank"]),
              f"{_fmt(r['rank_low'], '{}')}–{_fmt(r['rank_high'], '{}')}"] for r in rows],
            caption=f"{p} — {rows[0]['estimator']} on {rows[0]['n_coalitions']} coalitions, round {rows[0]['round_id']}. "
                    f"The interval covers: {covers}. It does not cover: {excludes}."))
    return s


def _method_costs(store: ResultStore, layout: RunLayout) -> dict[str, float]:
    """Seconds per attribution: a Shapley variant's coalition utilities (fine-tune, generate, score) of
    its method, plus the pruned base's fine-tune for sFT; a baseline's ``cost_s``."""
    out = {}
    for r in store.query("SELECT method, sum(elapsed_s) AS s FROM utilities GROUP BY method").to_dicts():
        out[f"shapley-{r['method']}"] = float(r["s"] or 0.0)
    if is_complete(layout.pruned_base_dir) and "shapley-sft" in out:
        out["shapley-sft"] += float(read_manifest(layout.pruned_base_dir).get("finetune_seconds") or 0.0)
    for r in store.query("SELECT method, max(cost_s) AS s FROM attributions GROUP BY method").to_dicts():
        out[r["method"]] = float(r["s"] or 0.0)
    return out


def _lds_section(lds: list[dict], props: list[str], costs: dict[str, float]) -> tuple[Section, list[dict]]:
    s = Section("Linear datamodeling score (LDS) of every attribution", [
        "LDS: Spearman × 100 between Σ_{i∈S} of an attribution and the retrained property of held-out coalitions S, "
        "mean over retrain seeds. Interval: 95% bootstrap over the test coalitions and the seeds. Random range: where "
        "random attributions land on the same test set; greyed cells lie inside it (not distinguishable from chance). "
        "Ceiling: what the expected utility itself scores (an oracle). Cost: seconds of compute."])
    points = []
    for alpha in sorted({r["alpha"] for r in lds}):
        sub = [r for r in lds if r["alpha"] == alpha]
        methods = sorted({_name(r) for r in sub}, key=lambda m: (not m.startswith("shapley"), m))
        rows = []
        for m in methods:
            row = [m, _fmt(_cost(costs, m), "{:.0f}")]
            for p in props:
                r = next((r for r in sub if _name(r) == m and r["property"] == p), None)
                if r is None or r["lds"] is None:
                    row.append(Cell("–", muted=True))
                    continue
                row.append(Cell(f"{r['lds']:.1f} [{_fmt(r['lds_lo'], '{:.1f}')}, {_fmt(r['lds_hi'], '{:.1f}')}]",
                                muted=bool(r["inside_random"])))
                points.append({"property": p, "method": m, "family": _family(m),
                               "lds": r["lds"], "lo": r["lds_lo"], "hi": r["lds_hi"], "cost_s": _cost(costs, m),
                               "random_lo": r["random_lo"], "random_hi": r["random_hi"]})
            rows.append(row)
        for label, key in (("random 95% range", None), ("oracle ceiling", "ceiling")):
            row = [label, ""]
            for p in props:
                r = next((r for r in sub if r["property"] == p), None)
                row.append("–" if r is None else (f"{_fmt(r['random_lo'], '{:.1f}')} to {_fmt(r['random_hi'], '{:.1f}')}"
                                                  if key is None else _fmt(r[key], "{:.1f}")))
            rows.append(row)
        first = sub[0]
        s.tables.append(Table(["attribution", "cost (s)", *props], rows, text_columns=1, caption=(
            f"α = {alpha:g}: {first['n_test']} test coalitions × {first['n_seeds']} retrain seeds "
            f"{first.get('retrain_seeds')}. Interval covers: {first.get('interval_covers') or '–'}.")))
    return s, points


def _cost(costs: dict[str, float], name: str) -> float | None:
    """A method's seconds; a non-default estimator of a Shapley variant fits the same utilities."""
    return costs.get(name, costs.get(name.split("/")[0]))


def _family(name: str) -> str:
    from attribution_pipeline.stages.baselines import family_of

    return "shapley" if name.startswith("shapley") else family_of(name)


def _name(r: dict) -> str:
    """An LDS row's attribution: a baseline's name, or ``shapley-<method>`` (``/<estimator>`` if not default)."""
    if r["method"] == "baseline":
        return r["estimator"]
    return f"shapley-{r['method']}" + ("" if r["is_default"] else f"/{r['estimator']}")


def _agreement(store: ResultStore, props: list[str], ids: list[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    att = store.query("SELECT method, property, contributor, value FROM latest_attributions").to_dicts()
    out = {}
    for p in props:
        by: dict[str, dict[str, float]] = {}
        for r in att:
            if r["property"] == p:
                by.setdefault(r["method"], {})[r["contributor"]] = r["value"]
        names = [m for m in sorted(by, key=lambda m: (not m.startswith("shapley"), m)) if all(c in by[m] for c in ids)]
        if len(names) < 2:
            continue
        vals = [np.array([by[m][c] for c in ids], dtype=float) for m in names]
        out[p] = (np.array([[spearman(a, b) for b in vals] for a in vals]), names)
    return out


def _own_images(layout: RunLayout, contributor: str, n: int) -> np.ndarray:
    x = np.load(layout.contributor_array(contributor))[:n]  # uint8 (N, C, H, W)
    return x.transpose(0, 2, 3, 1)


def _images_of(folder: Path, n: int) -> np.ndarray | None:
    from attribution_pipeline.data.imagesets import load_image_set

    if not is_complete(folder):
        return None
    x = to_uint8(load_image_set(folder)[:n])
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _image_sections(cfg: PipelineConfig, layout: RunLayout, shap: list[dict], cf: list[dict], props: list[str],
                    files: dict[str, bytes], missing: list[str]) -> Section:
    s = Section("Images", ["Samples share their starting noise (common random numbers), so a difference between two "
                           "grids comes from the models, not the noise."])
    full = _images_of(layout.full_model_images_dir, 32)
    if full is not None:
        files["samples_full_model.png"] = figures.image_grid(full)
        s.figures.append(Figure("samples_full_model.png", "Samples of the full model θ* (first 32)."))
    p = props[0]
    ranked = sorted((r for r in shap if r["property"] == p), key=lambda r: r["rank"])
    top3 = ranked[:3]
    for label, group in (("top", top3), ("bottom", [r for r in ranked[-3:] if r not in top3])):
        for r in group:
            name = f"own_{label}_{r['rank']}.png"
            files[name] = figures.image_grid(_own_images(layout, r["contributor"], 8))
            s.figures.append(Figure(name, f"{label.title()} contributor by {p}: {r['contributor']} (rank {r['rank']}, "
                                          f"value {r['value']:+.4g}); its own images (first 8)."))
    top = [r for r in cf if r["property"] == p and r["scenario"] == "remove_top" and r["ranking"] == "shapley"]
    if top:
        r = min(top, key=lambda r: abs(r["fraction"] - 0.4))
        seed = r["retrain_seeds"][0]
        without = _images_of(layout.coalition_images_dir(r["coalition_key"], "retrain", seed), 32)
        from attribution_pipeline.coalitions import make_coalition

        full_key = make_coalition(contributor_ids(layout), "full", 0).key
        everyone = _images_of(layout.coalition_images_dir(full_key, "retrain", seed), 32)
        if without is not None and everyone is not None:
            files["retrained_all.png"] = figures.image_grid(everyone)
            files["retrained_without_top.png"] = figures.image_grid(without)
            s.figures.append(Figure("retrained_all.png", f"Retrained on every contributor (seed {seed})."))
            s.figures.append(Figure("retrained_without_top.png", f"Retrained without the top {r['fraction']:.0%} by "
                                    f"{p} ({', '.join(r['removed'])}), same seed and noise: relative change "
                                    f"{100 * r['relative_change']:+.1f}%."))
    else:
        missing.append("images without the top contributors (attribution-pipeline evaluate --only counterfactual)")
    return s


def build_report(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = quiet) -> ReportOutcome:
    ids, props = contributor_ids(layout), list(cfg.valuation.properties)
    shap = store.query("SELECT * FROM latest_shapley_values WHERE is_default ORDER BY property, rank").to_dicts()
    if not shap:
        raise RuntimeError("no valuation round yet: run `attribution-pipeline run` first")
    lds, cf = _latest(store, "lds_results"), _latest(store, "counterfactual_results")
    files: dict[str, bytes] = {}
    missing: list[str] = []
    sections = [_shapley_section(shap, props)]
    costs = _method_costs(store, layout)
    if lds:
        sec, points = _lds_section(lds, props, costs)
        if points:
            files["lds_versus_cost.png"] = figures.lds_versus_cost(points, props)
            sec.figures.append(Figure("lds_versus_cost.png", "LDS against cost: Shapley variants (filled) and baselines "
                                      "(open) with their 95% intervals; grey: the random range."))
        sections.append(sec)
    else:
        missing.append("LDS table and LDS-against-cost figure (attribution-pipeline evaluate --only lds)")
    if cf:
        files["counterfactual.png"] = figures.counterfactual_curves(cf, props)
        sections.append(Section("Counterfactuals", [
            "Relative change of each property after retraining without the top fraction of contributors by each "
            "ranking, with the 95% t interval over retrain seeds; crosses: random removals of the same size."],
            figures=[Figure("counterfactual.png", "Remove the top contributors by each method vs at random.")]))
    else:
        missing.append("counterfactual figure (attribution-pipeline evaluate --only counterfactual)")
    sections.append(_image_sections(cfg, layout, shap, cf, props, files, missing))
    agree = _agreement(store, props, ids)
    if agree:
        sec = Section("Rank agreement between attributions", [
            "Spearman correlation of the contributor values of every pair of attributions (Shapley variants and "
            "baselines), per property. Agreement is not accuracy: the LDS table says which ones predict retraining."])
        for p, (m, names) in agree.items():
            files[f"agreement_{p}.png"] = figures.rank_agreement(m, names, p)
            sec.figures.append(Figure(f"agreement_{p}.png", f"Rank agreement on {p}."))
        sections.append(sec)
    else:
        missing.append("rank agreement (attribution-pipeline evaluate --only baselines)")
    r0 = shap[0]
    intro = [f"Work directory {layout.workdir}; {len(ids)} contributors; round {r0['round_id']}; properties {', '.join(props)}."]
    if missing:
        intro.append("Not yet computed: " + "; ".join(missing) + ".")
    html_text = render_page("Contributor attribution report", intro, sections)
    folder = report_dir(layout)
    with atomic_folder(folder, {"kind": "report", "round_id": r0["round_id"], "figures": sorted(files),
                                "missing": missing}) as tmp:
        (tmp / PAGE).write_text(html_text, encoding="utf-8")
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    log(f"report: {folder / PAGE} ({len(files)} figures)")
    return ReportOutcome(folder, folder / PAGE, {n: folder / n for n in files},
                         _markdown(shap, props, files, missing, folder / PAGE), missing)


def _markdown(shap: list[dict], props: list[str], files: dict[str, bytes], missing: list[str], page: Path) -> str:
    """The asset page's summary: top contributors per property and the figures as data URIs."""
    lines = [f"Report: `{page}`", ""]
    for p in props:
        top = [r for r in shap if r["property"] == p][:3]
        lines.append(f"- **{p}**: top " + ", ".join(f"{r['contributor']} ({r['value']:+.3g})" for r in top))
    if missing:
        lines += ["", "Not yet computed: " + "; ".join(missing)]
    for name in sorted(files):
        lines += ["", f"**{name}**", "", f"![{name}](data:image/png;base64,{base64.b64encode(files[name]).decode()})"]
    return "\n".join(lines)

