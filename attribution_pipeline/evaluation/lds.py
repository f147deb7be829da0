"""Linear datamodeling score (LDS), as in Lin et al. (2025) and TRAK.

For held-out coalitions S_1..S_m (each keeping a fraction α of the n contributors), an
attribution φ predicts v(S_j) ≈ Σ_{i∈S_j} φ_i. LDS is the Spearman rank correlation × 100 between
those predictions and the utilities measured by retraining, computed per training seed and
reported as mean ± 1.96·std/√seeds. Retraining is itself noisy: the Spearman correlation between
two seeds' utilities (the test–retest ceiling) bounds what any attribution can reach.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ with average ranks for ties; NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def draw_test_coalitions(n_players: int, alpha: float, n_test: int, seed: int,
                         exclude: set[tuple[int, ...]] | None = None) -> np.ndarray:
    """``(m, n)`` boolean masks of distinct coalitions of size round(α·n) (at least 1, at most n−1),
    drawn uniformly with ``seed``, avoiding ``exclude`` (member-index tuples, e.g. the coalitions
    the attribution was fitted on) while enough others exist. m = min(n_test, number available)."""
    if n_players < 2:
        raise ValueError("LDS needs at least 2 contributors")
    size = min(max(1, int(round(alpha * n_players))), n_players - 1)
    exclude = exclude or set()
    total = math.comb(n_players, size)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, ...]] = []
    if total <= 4 * n_test + len(exclude):  # small: enumerate and shuffle
        pool = list(itertools.combinations(range(n_players), size))
        order = rng.permutation(len(pool))
        fresh = [pool[i] for i in order if pool[i] not in exclude]
        used = [pool[i] for i in order if pool[i] in exclude]
        chosen = (fresh + used)[:n_test]
    else:
        seen: set[tuple[int, ...]] = set()
        while len(chosen) < n_test:
            c = tuple(sorted(rng.choice(n_players, size=size, replace=False).tolist()))
            if c not in seen and c not in exclude:
                seen.add(c)
                chosen.append(c)
    masks = np.zeros((len(chosen), n_players), dtype=bool)
    for j, c in enumerate(chosen):
        masks[j, list(c)] = True
    return masks


@dataclass
class LDSResult:
    lds: float  # mean over seeds of Spearman × 100
    ci_half_width: float  # 1.96 · std / √seeds
    per_seed: list[float]
    ceiling: float  # mean Spearman × 100 between pairs of seeds' measured utilities
    n_test: int
    n_seeds: int


def lds_score(values: np.ndarray, masks: np.ndarray, measured: np.ndarray) -> LDSResult:
    """``values`` (n,), ``masks`` (m, n) held-out coalitions, ``measured`` (seeds, m) retrained utilities."""
    values = np.asarray(values, dtype=float)
    masks = np.asarray(masks, dtype=bool)
    measured = np.atleast_2d(np.asarray(measured, dtype=float))
    if masks.shape[1] != len(values) or measured.shape[1] != len(masks):
        raise ValueError(f"shapes disagree: values {values.shape}, masks {masks.shape}, measured {measured.shape}")
    if len(masks) < 3:
        raise ValueError(f"LDS needs at least 3 test coalitions, got {len(masks)}")
    predicted = masks.astype(float) @ values
    per_seed = [100.0 * spearman(predicted, row) for row in measured]
    s = len(per_seed)
    std = float(np.std(per_seed, ddof=1)) if s > 1 else float("nan")
    pairs = [100.0 * spearman(measured[a], measured[b]) for a, b in itertools.combinations(range(s), 2)]
    return LDSResult(float(np.mean(per_seed)), 1.96 * std / math.sqrt(s), per_seed,
                     float(np.mean(pairs)) if pairs else float("nan"), len(masks), s)
