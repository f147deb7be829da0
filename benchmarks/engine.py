"""Does the local engine use both cores, and what does a run through Ray cost? Measured on the default.

Run:  python benchmarks/engine.py              (≈ 60 min on 2 CPU cores at the default budget of 220: the default twice)
      python benchmarks/engine.py --quick      (tiny models, a smoke run of the same measurements)
Writes benchmarks/results/engine.md and engine.json (``-quick`` suffix with --quick).

1. ``attribution-pipeline run`` on the embedded default with ``--engine local --workers 1``, then
   ``--workers 2``, each on a fresh work directory (same seeds): wall time of the whole command, the
   ratio, and whether every utility and Shapley value is identical.
2. The orchestration overhead of a coalition through Ray, from Dagster's own records: per coalition
   run, (end − dequeue) minus the coalitions' own work (fine-tune + generate + score, from their
   metadata), divided by the coalitions in the run; against the mean coalition's work here, and
   against a paper-scale coalition on the cifar20 preset (cost model: 10 GPU-minutes, the low end of
   the 10–20 GPU-minutes per coalition in docs/scaleout.md), where the same per-run overhead applies.
3. The base model's training step on its own (the default's full UNet, batch 128, one torch thread per
   process): the whole batch in one process (``train.shards = 1``), two slices in one process (what
   the 1-worker run does) and two slices in two processes (the 2-worker run): ms per step, so the
   price the slices cost a single worker is stated, not hidden in the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLI = str(Path(sys.executable).parent / "attribution-pipeline")
CIFAR20_COALITION_S = 600.0
QUICK = ["--set", 'model.block_out_channels=[16, 32]', "--set", "train.steps=60", "--set", "prune.finetune_steps=20",
         "--set", "finetune.steps=10", "--set", "sampling.n_images=64", "--set", "classifier.epochs=2",
         "--budget", "20", "--set", "valuation.coalitions_per_run=5"]


def run_cli(workdir: Path, workers: int, quick: bool) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [CLI, "run", "--workdir", str(workdir), "--engine", "local", "--workers", str(workers),
           *(QUICK if quick else [])]
    env = {**os.environ, "ATTRIBUTION_PIPELINE_ENGINE": "local"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = [line for line in proc.stdout.splitlines() if line.startswith("coalitions:")]
    return {"workers": workers, "command": " ".join(cmd[1:]), "wall_s": round(wall, 1),
            "summary": summary[0] if summary else "", "base_steps": base_steps(workdir), **run_records(workdir)}


def run_records(workdir: Path) -> dict:
    """Per job, run durations; per coalition run, its overhead (end − dequeue − work) per coalition."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(workdir / "dagster_home"))
    jobs: dict[str, list[float]] = {}
    overheads, works, counts, starts, n = [], [], [], [], 0
    for run in instance.get_runs():
        record = instance.get_run_record_by_id(run.run_id)
        jobs.setdefault(run.job_name, []).append(round(record.end_time - record.start_time, 1))
        if run.job_name != "coalitions":
            continue
        events = {e.event_log_entry.dagster_event_type: e.event_log_entry.timestamp for kind in
                  (dg.DagsterEventType.RUN_DEQUEUED, dg.DagsterEventType.RUN_STARTING)
                  for e in instance.get_records_for_run(run.run_id, of_type=kind, limit=1).records}
        dequeued = events.get(dg.DagsterEventType.RUN_DEQUEUED, events.get(dg.DagsterEventType.RUN_STARTING))
        work, count = 0.0, 0
        for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                                              limit=100_000).records:
            m = r.event_log_entry.asset_materialization
            meta = {k: v.value for k, v in m.metadata.items()}
            work += sum(float(meta.get(k, 0.0)) for k in ("finetune_s", "generate_s", "score_s"))
            count += m.asset_key.path[-1] == "coalition_utilities"
        overheads.append((record.end_time - dequeued - work) / max(count, 1))
        works.append(work / max(count, 1))
        counts.append(count)
        started = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
        if started and dequeued:
            starts.append(round(started[0].event_log_entry.timestamp - dequeued, 1))
        n += count
    return {"runs_s": jobs, "coalitions": n, "coalition_work_s": round(sum(w * c for w, c in zip(works, counts)), 1),
            "run_start_s": starts,
            "overhead_per_coalition_s": round(sum(overheads) / len(overheads), 2) if overheads else None,
            "work_per_coalition_s": round(sum(works) / len(works), 2) if works else None}


def base_steps(workdir: Path) -> dict:
    """Seconds of each step of the base run (full model, pruned base, …)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(workdir / "dagster_home"))
    runs = [r for r in instance.get_runs() if r.job_name == "valuation_base"]
    return {s.step_key: round(s.end_time - s.start_time, 1) for r in runs for s in instance.get_run_step_stats(r.run_id)
            if s.end_time and s.start_time and s.end_time - s.start_time >= 1.0}


def step_costs(quick: bool) -> dict:
    """ms per training step of the default's full UNet: whole batch, 2 slices × 1 process, 2 × 2."""
    import torch

    from attribution_pipeline.config import PipelineConfig, load_preset
    from attribution_pipeline.models.registry import get_backend
    from attribution_pipeline.models.train import train_diffusion

    torch.set_num_threads(1)
    cfg = PipelineConfig.from_dict(load_preset("digits"))
    backend = get_backend(cfg)
    images = torch.rand(512, 1, cfg.model.sample_size, cfg.model.sample_size) * 2 - 1
    out = {}
    for name, shards, processes in (("whole batch, 1 process", 1, 1), ("2 slices, 1 process", 2, 1),
                                    ("2 slices, 2 processes", 2, 2)):
        per = []
        for steps in ((5, 15) if quick else (20, 120)):  # the difference cancels start-up (spawning helpers)
            t0 = time.perf_counter()
            train_diffusion(backend.build(seed=0), images, backend.unet_cfg, steps=steps, batch_size=cfg.train.batch_size,
                            lr=1e-3, seed=0, shards=shards, processes=processes)
            per.append((steps, time.perf_counter() - t0))
        (s0, t0_), (s1, t1_) = per
        out[name] = {"ms_per_step": round(1000 * (t1_ - t0_) / (s1 - s0), 1), "start_s": round(t0_ - s0 * (t1_ - t0_) / (s1 - s0), 1)}
    return out


def values(workdir: Path) -> dict:
    import duckdb

    with duckdb.connect(str(workdir / "attribution.duckdb"), read_only=True) as con:
        utilities = con.execute("SELECT coalition_key, property, method, seed, value FROM utilities ORDER BY ALL").fetchall()
        shapley = con.execute("SELECT property, estimator, contributor, value FROM latest_shapley_values "
                              "ORDER BY ALL").fetchall()
    return {"utilities": utilities, "shapley": shapley}


def report(one: dict, two: dict, same: dict, steps: dict, quick: bool) -> str:
    ratio = two["wall_s"] / one["wall_s"]
    over, work = two["overhead_per_coalition_s"], two["work_per_coalition_s"]
    base1, base2 = sum(one["runs_s"]["valuation_base"]), sum(two["runs_s"]["valuation_base"])
    bound = (base2 + two["coalition_work_s"] / 2) / (base1 + one["coalition_work_s"])
    lines = [
        f"# Engine: the default on 1 and 2 local workers{' (quick)' if quick else ''}",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/engine.py{' --quick' if quick else ''}` on "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), load average before "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        "| workers | command | wall (s) | runs (s) by job |",
        "|---|---|---|---|",
        *(f"| {r['workers']} | `attribution-pipeline {r['command']}` | {r['wall_s']} | "
          f"{json.dumps(r['runs_s'], sort_keys=True)} |" for r in (one, two)),
        "",
        f"- **wall time ratio, 2 workers / 1 worker: {ratio:.3f}** (acceptance: ≤ 0.65).",
        f"- values identical for the same seeds: utilities {same['utilities']}, Shapley values {same['shapley']} "
        f"({same['n_utilities']} utility rows, {same['n_shapley']} Shapley rows compared exactly).",
        f"- orchestration overhead through Ray per coalition (2 workers; per coalition run: end − dequeue − the "
        f"coalitions' own work, over the coalitions in it): **{over} s**, against {work} s of work per coalition "
        f"here (**{100 * over / work:.1f}%** of a default coalition; target < 10%) and "
        f"**{100 * over / CIFAR20_COALITION_S:.2f}%** of a cifar20 coalition on the cost model of "
        f"{CIFAR20_COALITION_S:.0f} GPU-seconds (target < 2%).",
        f"- the coalitions' own work (fine-tune + generate + score, summed from the runs' metadata): "
        f"{one['coalition_work_s']} s on 1 worker, {two['coalition_work_s']} s on 2 "
        f"(**{100 * (two['coalition_work_s'] / one['coalition_work_s'] - 1):+.0f}%** when two run at once: two "
        f"training processes, the daemon, Ray and the CLI share two cores). With no orchestration at all, the round's wall time "
        f"would be at best base + work / workers: ratio ≥ {bound:.3f}.",
        f"- seconds from dequeue to the run's start (Ray job submitted, process started, code loaded), per "
        f"coalition run: 1 worker {one['run_start_s']}, 2 workers {two['run_start_s']}.",
        f"- 1 worker: {one['summary']}",
        f"- 2 workers: {two['summary']}",
        "",
        f"- base run steps (s), 1 worker: {json.dumps(one['base_steps'], sort_keys=True)}",
        f"- base run steps (s), 2 workers: {json.dumps(two['base_steps'], sort_keys=True)}",
        "",
        "The base (instruments, full model, pruned base) is one run; on the local engine it gets every worker, and "
        "its two trainings compute each batch in two slices (`train.shards = prune.shards = 2` in the default), in "
        "two processes on 2 workers and one after another on 1, with bit-identical results. What the slices cost a "
        "single worker, per training step of the full UNet (batch 128, one thread per process; `start` = spawning "
        "the helper):",
        "",
        "| variant | ms / step | start (s) |",
        "|---|---|---|",
        *(f"| {name} | {v['ms_per_step']} | {v['start_s']} |" for name, v in steps.items()),
        "",
        "One measurement per setting, on a shared machine: the ratio carries the machine's noise (no interval), and "
        "the overhead figure of cifar20 applies this machine's per-run cost to a cost model, not a GPU measurement.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    base = ROOT / "data" / "runs" / ("bench-engine-quick" if args.quick else "bench-engine")
    one = run_cli(base / "w1", 1, args.quick)
    print(f"1 worker: {one['wall_s']} s", flush=True)
    two = run_cli(base / "w2", 2, args.quick)
    print(f"2 workers: {two['wall_s']} s", flush=True)
    v1, v2 = values(base / "w1"), values(base / "w2")
    same = {"utilities": v1["utilities"] == v2["utilities"], "shapley": v1["shapley"] == v2["shapley"],
            "n_utilities": len(v1["utilities"]), "n_shapley": len(v1["shapley"])}
    steps = step_costs(args.quick)
    print(f"step costs: {steps}", flush=True)
    suffix = "-quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"engine{suffix}.json").write_text(json.dumps({"one": one, "two": two, "same": same, "step_costs": steps}, indent=1) + "\n")
    text = report(one, two, same, steps, args.quick)
    (RESULTS / f"engine{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
