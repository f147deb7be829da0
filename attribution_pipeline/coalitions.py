"""Coalitions: sets of contributors, named by short, safe, stable keys.

A key depends only on the member ids (sorted), not on the order or number of contributors, so a
coalition keeps its key (and its cached utilities) when new contributors arrive. Keys match
``[A-Za-z0-9_.-]`` as Dagster partition keys must; the members live in DuckDB's ``coalitions``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

EMPTY_KEY = "empty"


def coalition_key(members: Iterable[str]) -> str:
    """``c-`` + 12 hex digits of the SHA-256 of the sorted member ids; ``empty`` for ∅."""
    ids = sorted(set(members))
    if not ids:
        return EMPTY_KEY
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    return f"c-{digest}"


@dataclass(frozen=True)
class Coalition:
    key: str
    members: tuple[str, ...]  # sorted contributor ids
    kind: str  # "sampled", "full" or "empty"
    plan_index: int  # position in the plan; -1 for the empty and 0 for the full coalition

    @property
    def size(self) -> int:
        return len(self.members)

    def as_row(self) -> dict:
        return {
            "coalition_key": self.key,
            "members": list(self.members),
            "size": self.size,
            "kind": self.kind,
            "plan_index": self.plan_index,
        }


def make_coalition(members: Iterable[str], kind: str, plan_index: int) -> Coalition:
    ids = tuple(sorted(set(members)))
    return Coalition(coalition_key(ids), ids, kind, plan_index)


def masks_to_coalitions(masks: np.ndarray, contributors: Sequence[str], start_index: int = 1) -> list[Coalition]:
    """Rows of a boolean ``(B, n)`` mask → coalitions (column j is ``contributors[j]``)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != len(contributors):
        raise ValueError(f"masks must have shape (B, {len(contributors)}), got {masks.shape}")
    out = []
    for i, row in enumerate(masks):
        members = [c for c, m in zip(contributors, row) if m]
        kind = "full" if row.all() else ("empty" if not row.any() else "sampled")
        out.append(make_coalition(members, kind, start_index + i))
    return out


def coalitions_to_masks(coalitions: Sequence[Sequence[str]], contributors: Sequence[str]) -> np.ndarray:
    """Member lists → boolean ``(B, n)`` masks in the column order of ``contributors``."""
    index = {c: j for j, c in enumerate(contributors)}
    masks = np.zeros((len(coalitions), len(contributors)), dtype=bool)
    for i, members in enumerate(coalitions):
        for m in members:
            if m not in index:
                raise ValueError(f"coalition member {m!r} is not a current contributor")
            masks[i, index[m]] = True
    return masks
