"""From per-image scores to one number per contributor, joined by image id (never by position).

Every training image has an id ``"<contributor>/<row>"`` (its row in the contributor's cached array,
the contributor's files sorted by name) and an owner. A score computed in any order (a shuffled
loader, a multiprocess map) travels with its ids; ``by_contributor`` joins on them and refuses a
contributor whose row count differs from its image count (the reference code's shuffled-gradient bug,
REVIEW-baselines.md §0.2, cannot happen silently).

Aggregates (REVIEW-baselines.md §5.2): scores are first averaged over the generated images, then
``mean`` or ``sum`` over the contributor's images; ``max`` is taken in the order "for each generated
image the contributor's closest image, averaged over generated images" (``max_of_matrix``). Signs are
kept: more similarity or influence means more credit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

AGGREGATES = ("mean", "max", "sum")


def image_id(contributor: str, row: int) -> str:
    return f"{contributor}/{row}"


@dataclass(frozen=True)
class ImageIndex:
    """The training images of a valuation: ``ids[k]`` is owned by ``owners[k]``; ``counts`` is
    each contributor's image count (the manifest's), ``contributors`` their order in the output."""

    ids: tuple[str, ...]
    owners: tuple[str, ...]
    contributors: tuple[str, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> "ImageIndex":
        """Rows of each contributor in cached-array order: ``c/0 ... c/(n_c - 1)``."""
        ids, owners = [], []
        for c, n in counts.items():
            ids += [image_id(c, r) for r in range(n)]
            owners += [c] * n
        return cls(tuple(ids), tuple(owners), tuple(counts), tuple(int(n) for n in counts.values()))

    def __len__(self) -> int:
        return len(self.ids)

    def owner_of(self, ids: Sequence[str]) -> list[str]:
        lookup = dict(zip(self.ids, self.owners))
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise KeyError(f"{len(missing)} image id(s) not in this valuation, e.g. {missing[:3]}")
        return [lookup[i] for i in ids]


def _checked_groups(index: ImageIndex, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """contributor -> positions in ``ids`` of its images; every image exactly once."""
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate image ids in the scores: a row was computed twice")
    owners = np.array(index.owner_of(ids))
    groups = {c: np.flatnonzero(owners == c) for c in index.contributors}
    wrong = {c: (len(g), n) for (c, g), n in zip(groups.items(), index.counts) if len(g) != n}
    if wrong:
        raise ValueError("scores do not cover each contributor's images exactly: "
                         + ", ".join(f"{c} has {got} rows for {n} images" for c, (got, n) in wrong.items()))
    return groups


def by_contributor(index: ImageIndex, ids: Sequence[str], scores: np.ndarray, how: str = "mean") -> np.ndarray:
    """Per-image ``scores`` ``(N,)`` (in the order of ``ids``) aggregated per contributor by ``how``
    (``mean``, ``max`` or ``sum``); ``(n_contributors,)`` in ``index.contributors`` order."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(ids),):
        raise ValueError(f"scores must have shape ({len(ids)},) like the ids, got {scores.shape}")
    groups = _checked_groups(index, ids)
    fn = {"mean": np.mean, "max": np.max, "sum": np.sum}[how]
    return np.array([fn(scores[groups[c]]) for c in index.contributors])


def max_of_matrix(index: ImageIndex, ids: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    """``matrix`` ``(G, N)``: a score of each generated image against each training image (columns
    in the order of ``ids``). Per contributor: mean over generated images of the max over its images."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] != len(ids):
        raise ValueError(f"matrix must be (generated, {len(ids)}), got {matrix.shape}")
    groups = _checked_groups(index, ids)
    return np.array([matrix[:, groups[c]].max(axis=1).mean() for c in index.contributors])


def mean_and_max(index: ImageIndex, ids: Sequence[str], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """``{"mean": ..., "max": ...}`` of a ``(G, N)`` score matrix (see ``by_contributor`` and
    ``max_of_matrix``)."""
    return {"mean": by_contributor(index, ids, np.asarray(matrix, dtype=float).mean(axis=0), "mean"),
            "max": max_of_matrix(index, ids, matrix)}
