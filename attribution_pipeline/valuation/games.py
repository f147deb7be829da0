"""Cooperative games with known values, for the tests and the benchmark.

A game maps coalitions (B, n) bool → utilities (B,) float, including ∅ and N. ``shapley_values()`` and
``banzhaf_values()`` return (n,) arrays: in closed form where one exists, by exact enumeration of all
2^n coalitions otherwise (n ≤ 20), or by an exact dynamic programme (weighted voting).

- ``AdditiveGame``: v(S) = Σ_{i∈S} a_i; φ = β = a.
- ``PairwiseGame``: v(S) = Σ_{i∈S} a_i + Σ_{i<j∈S} b_ij; φ_i = β_i = a_i + ½ Σ_j b_ij.
- ``GloveGame``: v(S) = min(|S ∩ L|, |S ∩ R|) (left- and right-glove holders); by enumeration.
- ``AirportGame``: v(S) = max_{i∈S} c_i (the runway S needs); φ of the k-th cheapest is
  Σ_{j≤k} (c_(j) − c_(j−1)) / (n − j + 1) (Littlechild & Owen 1973); β likewise with 2^−(n−j).
- ``WeightedVotingGame``: v(S) = 1{Σ_{i∈S} w_i ≥ q}, integer weights; exact counting DP.
- ``CoverageGame``: the benchmark's game, see its docstring.
- ``MeasuredGame``: a table of every coalition's utility as the pipeline measured it (an enumerated
  real game, ``benchmarks/data/``); exact values by enumeration. ``load_measured_game`` reads one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from scipy.stats import binom

from attribution_pipeline.valuation.coalitions import all_coalitions_with_endpoints, exact_semivalues


class Game(ABC):
    """Base class: subclasses define ``__call__``; values default to exact enumeration (n ≤ 20)."""

    n_players: int

    @abstractmethod
    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Utilities (B,) of coalitions masks (B, n) bool; ∅ and N allowed."""

    @property
    def empty_value(self) -> float:
        """v(∅)."""
        return float(self(np.zeros((1, self.n_players), dtype=bool))[0])

    @property
    def full_value(self) -> float:
        """v(N)."""
        return float(self(np.ones((1, self.n_players), dtype=bool))[0])

    def _enumerated(self, kind: str) -> np.ndarray:
        if self.n_players > 20:
            raise ValueError(f"{type(self).__name__} has no closed form; enumeration is for n <= 20")
        every = all_coalitions_with_endpoints(self.n_players)
        inner = every[1:-1]  # binary counting order: ∅ first, N last
        values = self(inner)
        return exact_semivalues(inner, values, self.empty_value, self.full_value, kind)

    def shapley_values(self) -> np.ndarray:
        """Exact Shapley values (n,); they sum to v(N) − v(∅)."""
        return self._enumerated("shapley")

    def banzhaf_values(self) -> np.ndarray:
        """Exact Banzhaf values (n,)."""
        return self._enumerated("banzhaf")


class AdditiveGame(Game):
    """v(S) = Σ_{i∈S} a_i. weights: (n,)."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n_players = len(self.weights)

    def __call__(self, masks):
        return np.asarray(masks, dtype=np.float64) @ self.weights

    def shapley_values(self):
        return self.weights.copy()

    def banzhaf_values(self):
        return self.weights.copy()


class PairwiseGame(Game):
    """v(S) = Σ_{i∈S} a_i + Σ_{i<j∈S} b_ij. linear: (n,); pairwise: (n, n), symmetrised, diagonal ignored."""

    def __init__(self, linear, pairwise):
        self.linear = np.asarray(linear, dtype=np.float64)
        b = np.asarray(pairwise, dtype=np.float64)
        b = (b + b.T) / 2.0
        np.fill_diagonal(b, 0.0)
        self.pairwise = b
        self.n_players = len(self.linear)

    @classmethod
    def random(cls, n_players: int, seed: int, interaction_scale: float = 0.5) -> "PairwiseGame":
        """Random a ~ N(1, 1), b_ij ~ N(0, interaction_scale²) · 2 / n (so pairs matter as much as a)."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A12]))
        a = rng.normal(1.0, 1.0, n_players)
        b = rng.normal(0.0, interaction_scale, (n_players, n_players)) * 2.0 / n_players
        return cls(a, np.triu(b, 1) + np.triu(b, 1).T)

    def __call__(self, masks):
        z = np.asarray(masks, dtype=np.float64)
        return z @ self.linear + 0.5 * np.einsum("bi,ij,bj->b", z, self.pairwise, z)

    def shapley_values(self):
        return self.linear + 0.5 * self.pairwise.sum(axis=1)

    def banzhaf_values(self):
        return self.shapley_values()


class GloveGame(Game):
    """v(S) = min(|S ∩ L|, |S ∩ R|); left: (n,) bool, True = holds a left glove."""

    def __init__(self, left):
        self.left = np.asarray(left, dtype=bool)
        self.n_players = len(self.left)

    def __call__(self, masks):
        z = np.asarray(masks, dtype=bool)
        return np.minimum((z & self.left).sum(axis=1), (z & ~self.left).sum(axis=1)).astype(np.float64)


class AirportGame(Game):
    """v(S) = max_{i∈S} c_i, v(∅) = 0: the cost of the runway coalition S needs. costs: (n,) ≥ 0."""

    def __init__(self, costs):
        self.costs = np.asarray(costs, dtype=np.float64)
        self.n_players = len(self.costs)

    def __call__(self, masks):
        z = np.asarray(masks, dtype=bool)
        return np.where(z.any(axis=1), np.max(np.where(z, self.costs, -np.inf), axis=1), 0.0)

    def _layered(self, share) -> np.ndarray:
        n = self.n_players
        order = np.argsort(self.costs, kind="stable")
        steps = np.diff(np.concatenate([[0.0], self.costs[order]]))
        # Layer j (0-based) costs steps[j] and is needed by the n − j most expensive players.
        per_layer = steps * share(n - np.arange(n))
        out = np.empty(n)
        out[order] = np.cumsum(per_layer)
        return out

    def shapley_values(self):
        return self._layered(lambda users: 1.0 / users)

    def banzhaf_values(self):
        return self._layered(lambda users: 2.0 ** (1.0 - users))


class WeightedVotingGame(Game):
    """v(S) = 1{Σ_{i∈S} w_i ≥ quota}; weights: (n,) non-negative integers; values by counting DP.

    The DP counts, for each i, the coalitions of N∖{i} by size and weight (O(n² Σw) per player).
    """

    def __init__(self, weights, quota: int):
        self.weights = np.asarray(weights, dtype=np.int64)
        if np.any(self.weights < 0):
            raise ValueError("weights must be non-negative integers")
        self.quota = int(quota)
        self.n_players = len(self.weights)

    def __call__(self, masks):
        return (np.asarray(masks, dtype=np.int64) @ self.weights >= self.quota).astype(np.float64)

    def _swing_counts(self, i: int) -> np.ndarray:
        """counts[s]: coalitions S ⊆ N∖{i}, |S| = s, with quota − w_i ≤ w(S) < quota; (n,) float."""
        n, total = self.n_players, int(self.weights.sum())
        table = np.zeros((n, total + 1))
        table[0, 0] = 1.0
        for j in np.flatnonzero(np.arange(n) != i):
            w = int(self.weights[j])
            shifted = np.zeros_like(table)
            shifted[1:, w:] = table[:-1, : total + 1 - w]
            table = table + shifted
        lo, hi = max(self.quota - int(self.weights[i]), 0), min(self.quota, total + 1)
        return table[:, lo:hi].sum(axis=1) if hi > lo else np.zeros(n)

    def shapley_values(self):
        from scipy.special import gammaln

        n = self.n_players
        s = np.arange(n)
        weight = np.exp(gammaln(s + 1) + gammaln(n - s) - gammaln(n + 1))
        return np.array([self._swing_counts(i) @ weight for i in range(n)])

    def banzhaf_values(self):
        n = self.n_players
        return np.array([self._swing_counts(i).sum() for i in range(n)]) / 2.0 ** (n - 1)


class CoverageGame(Game):
    """Own value, diminishing returns within overlapping groups, and sparse pairwise synergies.

    v(S) = Σ_{i∈S} a_i + Σ_g w_g √|S ∩ G_g| + Σ_{i<j∈S} b_ij.

    Why this game for the benchmark: contributors of diffusion-model data overlap (artists of one
    style, classes of one super-class): a second contributor of a group adds less than the first, which
    is an interaction of every order, not only pairwise; paired KernelSHAP is exact on pairwise games,
    so a pairwise game would flatter it. Yet the values are closed-form at any n, since each group term
    is symmetric in its members and null outside:
    φ_i = a_i + ½ Σ_j b_ij + Σ_{g∋i} w_g √|G_g| / |G_g|, and
    β_i = a_i + ½ Σ_j b_ij + Σ_{g∋i} w_g E[√(K+1) − √K], K ~ Binomial(|G_g| − 1, ½).

    own: (n,); groups: list of index arrays; group_weights: (len(groups),); pairwise: (n, n) symmetric.
    """

    def __init__(self, own, groups, group_weights, pairwise):
        self.own = np.asarray(own, dtype=np.float64)
        self.n_players = len(self.own)
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.group_weights = np.asarray(group_weights, dtype=np.float64)
        self.membership = np.zeros((self.n_players, len(self.groups)))
        for g, members in enumerate(self.groups):
            self.membership[members, g] = 1.0
        self.pairwise = PairwiseGame(np.zeros(self.n_players), pairwise)

    @classmethod
    def random(cls, n_players: int, seed: int) -> "CoverageGame":
        """A random instance: a_i log-normal, n/4 groups of 3..8 members (overlapping), w_g log-normal
        scaled so the group terms carry about half of v(N), and n/2 synergies b_ij ~ |N(0, 1)| · mean(a)."""
        n = n_players
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0FE]))
        own = rng.lognormal(0.0, 0.75, n)
        groups = [rng.choice(n, size=min(n, int(rng.integers(3, 9))), replace=False) for _ in range(max(1, n // 4))]
        w = rng.lognormal(0.0, 0.5, len(groups))
        scale = own.sum() / np.sum(w * np.sqrt([len(g) for g in groups]))
        b = np.zeros((n, n))
        for _ in range(max(1, n // 2)):
            i, j = rng.choice(n, size=2, replace=False)
            b[i, j] = b[j, i] = abs(rng.normal()) * own.mean()
        return cls(own, groups, w * scale, b)

    def __call__(self, masks):
        z = np.asarray(masks, dtype=np.float64)
        return z @ self.own + np.sqrt(z @ self.membership) @ self.group_weights + self.pairwise(z)

    def _group_share(self, per_size) -> np.ndarray:
        out = np.zeros(self.n_players)
        for members, w in zip(self.groups, self.group_weights):
            out[members] += w * per_size(len(members))
        return out

    def shapley_values(self):
        return self.own + self.pairwise.shapley_values() + self._group_share(lambda m: np.sqrt(m) / m)

    def banzhaf_values(self):
        def gain(m):
            k = np.arange(m)
            return float(np.sum(binom.pmf(k, m - 1, 0.5) * (np.sqrt(k + 1) - np.sqrt(k))))

        return self.own + self.pairwise.banzhaf_values() + self._group_share(gain)


class MeasuredGame(Game):
    """v(S) read from a table of all 2^n utilities, ``table[code]`` with bit i of ``code`` set when
    player i is in S (∅ = 0, N = 2^n − 1). 2 ≤ n ≤ 20; every entry finite."""

    def __init__(self, table):
        table = np.asarray(table, dtype=np.float64)
        n = int(np.log2(max(len(table), 1)))
        if table.ndim != 1 or len(table) != 2**n or not 2 <= n <= 20:
            raise ValueError(f"a measured game needs 2^n utilities (2 <= n <= 20), got {table.shape}")
        if not np.isfinite(table).all():
            raise ValueError(f"a measured game needs finite utilities; {int((~np.isfinite(table)).sum())} are not")
        self.n_players, self.table = n, table

    def __call__(self, masks):
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        return self.table[masks.astype(np.int64) @ (1 << np.arange(self.n_players, dtype=np.int64))]


def load_measured_game(path: str | Path, prop: str) -> tuple[MeasuredGame, dict]:
    """(game, document) of property ``prop`` from a measured-game JSON file (format
    ``attribution_pipeline.measured_game/1``: ``contributors`` in bit order and, per property, ``values``
    listed by coalition code; written by ``benchmarks/enumerate_game.py``)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != "attribution_pipeline.measured_game/1":
        raise ValueError(f"{path}: not a measured-game file (format {doc.get('format')!r})")
    if prop not in doc["properties"]:
        raise ValueError(f"{path}: no property {prop!r}; it has {sorted(doc['properties'])}")
    game = MeasuredGame(doc["properties"][prop]["values"])
    if game.n_players != len(doc["contributors"]):
        raise ValueError(f"{path}: {len(doc['contributors'])} contributors but 2^{game.n_players} values")
    return game, doc


def noisy_values(game: Game, masks: np.ndarray, noise_std: float, seed: int) -> np.ndarray:
    """v(S) plus Gaussian noise of std ``noise_std`` per row; (B,). Row k's noise depends only on
    (seed, k), so the values of a prefix of masks are a prefix of the values."""
    clean = game(masks)
    if noise_std == 0:
        return clean
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4015E]))
    return clean + noise_std * rng.standard_normal(len(clean))
