"""What a person running ``attribution-pipeline run`` sees while a round's runs execute elsewhere:
a bar per step (coalitions done / planned, rate, ETA: tqdm) and one line per finished coalition with
its utilities, read from the records the workers write beside their artifacts
(``storage/records.py``). Dagster's own log lines go to the work directory's ``logs/``.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from attribution_pipeline.layout import RunLayout
from attribution_pipeline.storage.records import recorded_since


class Progress:
    """Progress of one round on ``layout``; ``quiet`` prints nothing but errors."""

    def __init__(self, layout: RunLayout, quiet: bool, out=sys.stdout):
        self.layout, self.quiet, self.out = layout, quiet, out
        self.bar: tqdm | None = None
        self.pending: list[str] = []
        self.since_ns = 0
        self.finished: dict[str, list[dict]] = {}
        self.total, self.t0 = 0, time.monotonic()

    def say(self, msg: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=self.out)
        else:
            print(msg, file=self.out, flush=True)

    def begin(self, kind: str, keys: tuple[str, ...] | list[str], runs: int) -> None:
        """Start the bar of a step: over its coalitions for a coalitions step, over its runs otherwise."""
        self.end()
        self.since_ns, self.finished = time.time_ns(), {}
        self.pending = list(keys) if kind == "coalitions" else []
        total = len(self.pending) if kind == "coalitions" else runs
        self.total, self.t0 = total, time.monotonic()
        # the bar redraws in place on a terminal; in a log file the coalition lines carry count and ETA
        self.bar = tqdm(total=total, desc=kind, unit="coalition" if kind == "coalitions" else "run",
                        disable=self.quiet or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True,
                        mininterval=1.0)

    def poll(self) -> None:
        """Count the coalitions whose records appeared since the step began; a line for each."""
        for key in list(self.pending):
            rows = recorded_since(self.layout.coalition_dir(key), self.since_ns)
            if not rows:
                continue
            self.pending.remove(key)
            self.finished[key] = rows
            done, elapsed = len(self.finished), time.monotonic() - self.t0
            eta = elapsed / done * (self.total - done)
            seeds = {r["seed"] for r in rows}
            values = ", ".join(f"{r['property']}={float(r['value']):.4g}" for r in rows if r["seed"] == min(seeds))
            self.say(f"  [{done}/{self.total}, {elapsed:.0f}s, ETA {eta:.0f}s] coalition {key} "
                     f"({rows[0]['method']}{f', {len(seeds)} seeds' if len(seeds) > 1 else ''}): {values}")
            if self.bar is not None:
                self.bar.update(1)

    def run_done(self) -> None:
        """A run of a step that is not a coalitions step finished."""
        if self.bar is not None and not self.pending and self.bar.total and self.bar.n < self.bar.total:
            self.bar.update(1)

    def end(self) -> None:
        if self.bar is not None:
            self.poll()
            self.bar.close()
            self.bar = None
