"""Proxies of the utility: cheap models of v(S) whose Shapley values are known exactly.

A proxy is fitted to (coalition, utility − v(∅)) pairs and treated as a game of its own: f(∅) is its
prediction at the all-zero row, f(N) at the all-one row. Two proxies:

- ``linear``: ridge regression on the membership indicators, the same indicators diluted by the
  coalition's size, and a smooth trend in the size:
  f(S) = β0 + Σ_{i∈S} β_i + Σ_{i∈S} δ_i / |S| + Σ_p γ_p (|S|/n)^p, p ∈ SIZE_POWERS (ridge strength by
  efficient leave-one-out cross-validation). Utilities saturate with the amount of data: the size trend
  takes the common curvature out of the residual, and δ_i / |S| lets a contributor's own effect fade as
  the others' data grows (a class of digits matters more in a model of two classes than of nine).
  Fits with and without the diluted term are blended by leave-one-out error (``fit_linear``). On the
  enumerated real game (``benchmarks/results/estimators-real-game.md``) at B = 10n with a 5-fold
  cross-fit, the blend took regression-MSR's error on quality from 0.17 to 0.12.
  Shapley values, exact: a function of |S| alone is shared equally, (h(n) − h(0)) / n each;
  1{i∈S}/|S| gives i H_n / n (it adds 1/(k+1) on joining k others, averaged over k = 0..n−1) and every
  other contributor (1 − H_n) / (n (n − 1)) (the rest of its total 1/n), H_n the n-th harmonic number.
- ``tree``: the linear proxy plus gradient-boosted trees (scikit-learn ``HistGradientBoostingRegressor``)
  fitted to the linear proxy's residuals. Starting from the linear fit leaves the trees the interactions
  only; an additive utility over hundreds of contributors would otherwise need hundreds of splits.

Tree Shapley values are exact, not sampled. On 0/1 inputs a leaf is reached from coalition S iff S
contains every contributor in A (splits the path takes on the "1" side only) and none in R (the "0"
side only). The leaf's game 1{A ⊆ S, R ∩ S = ∅} has Shapley values 1 / (|A| C(|A|+|R|, |A|)) on A and
−1 / (|R| C(|A|+|R|, |R|)) on R (a contributor of A helps iff it arrives last among A and before all of
R). Summing leaf value × these over all leaves of all trees gives the proxy's values; this reads the
fitted trees from ``HistGradientBoostingRegressor._predictors`` (scikit-learn 1.9 is pinned), and the
tests check the reconstruction against ``predict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np

PROXIES = ("tree", "linear")
SIZE_POWERS = (2, 3)
_RIDGE_ALPHAS = np.logspace(-4, 4, 17)


def linear_features(z: np.ndarray) -> np.ndarray:
    """Features (k, 2n + len(SIZE_POWERS)) of the linear proxy: memberships, memberships / |S| (0 at ∅),
    then (|S|/n)^p."""
    z = np.asarray(z, dtype=np.float64)
    size = z.sum(axis=1, keepdims=True)
    u = size / z.shape[1]
    return np.hstack([z, z / np.maximum(size, 1.0)] + [u**p for p in SIZE_POWERS])


def linear_shapley(coef: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values (n,) of the linear proxy with coefficients ``coef`` (layout of
    ``linear_features``) as a game; the module docstring derives them."""
    beta, delta, gamma = coef[:n], coef[n : 2 * n], coef[2 * n :]
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    own = delta * harmonic / n
    others = (delta.sum() - delta) * (1.0 - harmonic) / (n * (n - 1)) if n > 1 else 0.0
    return beta + own + others + gamma.sum() / n


@dataclass
class TreeSettings:
    """Boosting settings of the tree proxy (kept small: fitted K + 1 times per estimate)."""

    max_iter: int = 100  # boosting rounds
    learning_rate: float = 0.1
    max_leaf_nodes: int = 8  # leaves per tree; depth of interactions a tree can hold
    min_samples_leaf: int = 8  # coalitions per leaf
    l2_regularization: float = 1.0


@dataclass
class FittedProxy:
    """A fitted proxy f over coalitions; f(S) approximates v(S) − v(∅).

    ``coef`` (2n + len(SIZE_POWERS),) and ``intercept``: the linear part on ``linear_features``;
    ``trees``: the boosted part or None. ``shapley`` (n,): exact Shapley values of f as a game; they
    sum to f(N) − f(∅).
    """

    coef: np.ndarray
    intercept: float
    trees: object | None = None
    shapley: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_players(self) -> int:
        return (len(self.coef) - len(SIZE_POWERS)) // 2

    def predict(self, z: np.ndarray) -> np.ndarray:
        """f at coalitions z (k, n) bool/0-1; (k,) in utility units (relative to v(∅))."""
        z = np.asarray(z, dtype=np.float64)
        out = linear_features(z) @ self.coef + self.intercept
        if self.trees is not None:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1, user_api="openmp"):
                out = out + self.trees.predict(z)
        return out

    def endpoints(self) -> tuple[float, float]:
        """(f(∅), f(N))."""
        n = self.n_players
        ends = self.predict(np.stack([np.zeros(n), np.ones(n)]))
        return float(ends[0]), float(ends[1])


def _ridge_loo(features: np.ndarray, y: np.ndarray, sample_weight: np.ndarray):
    """RidgeCV fit and its leave-one-out predictions (k,) at the chosen ridge strength."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=_RIDGE_ALPHAS, scoring="neg_mean_squared_error", store_cv_results=True)
    model.fit(features, y, sample_weight=sample_weight)
    best = int(np.flatnonzero(np.isclose(_RIDGE_ALPHAS, model.alpha_))[0])
    return model, model.cv_results_[:, best]


def fit_linear(z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge fit y ≈ linear_features(z)·β + β0: a blend of two ridge fits, with and without the diluted
    memberships, weighted to minimise the blend's leave-one-out error (stacking).

    With the diluted memberships alone, a game without that structure pays for n more features: at
    n = 200 and 5n coalitions they tripled regression-MSR's error on the synthetic coverage game; picking
    one model by leave-one-out error lost half of their gain on the real game (the choice flips between
    pools). The blend w·f_diluted + (1 − w)·f_plain, w ∈ [0, 1] fitted on the two models' leave-one-out
    predictions, is again linear in ``linear_features`` (coefficients blend alike), so its Shapley values
    stay exact. It is computed inside each fold's fit, so out-of-fold residuals stay out of fold.
    """
    features = linear_features(z)
    n = z.shape[1]
    plain_columns = np.r_[0:n, 2 * n : features.shape[1]]
    plain, plain_loo = _ridge_loo(features[:, plain_columns], y, sample_weight)
    full, full_loo = _ridge_loo(features, y, sample_weight)
    gap = full_loo - plain_loo
    denom = float(np.sum(sample_weight * gap**2))
    w = float(np.clip(np.sum(sample_weight * (y - plain_loo) * gap) / denom, 0.0, 1.0)) if denom > 0 else 1.0
    coef = np.zeros(features.shape[1])
    coef[plain_columns] = (1.0 - w) * plain.coef_
    coef += w * full.coef_
    return coef, float((1.0 - w) * plain.intercept_ + w * full.intercept_)


def fit_proxy(kind: str, z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, seed: int,
              settings: TreeSettings | None = None) -> FittedProxy:
    """Fit a proxy of ``kind`` ("tree" or "linear") to targets y (k,) at coalitions z (k, n).

    sample_weight (k,): evaluations behind each target. The tree's randomness (none with the settings
    used, kept for safety) is seeded with ``seed``.
    """
    if kind not in PROXIES:
        raise ValueError(f"unknown proxy {kind!r}; choose one of {PROXIES}")
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[1]
    coef, intercept = fit_linear(z, y, sample_weight)
    proxy = FittedProxy(coef=coef, intercept=intercept)
    values = linear_shapley(coef, n)
    if kind == "tree":
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        s = settings or TreeSettings()
        trees = HistGradientBoostingRegressor(
            max_iter=s.max_iter,
            learning_rate=s.learning_rate,
            max_leaf_nodes=s.max_leaf_nodes,
            min_samples_leaf=s.min_samples_leaf,
            l2_regularization=s.l2_regularization,
            early_stopping=False,
            random_state=int(seed),
        )
        # One OpenMP thread: these fits are small, and on a shared machine spinning threads of several
        # processes make them orders of magnitude slower.
        with threadpool_limits(limits=1, user_api="openmp"):
            trees.fit(z, y - proxy.predict(z), sample_weight=sample_weight)
        proxy.trees = trees
        values = values + boosted_tree_shapley(trees, n)
    proxy.shapley = values
    return proxy


def boosted_tree_shapley(model, n_players: int) -> np.ndarray:
    """Exact Shapley values (n,) of a fitted HistGradientBoostingRegressor on 0/1 inputs, as a game.

    The game is S ↦ model.predict(indicator of S); values sum to predict(1…1) − predict(0…0).
    """
    out = np.zeros(n_players)
    for stage in model._predictors:
        for predictor in stage:
            _add_tree_shapley(predictor.nodes, out)
    return out


def _add_tree_shapley(nodes, out: np.ndarray) -> None:
    """Accumulate one tree's leaf games into ``out`` (see the module docstring)."""
    # stack entries: (node index, {contributor: frozenset of allowed values from {0, 1}})
    stack = [(0, {})]
    while stack:
        idx, allowed = stack.pop()
        node = nodes[idx]
        if node["is_leaf"]:
            need_in = [f for f, vals in allowed.items() if vals == {1}]
            need_out = [f for f, vals in allowed.items() if vals == {0}]
            a, r = len(need_in), len(need_out)
            if a + r == 0:
                continue
            value = float(node["value"])
            if a:
                out[need_in] += value / (a * comb(a + r, a))
            if r:
                out[need_out] -= value / (r * comb(a + r, r))
            continue
        if node["is_categorical"]:
            raise ValueError("tree proxy got a categorical split; the proxy is fitted on 0/1 floats only")
        feature = int(node["feature_idx"])
        threshold = float(node["num_threshold"])
        current = allowed.get(feature, {0, 1})
        for child, side in ((int(node["left"]), {v for v in current if v <= threshold}),
                            (int(node["right"]), {v for v in current if v > threshold})):
            if side:  # an empty side is unreachable from any coalition
                branch = dict(allowed)
                branch[feature] = side
                stack.append((child, branch))
