"""Helpers the benchmarks share: a pool of worker processes that measure utilities through the
pipeline's own cached stages, the one-off set-up of a work directory, and reads of its utilities.

Every utility goes through ``stages.measure_utility``: cached per (coalition, method, seed) in the
work directory's artifacts and DuckDB, so a benchmark killed and re-launched with the same arguments
recomputes nothing it has.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

os.environ.setdefault("ATTRIBUTION_PIPELINE_TORCH_THREADS", "1")

from attribution_pipeline.config import PipelineConfig  # noqa: E402
from attribution_pipeline.layout import RunLayout  # noqa: E402


def evaluate_job(job: tuple[dict, list[str], str, int]) -> tuple[str, str, int, dict, float, bool]:
    """One utility in a worker process: (config dict, members, method, seed) →
    (coalition key, method, seed, utilities, seconds, read from cache)."""
    from attribution_pipeline.coalitions import make_coalition
    from attribution_pipeline.stages import measure_utility
    from attribution_pipeline.storage.results import ResultStore

    cfg_dict, members, method, seed = job
    cfg = PipelineConfig.from_dict(cfg_dict)
    layout = RunLayout.at(cfg.workdir)
    c = make_coalition(members, "sampled", -5)
    out = measure_utility(cfg, layout, ResultStore(layout.database), c, method=method, seed=seed)
    return c.key, method, seed, out.utilities, out.elapsed_s, out.checkpoint.skipped


class Pool:
    """``workers`` spawned processes of one torch thread each, with a progress line every tenth."""

    def __init__(self, workers: int):
        self.pool = mp.get_context("spawn").Pool(workers, maxtasksperchild=None)

    def run(self, jobs: list[tuple], label: str) -> list[tuple]:
        """Measure every job once (duplicates dropped), in any order; their results."""
        unique = list({(id(j[0]), tuple(j[1]), j[2], j[3]): j for j in jobs}.values())
        start, out = time.perf_counter(), []
        for i, r in enumerate(self.pool.imap_unordered(evaluate_job, unique), 1):
            out.append(r)
            if i % max(1, len(unique) // 10) == 0 or i == len(unique):
                done = time.perf_counter() - start
                print(f"  {label}: {i}/{len(unique)} ({done:.0f}s, ETA {done / i * (len(unique) - i):.0f}s)", flush=True)
        return out


def prepare(cfg: PipelineConfig, log=print) -> dict:
    """Contributors, instruments, θ*, θ̃* and v(∅) (cached stages); their one-off costs."""
    from attribution_pipeline import stages
    from attribution_pipeline.storage.artifacts import read_manifest
    from attribution_pipeline.storage.results import ResultStore

    layout = RunLayout.at(cfg.workdir)
    layout.workdir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(layout.database)
    stages.prepare_contributors(cfg, layout)
    stages.build_property_reference(cfg, layout, log)
    stages.train_full_model(cfg, layout, log)
    stages.prune_base_model(cfg, layout, log)
    stages.measure_empty_coalition(cfg, layout, store)
    store.upsert("contributors", [{k: c[k] for k in ("contributor", "n_images", "data_hash", "n_skipped_files", "path")}
                                  for c in stages.read_contributors(layout)["contributors"]])
    full, pruned = read_manifest(layout.full_model_dir), read_manifest(layout.pruned_base_dir)
    return {"train_s": full["train_seconds"], "prune_ft_s": pruned["finetune_seconds"],
            "params_full": pruned["params_before"], "params_pruned": pruned["params_after"],
            "macs_full": pruned["macs_before"], "macs_pruned": pruned["macs_after"]}


def utilities(cfg: PipelineConfig, method: str, seeds: list[int] | None = None) -> dict[tuple[str, str], float]:
    """{(coalition key, property): utility averaged over ``seeds``} from the work directory's DuckDB."""
    from attribution_pipeline.storage.results import ResultStore

    seeds = seeds or cfg.utility_seeds(method)
    df = ResultStore(RunLayout.at(cfg.workdir).database).query(
        "SELECT coalition_key, property, avg(value) AS v, count(*) AS n FROM utilities "
        "WHERE method = ? AND seed IN (SELECT unnest(?)) GROUP BY ALL", [method, seeds])
    return {(r["coalition_key"], r["property"]): r["v"] for r in df.iter_rows(named=True) if r["n"] == len(seeds)}


def per_seed_utilities(cfg: PipelineConfig, method: str, seeds: list[int]) -> dict[tuple[str, str, int], float]:
    """{(coalition key, property, seed): utility}."""
    from attribution_pipeline.storage.results import ResultStore

    df = ResultStore(RunLayout.at(cfg.workdir).database).query(
        "SELECT coalition_key, property, seed, value FROM utilities WHERE method = ? AND seed IN (SELECT unnest(?))",
        [method, seeds])
    return {(r["coalition_key"], r["property"], r["seed"]): r["value"] for r in df.iter_rows(named=True)}


def elapsed(cfg: PipelineConfig, method: str, keys: list[str], seed: int) -> list[float]:
    """Seconds each of ``keys`` took by ``method`` (train + generate + score), as first measured."""
    from attribution_pipeline.storage.results import ResultStore

    df = ResultStore(RunLayout.at(cfg.workdir).database).query(
        "SELECT coalition_key, any_value(elapsed_s) AS s FROM utilities WHERE method = ? AND seed = ? "
        "AND coalition_key IN (SELECT unnest(?)) GROUP BY ALL", [method, seed, keys])
    return [float(x) for x in df["s"]]


def linked_workdir(src: Path, dst: Path, keep_pruned: bool) -> None:
    """A sweep work directory sharing the source's contributors, instruments and θ* (symlinks)."""
    (dst / "models").mkdir(parents=True, exist_ok=True)
    links = {"data": src / "data", "reference": src / "reference", "models/full": src / "models" / "full",
             "models/untrained": src / "models" / "untrained"}
    if keep_pruned:
        links["models/pruned_base"] = src / "models" / "pruned_base"
    for name, target in links.items():
        if not (dst / name).exists():
            (dst / name).symlink_to(target.resolve(), target_is_directory=True)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically (temporary file, then rename)."""
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
