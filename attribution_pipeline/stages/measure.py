"""Measure utilities: train a coalition's model by its utility method, generate with the shared
noise, score every property. Also v(∅) (the untrained model) and θ*'s own properties.

Every artifact is cached by its inputs signature, so a present utility is never recomputed. A
``StageResult`` of a cached artifact has ``elapsed_s`` 0 (no work in this call) and its stored
cost in ``metadata["cost_s"]``; the utility row's ``elapsed_s`` is the utility's whole cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from attribution_pipeline.coalitions import EMPTY_KEY, Coalition, make_coalition
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.imagesets import GRID_FILE, load_image_set, save_image_set
from attribution_pipeline.layout import RunLayout, content_hash, current_signature, signature
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.properties.registry import recognized_fraction
from attribution_pipeline.stages.contributors import contributor_ids
from attribution_pipeline.stages.lineage import members_base_predates
from attribution_pipeline.stages.models import train_from_scratch
from attribution_pipeline.stages.reference import property_context, score
from attribution_pipeline.stages.result import Log, StageResult, progress, quiet
from attribution_pipeline.stages.utility import (
    EMPTY_METHOD, RETRAIN, SFT, UtilitySpec, empty_seed, empty_utility_signature, instruments_signature,
    replicate_config, replicate_seeds, replicates_apply, untrained_images_signature, utility_spec,
)
from attribution_pipeline.storage.artifacts import read_manifest
from attribution_pipeline.storage.records import rows_in, write_utility_records
from attribution_pipeline.storage.results import ResultStore


@dataclass
class UtilityOutcome:
    coalition: Coalition
    checkpoint: StageResult
    images: StageResult
    utilities: dict[str, float]
    elapsed_s: float
    extra: dict = field(default_factory=dict)

    @property
    def work_s(self) -> float:
        """Seconds of work this call did (cached steps count 0)."""
        return self.checkpoint.elapsed_s + self.images.elapsed_s + self.extra.get("score_s", 0.0)

    @property
    def cost_s(self) -> float:
        """Seconds the utility costs, cached or not: training and generation as first measured, plus this
        call's scoring (the figure stored as ``utilities.elapsed_s``)."""
        return (self.checkpoint.metadata.get("cost_s", 0.0) + self.images.metadata.get("cost_s", 0.0)
                + self.extra.get("score_s", 0.0))


def utilities_version(utilities: dict[str, float]) -> str:
    return signature(sorted((k, round(float(v), 12)) for k, v in utilities.items()))


def _generate_and_save(cfg: PipelineConfig, model, folder, sig: str) -> StageResult:
    if current_signature(folder) == sig:
        m = read_manifest(folder)
        return StageResult(m["content_hash"], True, 0.0, {"n_images": m["n_images"], "grid": str(folder / GRID_FILE),
                                                          "cost_s": m.get("generate_seconds", 0.0)})
    s = cfg.sampling
    start = time.perf_counter()
    images = get_backend(cfg).generate(model, n_images=s.n_images, steps=s.ddim_steps, seed=s.seed,
                                       batch_size=s.batch_size)
    elapsed = time.perf_counter() - start
    m = save_image_set(images, folder, {"inputs_signature": sig, "generate_seconds": elapsed,
                                        "noise_seed": s.seed, "ddim_steps": s.ddim_steps})
    return StageResult(m["content_hash"], False, elapsed, {"n_images": m["n_images"], "grid": str(folder / GRID_FILE),
                                                           "cost_s": elapsed})


def _utility_rows(cfg: PipelineConfig, key: str, utilities: dict[str, float], method: str, seed: int,
                  elapsed: float, base_version: str | None, n_images: int,
                  inputs_signature: str | None = None, base_predates: list[str] | None = None) -> list[dict]:
    backend = get_backend(cfg)
    return [{"coalition_key": key, "property": p, "value": float(v), "method": method, "seed": seed,
             "elapsed_s": elapsed, "base_version": base_version, "n_images": n_images,
             "device": str(backend.device), "precision": backend.precision, "inputs_signature": inputs_signature,
             "base_predates": base_predates}
            for p, v in utilities.items()]


def _recalled(cfg: PipelineConfig, store: ResultStore | None, run_dir, key: str, method: str, seed: int,
              inputs_signature: str) -> dict[str, float] | None:
    """{property: value} already recorded under ``run_dir`` for exactly these inputs (every
    property), else None. Read from the utility records, never from DuckDB (workers do not open it).

    A hit is recorded again, so that it is the newest record of its key: records of other inputs
    (a round with another reference, say) may be newer, and the database keeps the newest row per key,
    so without this a return to earlier inputs found its utility here but never current in DuckDB."""
    rows = [r for r in rows_in(run_dir) if r["coalition_key"] == key and r["method"] == method
            and r["seed"] == seed and r.get("inputs_signature") == inputs_signature]
    found = {r["property"]: r["value"] for r in rows}
    if not set(cfg.valuation.properties) <= set(found):
        return None
    latest = {r["property"]: {k: v for k, v in r.items() if k != "computed_at"} for r in rows}
    _store(store, run_dir, list(latest.values()))
    return found


def _store(store: ResultStore | None, run_dir, rows: list[dict]) -> None:
    """The utility record beside the artifact (the outbox), then DuckDB when this process is the
    database's writer (``store`` given). A worker passes None: the head process ingests its
    records (``attribution_pipeline.reindex.ingest``), and every row the database holds can be
    rebuilt from the work directory (``attribution-pipeline reindex``)."""
    write_utility_records(run_dir, rows)
    if store is not None:
        store.upsert("utilities", rows)


def _train(cfg: PipelineConfig, layout: RunLayout, coalition: Coalition, spec: UtilitySpec, log: Log):
    """The coalition's model by ``spec.method`` (a TrainResult)."""
    backend = get_backend(cfg)
    data = backend.training_data(layout, coalition.members)
    what = f"coalition {coalition.key} ({spec.method}, seed {spec.seed})"
    if spec.method == RETRAIN:
        return train_from_scratch(cfg, data, spec.seed, log, what, progress_every=max(cfg.train.steps // 4, 1))
    f = cfg.finetune
    model = backend.load(layout.pruned_base_dir if spec.method == SFT else layout.full_model_dir)
    return backend.train(model, data, steps=f.steps, batch_size=f.batch_size, lr=f.lr,
                         seed=spec.seed, ema=f.ema, ema_decay=f.ema_decay,
                         progress=progress(log, what), progress_every=max(f.steps, 1))


def _coalition_model(cfg: PipelineConfig, layout: RunLayout, coalition: Coalition, spec: UtilitySpec, log: Log):
    """(model, StageResult of its checkpoint): reused when cached, trained otherwise."""
    backend = get_backend(cfg)
    if spec.method == RETRAIN and spec.seed == cfg.train.seed and list(coalition.members) == contributor_ids(layout):
        # retraining N with the full model's recipe and seed is θ* itself: reuse it, and its cost
        m = read_manifest(layout.full_model_dir)
        return backend.load(layout.full_model_dir), StageResult(m["content_hash"], True, 0.0,
                                                                {"cost_s": m.get("train_seconds", 0.0)})
    if current_signature(spec.checkpoint_dir) == spec.checkpoint_signature:
        m = read_manifest(spec.checkpoint_dir)
        return backend.load(spec.checkpoint_dir), StageResult(m["content_hash"], True, 0.0,
                                                              {"cost_s": m.get("finetune_seconds", 0.0)})
    r = _train(cfg, layout, coalition, spec, log)
    meta = {"inputs_signature": spec.checkpoint_signature, "finetune_seconds": r.elapsed_s,
            "members": list(coalition.members), "base_version": spec.base_version, "method": spec.method,
            "seed": spec.seed, "final_loss": r.final_loss}
    backend.save(r.model, spec.checkpoint_dir, meta, pruned=(spec.method == SFT))
    return r.model, StageResult(read_manifest(spec.checkpoint_dir)["content_hash"], False, r.elapsed_s,
                                {"cost_s": r.elapsed_s})


def measure_utility(cfg: PipelineConfig, layout: RunLayout, store: ResultStore | None, coalition: Coalition,
                    log: Log = quiet, method: str = SFT, seed: int | None = None) -> UtilityOutcome:
    """The utility of one coalition by ``method`` (see ``utility.py``), stored in ``utilities``
    under (method, seed): train, generate with the shared noise, score."""
    if coalition.size == 0:
        raise ValueError("the empty coalition has no data to train on; use measure_empty_coalition")
    start = time.perf_counter()
    spec = utility_spec(cfg, layout, coalition, method, seed)
    model, ckpt = _coalition_model(cfg, layout, coalition, spec, log)
    img = _generate_and_save(cfg, model, spec.images_dir, signature("images", cfg.sampling, ckpt.content_hash))
    t0 = time.perf_counter()
    utilities = score(cfg, layout, load_image_set(spec.images_dir))
    out = UtilityOutcome(coalition, ckpt, img, utilities, 0.0, {"score_s": time.perf_counter() - t0, "method": method,
                                                                "seed": spec.seed, "images_dir": str(spec.images_dir)})
    _store(store, spec.images_dir.parent, _utility_rows(
        cfg, coalition.key, utilities, method, spec.seed, out.cost_s, spec.base_version, img.metadata["n_images"],
        spec.utility_signature, members_base_predates(layout, coalition.members, method)))
    out.elapsed_s = time.perf_counter() - start
    return out


def measure_utility_all_seeds(cfg: PipelineConfig, layout: RunLayout, store: ResultStore | None, coalition: Coalition,
                              log: Log = quiet) -> list[UtilityOutcome]:
    """Every utility a valuation by ``cfg.valuation.method`` needs for this coalition: one per seed of
    the method, then its replicates (``utility.replicate_seeds``) when it is a replicated coalition."""
    method = cfg.valuation.method
    outs = [measure_utility(cfg, layout, store, coalition, log, method, s) for s in cfg.utility_seeds(method)]
    return outs + [measure_utility(rcfg, layout, store, coalition, log, method, s)
                   for rcfg, s in replicate_seeds(cfg, coalition)]


def empty_images_dir(layout: RunLayout, j: int):
    """Where replicate j of v(∅) keeps its images (j = 0: the untrained model's images folder)."""
    return layout.untrained_images_dir if j == 0 else layout.untrained_images_dir.parent / f"replicate-{j}" / "images"


def _measure_empty_one(cfg: PipelineConfig, layout: RunLayout, store: ResultStore | None, j: int) -> UtilityOutcome:
    """Replicate j of v(∅): the untrained model (init seed ``train.seed``) with generation seed + j."""
    start = time.perf_counter()
    rcfg = replicate_config(cfg, j)
    folder = empty_images_dir(layout, j)
    empty = make_coalition([], "empty", -1)
    seed = empty_seed(cfg) + j
    cached = _recalled(rcfg, store, folder.parent, EMPTY_KEY, EMPTY_METHOD, seed, empty_utility_signature(rcfg, layout))
    if cached is not None:
        m = read_manifest(folder)
        return UtilityOutcome(empty, StageResult("untrained", True, 0.0), StageResult(m["content_hash"], True, 0.0),
                              cached, 0.0)
    model = get_backend(rcfg).build(seed=cfg.train.seed)  # sd_lora: the base model (a zero adapter)
    img = _generate_and_save(rcfg, model, folder, untrained_images_signature(rcfg))
    utilities = score(rcfg, layout, load_image_set(folder))
    elapsed = time.perf_counter() - start
    _store(store, folder.parent, _utility_rows(
        rcfg, EMPTY_KEY, utilities, EMPTY_METHOD, seed, elapsed, None, img.metadata["n_images"],
        empty_utility_signature(rcfg, layout)))
    return UtilityOutcome(empty, StageResult("untrained", True, 0.0), img, utilities, elapsed)


def measure_empty_coalition(cfg: PipelineConfig, layout: RunLayout, store: ResultStore | None,
                            log: Log = quiet) -> UtilityOutcome:
    """v(∅): images of the untrained model (seeded random init), same noise, same scorers, and its
    replicates with other generation seeds (``valuation.replicates``). Not measured again while its
    stored utilities carry the current inputs signature. Returns replicate 0's outcome (the one fitted)."""
    first = _measure_empty_one(cfg, layout, store, 0)
    if replicates_apply(cfg):
        for j in range(1, cfg.valuation.replicates):
            out = _measure_empty_one(cfg, layout, store, j)
            if not out.images.skipped:
                log(f"v(∅) replicate {j} (generation seed + {j}): "
                    + ", ".join(f"{p}={v:.4g}" for p, v in out.utilities.items()))
    return first


def full_model_utility_signature(cfg: PipelineConfig, layout: RunLayout) -> str:
    return signature("utility-full-model", cfg.sampling, content_hash(layout.full_model_dir),
                     *instruments_signature(cfg, layout))


def measure_full_model(cfg: PipelineConfig, layout: RunLayout, store: ResultStore | None,
                       log: Log = quiet) -> UtilityOutcome:
    """Properties of θ* itself (method ``full_model``), and how many of its samples the
    reference classifier recognises (probability ≥ 0.5)."""
    start = time.perf_counter()
    ids = contributor_ids(layout)
    full_version = content_hash(layout.full_model_dir)
    model = get_backend(cfg).load(layout.full_model_dir)
    img = _generate_and_save(cfg, model, layout.full_model_images_dir,
                             signature("full_images", cfg.sampling, full_version))
    images = load_image_set(layout.full_model_images_dir)
    utilities = score(cfg, layout, images)
    recognized = float(recognized_fraction(images, property_context(cfg, layout).classifier, threshold=0.5))
    log(f"full model: {recognized:.1%} of {len(images)} samples recognised with probability >= 0.5")
    elapsed = time.perf_counter() - start
    full = make_coalition(ids, "full", 0)
    _store(store, layout.workdir / "models" / "full_model", _utility_rows(
        cfg, full.key, utilities, "full_model", cfg.train.seed, elapsed, full_version, img.metadata["n_images"],
        full_model_utility_signature(cfg, layout)))
    return UtilityOutcome(full, StageResult(full_version, True, 0.0), img, utilities, elapsed,
                          {"recognized_fraction": recognized})
