"""Counterfactual evaluation: retrain without the contributors an attribution ranks highest.

If an attribution is right about who drives a property, removing its top contributors should
change the property more than removing as many at random (and more than removing the top by a
weaker attribution such as leave-one-out).
"""

from __future__ import annotations

import numpy as np


def _count(fraction: float, n: int) -> int:
    return min(max(1, int(round(fraction * n))), n - 1)


def counterfactual_sets(values: np.ndarray, contributors: list[str], *, remove_fraction: float = 0.4,
                        keep_fraction: float = 0.6) -> dict[str, list[str]]:
    """The coalitions to retrain: ``remove_top`` = everyone but the top round(remove_fraction·n) by
    value; ``keep_top`` = only the top round(keep_fraction·n). Ties break by contributor order."""
    values = np.asarray(values, dtype=float)
    n = len(contributors)
    if len(values) != n:
        raise ValueError(f"{len(values)} values for {n} contributors")
    order = np.argsort(-values, kind="stable")
    top_remove = {contributors[i] for i in order[:_count(remove_fraction, n)]}
    top_keep = {contributors[i] for i in order[:_count(keep_fraction, n)]}
    return {"remove_top": [c for c in contributors if c not in top_remove],
            "keep_top": [c for c in contributors if c in top_keep]}


def random_removals(contributors: list[str], remove_fraction: float, n_random: int, seed: int) -> list[list[str]]:
    """``n_random`` coalitions, each the contributors minus a seeded random round(fraction·n) of them."""
    n = len(contributors)
    k = _count(remove_fraction, n)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_random):
        removed = set(rng.choice(n, size=k, replace=False).tolist())
        out.append([c for i, c in enumerate(contributors) if i not in removed])
    return out


def relative_change(v_after: float, v_full: float) -> float:
    """(v_after − v_full) / |v_full|; signed, so a drop in the property is negative."""
    if v_full == 0:
        return float("nan")
    return (v_after - v_full) / abs(v_full)
