"""What the local engine costs the machine while it waits: CPU seconds per process of an idle engine.

Run:  python benchmarks/engine_idle.py                (≈ 3 min: two variants, a 60 s window each)
      python benchmarks/engine_idle.py --window 20    (shorter windows, a noisier figure)
Writes benchmarks/results/engine-idle.md.

``attribution-pipeline run --engine local`` keeps a Ray (GCS, raylet, dashboard and its agent), the
Dagster daemon and one code server alive beside the runs, on the same cores. This starts that engine
(``defs.submit.Submitter``, 2 workers, a fresh work directory, no run submitted), lets it settle, then
sums the CPU time every process under it spends over the window, twice: with Ray's own defaults and with
the settings ``engine.LOCAL_RAY_QUIET_ENV`` / ``engine.LOCAL_RAY_SYSTEM_CONFIG`` apply (no prestarted
idle workers, node statistics every 60 s). Each variant runs in its own process, because Ray reads
those settings once, when it starts. CPU seconds, not wall time, so a busy machine moves the figure
less than it moves a timing; still one sample per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SETTLE_S = 20.0


def measure(variant: str, window_s: float) -> dict:
    """In this process: start the engine with ``variant`` settings, the CPU seconds per process."""
    import psutil

    from attribution_pipeline import engine
    from attribution_pipeline.defs.submit import Submitter
    from attribution_pipeline.workdir import EngineSettings

    if variant == "ray-defaults":
        engine.LOCAL_RAY_QUIET_ENV, engine.LOCAL_RAY_SYSTEM_CONFIG = {}, {}
    with tempfile.TemporaryDirectory(prefix="engine-idle-") as workdir:
        submitter = Submitter(workdir, EngineSettings(engine="local", workers=2))
        try:
            time.sleep(SETTLE_S)
            me = psutil.Process()

            def snapshot() -> dict[int, tuple[str, float]]:
                out = {}
                for p in [me, *me.children(recursive=True)]:
                    try:
                        t = p.cpu_times()
                        out[p.pid] = (_label(p.cmdline()), t.user + t.system)
                    except psutil.Error:
                        pass
                return out

            before = snapshot()
            time.sleep(window_s)
            after = snapshot()
        finally:
            submitter.close()
    by_label: dict[str, float] = {}
    for pid, (label, cpu) in after.items():
        by_label[label] = by_label.get(label, 0.0) + cpu - before.get(pid, (label, 0.0))[1]
    return {"variant": variant, "window_s": window_s, "cpu_s": by_label}


def _label(cmdline: list[str]) -> str:
    """A short name for a process of the engine."""
    text = " ".join(cmdline)
    for needle, name in (("dagster-daemon", "dagster-daemon"), ("dagster api grpc", "code server"),
                         ("raylet", "ray raylet"), ("gcs_server", "ray gcs"), ("DashboardAgent", "ray dashboard agent"),
                         ("dashboard.py", "ray dashboard"), ("ray-dashboard-", "ray dashboard modules"),
                         ("log_monitor", "ray log monitor"), ("monitor.py", "ray monitor"),
                         ("runtime_env", "ray runtime-env agent"), ("ray::IDLE", "ray idle workers"),
                         ("engine_idle.py", "this process (the CLI's place)")):
        if needle in text:
            return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured per variant (default 60)")
    parser.add_argument("--variant", choices=["ray-defaults", "quiet"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.window)))
        return
    load = os.getloadavg()[0]
    results = []
    for variant in ("ray-defaults", "quiet"):
        print(f"{variant}: starting the engine, then {args.window:.0f} s idle ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--window", str(args.window)],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    labels = sorted({k for r in results for k in r["cpu_s"]}, key=lambda k: -results[0]["cpu_s"].get(k, 0.0))
    lines = ["# The local engine, idle: CPU it takes from the runs", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/engine_idle.py --window {args.window:g}` on "
             f"{os.cpu_count()} CPU cores ({platform.machine()}), load average before {load:.2f}. A local engine of "
             f"2 workers, no run submitted, {SETTLE_S:.0f} s after start; CPU seconds over {args.window:g} s per "
             "process kind. One sample per variant.", "",
             "| process | Ray's defaults (CPU s) | quiet local Ray (CPU s) |", "|---|---|---|"]
    for label in labels:
        lines.append(f"| {label} | {results[0]['cpu_s'].get(label, 0.0):.2f} | {results[1]['cpu_s'].get(label, 0.0):.2f} |")
    totals = [sum(r["cpu_s"].values()) for r in results]
    lines.append(f"| **total** | **{totals[0]:.2f}** | **{totals[1]:.2f}** |")
    lines += ["", f"- share of one core while idle: {100 * totals[0] / args.window:.1f}% with Ray's defaults, "
              f"{100 * totals[1] / args.window:.1f}% quiet (of this {os.cpu_count()}-core machine: "
              f"{100 * totals[0] / args.window / os.cpu_count():.1f}% and {100 * totals[1] / args.window / os.cpu_count():.1f}%).",
              "- quiet = `engine.LOCAL_RAY_QUIET_ENV` (the dashboard agent's node statistics every 60 s, not 5) and "
              "`engine.LOCAL_RAY_SYSTEM_CONFIG` (no prestarted idle worker processes), what `--engine local` uses.",
              "- Not measured here: what each run adds while it is in flight (its Ray job supervisor, log streaming, "
              "the daemon's run monitoring); [engine.md](engine.md) gives the overhead per coalition of whole runs."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "engine-idle.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
