"""What a stage returns and how it reports progress. Every stage module imports this one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Log = Callable[[str], None]


def quiet(_: str) -> None:
    return None


@dataclass
class StageResult:
    """What a stage did: its artifact's content hash (the data version), timings, and extras."""

    content_hash: str
    skipped: bool
    elapsed_s: float
    metadata: dict = field(default_factory=dict)


def progress(log: Log, what: str) -> Callable[[int, int, float], None]:
    """A training-progress callback that logs ``what: step i/n, loss x``."""

    def report(step: int, total: int, loss: float) -> None:
        log(f"{what}: step {step}/{total}, loss {loss:.4f}")

    return report
