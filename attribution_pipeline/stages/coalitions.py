"""Coalition stages: plan the coalitions, evaluate one (fine-tune → generate → score), v(∅), θ*."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np

from attribution_pipeline.coalitions import EMPTY_KEY, Coalition, make_coalition, masks_to_coalitions
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.imagesets import GRID_FILE, load_image_set, save_image_set
from attribution_pipeline.layout import RunLayout, content_hash, current_signature, signature
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.stages.base import (
    Log, StageResult, _progress, _quiet, _score, read_contributors,
)
from attribution_pipeline.storage.artifacts import atomic_write_json, read_manifest
from attribution_pipeline.storage.records import write_utility_records
from attribution_pipeline.storage.results import ResultStore

SFT, FT, RETRAIN = "sft", "ft", "retrain"
METHODS = (SFT, FT, RETRAIN)


@dataclass
class Plan:
    contributors: list[str]
    budget: int
    seed: int
    design: str
    coalitions: list[Coalition]  # the full coalition first, then the design's draws in order
    base_version: str | None = None  # the pruned base the plan was made with (incremental plans grow from it)

    @property
    def content_hash(self) -> str:
        return signature(self.contributors, [c.key for c in self.coalitions])


def plan_coalitions(cfg: PipelineConfig, layout: RunLayout, store: ResultStore,
                    budget: int | None = None, seed: int | None = None) -> Plan:
    """The full coalition plus the first ``budget`` coalitions of the seeded paired design.

    Prefix-stable: a larger budget keeps every coalition of a smaller one. When the budget covers
    all 2^n − 2 proper coalitions, every one of them is planned (exact Shapley values).
    Writes ``plan.json`` and upserts the ``coalitions`` table (with the empty coalition).
    """
    from attribution_pipeline.valuation import CoalitionDesign

    budget = cfg.valuation.budget if budget is None else int(budget)
    seed = cfg.valuation.seed if seed is None else int(seed)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    from attribution_pipeline.stages.revaluation import plan_incremental

    # the incremental policy grows the previous plan instead (see stages/revaluation.py)
    plan = plan_incremental(cfg, layout, budget, seed) if cfg.revaluation.policy == "incremental" else None
    if plan is None:
        ids = [c["contributor"] for c in read_contributors(layout)["contributors"]]
        n = len(ids)
        design = CoalitionDesign(n_players=n, seed=seed)
        masks = design.take(budget) if budget > 0 else np.zeros((0, n), dtype=bool)
        full = make_coalition(ids, "full", 0)
        sampled = masks_to_coalitions(masks, ids, start_index=1)
        plan = Plan(ids, budget, seed, getattr(design, "design", "paired-kernel"), [full, *sampled])
    plan.base_version = content_hash(layout.pruned_base_dir) if (layout.pruned_base_dir / "manifest.json").is_file() else None
    unique = {c.key: c for c in reversed(plan.coalitions)}  # first occurrence wins
    rows = [c.as_row() for c in unique.values()] + [make_coalition([], "empty", -1).as_row()]
    store.upsert("coalitions", rows)
    atomic_write_json(layout.workdir / "plan.json", {
        "contributors": plan.contributors, "budget": plan.budget, "seed": seed, "design": plan.design,
        "base_version": plan.base_version,
        "coalitions": [{"key": c.key, "members": list(c.members), "kind": c.kind} for c in plan.coalitions],
    })
    return plan


def read_plan(layout: RunLayout) -> Plan:
    path = layout.workdir / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize the `coalition_plan` asset first")
    d = json.loads(path.read_text())
    coalitions = [make_coalition(c["members"], c["kind"], i) for i, c in enumerate(d["coalitions"])]
    return Plan(d["contributors"], d["budget"], d["seed"], d["design"], coalitions, d.get("base_version"))


def coalitions_by_key(store: ResultStore, keys: list[str]) -> dict[str, Coalition]:
    """Members of coalition partitions, from the ``coalitions`` table."""
    df = store.query("SELECT coalition_key, members, kind, plan_index FROM coalitions")
    known = {r["coalition_key"]: r for r in df.iter_rows(named=True)}
    missing = [k for k in keys if k not in known]
    if missing:
        raise KeyError(f"coalition partition(s) {missing} are not in the coalitions table; "
                       "materialize `coalition_plan` first")
    return {k: Coalition(k, tuple(known[k]["members"]), known[k]["kind"], known[k]["plan_index"]) for k in keys}


@dataclass
class CoalitionOutcome:
    coalition: Coalition
    checkpoint: StageResult
    images: StageResult
    utilities: dict[str, float]
    elapsed_s: float
    extra: dict = field(default_factory=dict)


def _generate_and_save(cfg: PipelineConfig, model, folder, sig: str, log: Log) -> StageResult:
    if current_signature(folder) == sig:
        m = read_manifest(folder)
        return StageResult(m["content_hash"], True, m.get("generate_seconds", 0.0),
                           {"n_images": m["n_images"], "grid": str(folder / GRID_FILE)})
    s = cfg.sampling
    start = time.perf_counter()
    images = get_backend(cfg).generate(model, n_images=s.n_images, steps=s.ddim_steps, seed=s.seed,
                                       batch_size=s.batch_size)
    elapsed = time.perf_counter() - start
    m = save_image_set(images, folder, {"inputs_signature": sig, "generate_seconds": elapsed,
                                        "noise_seed": s.seed, "ddim_steps": s.ddim_steps})
    return StageResult(m["content_hash"], False, elapsed, {"n_images": m["n_images"], "grid": str(folder / GRID_FILE)})


def _utility_rows(cfg: PipelineConfig, key: str, utilities: dict[str, float], method: str, seed: int,
                  elapsed: float, base_version: str | None, n_images: int,
                  inputs_signature: str | None = None, base_predates: list[str] | None = None) -> list[dict]:
    backend = get_backend(cfg)
    return [{"coalition_key": key, "property": p, "value": float(v), "method": method, "seed": seed,
             "elapsed_s": elapsed, "base_version": base_version, "n_images": n_images,
             "device": str(backend.device), "precision": backend.precision, "inputs_signature": inputs_signature,
             "base_predates": base_predates}
            for p, v in utilities.items()]


@dataclass(frozen=True)
class UtilitySpec:
    """What one utility of one coalition is computed from, before any work: the model it starts
    from (``base_version``, None when trained from scratch), the checkpoint's inputs signature, and
    the signature of the utility itself (checkpoint + sampling + properties + instruments)."""

    method: str
    seed: int
    base_version: str | None
    checkpoint_signature: str
    utility_signature: str


def utility_spec(cfg: PipelineConfig, layout: RunLayout, coalition: Coalition, method: str = SFT,
                 seed: int | None = None, data: dict[str, str] | None = None) -> UtilitySpec:
    if method not in METHODS:
        raise ValueError(f"unknown utility method {method!r}; choose one of {METHODS}")
    if data is None:
        data = {c["contributor"]: c["data_hash"] for c in read_contributors(layout)["contributors"]}
    unknown = [m for m in coalition.members if m not in data]
    if unknown:
        raise ValueError(f"coalition {coalition.key} has member(s) {unknown} that are not current contributors")
    members = [(m, data[m]) for m in coalition.members]
    if method == RETRAIN:
        seed = cfg.train.seed if seed is None else int(seed)
        base_version = None
        ckpt_sig = signature("retrain", cfg.model, cfg.train, seed, members)
    else:
        seed = cfg.finetune.seed if seed is None else int(seed)
        base_dir = layout.pruned_base_dir if method == SFT else layout.full_model_dir
        base_version = content_hash(base_dir)
        f = cfg.finetune if seed == cfg.finetune.seed else dataclasses.replace(cfg.finetune, seed=seed)
        # the sFT signature is unchanged from earlier releases so cached coalitions stay valid
        ckpt_sig = signature("coalition_ft", f, cfg.model, base_version, members) if method == SFT else \
            signature("coalition_full_ft", f, cfg.model, base_version, members)
    reference = content_hash(layout.reference_dir) if (layout.reference_dir / "manifest.json").is_file() else None
    # property instruments beyond the reference folder (model paths, quantile, ...), once set
    instruments = [cfg.properties] if cfg.properties != type(cfg.properties)() else []
    util_sig = signature("utility", ckpt_sig, cfg.sampling, sorted(cfg.valuation.properties), reference, *instruments)
    return UtilitySpec(method, seed, base_version, ckpt_sig, util_sig)


def _train_coalition_model(cfg: PipelineConfig, layout: RunLayout, coalition: Coalition, spec: UtilitySpec,
                           log: Log):
    """The coalition's model by ``spec.method``; returns (model, TrainResult-like elapsed, final loss)."""
    backend = get_backend(cfg)
    data = backend.training_data(layout, coalition.members)
    progress = _progress(log, f"coalition {coalition.key} ({spec.method}, seed {spec.seed})")
    if spec.method == RETRAIN:
        t = cfg.train
        model = backend.build(seed=spec.seed)
        return backend.train(model, data, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                             seed=spec.seed, warmup_steps=t.warmup_steps, ema="reset", ema_decay=t.ema_decay,
                             progress=progress, progress_every=max(t.steps // 4, 1))
    f = cfg.finetune
    model = backend.load(layout.pruned_base_dir if spec.method == SFT else layout.full_model_dir)
    return backend.train(model, data, steps=f.steps, batch_size=f.batch_size, lr=f.lr,
                         seed=spec.seed, ema=f.ema, ema_decay=f.ema_decay,
                         progress=progress, progress_every=max(f.steps, 1))


def evaluate_coalition(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, coalition: Coalition,
                       log: Log = _quiet, method: str = SFT, seed: int | None = None) -> CoalitionOutcome:
    """The utility of one coalition by ``method``, stored in ``utilities`` (method, seed):

    - ``sft``: fine-tune the pruned base θ̃* k steps on the coalition's data (the default);
    - ``ft``: fine-tune the unpruned full model θ* k steps on it;
    - ``retrain``: train from scratch with the full model's recipe and ``seed``.

    Then generate with the shared noise and score. Each artifact is cached by its inputs
    signature, so a present utility is never recomputed.
    """
    if coalition.size == 0:
        raise ValueError("the empty coalition has no data to train on; use evaluate_empty_coalition")
    start = time.perf_counter()
    backend = get_backend(cfg)
    spec = utility_spec(cfg, layout, coalition, method, seed)
    run_seed = None if (method == SFT and spec.seed == cfg.finetune.seed) else spec.seed
    ckpt_dir = layout.coalition_checkpoint_dir(coalition.key, method, run_seed)
    images_dir = layout.coalition_images_dir(coalition.key, method, run_seed)
    reuse_full = (method == RETRAIN and spec.seed == cfg.train.seed
                  and list(coalition.members) == [c["contributor"] for c in read_contributors(layout)["contributors"]])
    if reuse_full:
        # retraining N with the full model's recipe and seed is θ* itself: reuse it, and its cost
        m = read_manifest(layout.full_model_dir)
        model = backend.load(layout.full_model_dir)
        ckpt = StageResult(m["content_hash"], True, m.get("train_seconds", 0.0))
    elif current_signature(ckpt_dir) == spec.checkpoint_signature:
        m = read_manifest(ckpt_dir)
        model = backend.load(ckpt_dir)
        ckpt = StageResult(m["content_hash"], True, m.get("finetune_seconds", 0.0))
    else:
        r = _train_coalition_model(cfg, layout, coalition, spec, log)
        meta = {"inputs_signature": spec.checkpoint_signature, "finetune_seconds": r.elapsed_s,
                "members": list(coalition.members), "base_version": spec.base_version, "method": method,
                "seed": spec.seed, "final_loss": r.final_loss}
        backend.save(r.model, ckpt_dir, meta, pruned=(method == SFT))
        model = r.model
        ckpt = StageResult(read_manifest(ckpt_dir)["content_hash"], False, r.elapsed_s)
    img = _generate_and_save(cfg, model, images_dir, signature("images", cfg.sampling, ckpt.content_hash), log)
    t0 = time.perf_counter()
    utilities = _score(cfg, layout, load_image_set(images_dir))
    score_s = time.perf_counter() - t0
    total = ckpt.elapsed_s + img.elapsed_s + score_s
    from attribution_pipeline.stages.revaluation import members_base_predates

    rows = _utility_rows(cfg, coalition.key, utilities, method, spec.seed, total, spec.base_version,
                         img.metadata["n_images"], spec.utility_signature,
                         members_base_predates(layout, coalition.members, method))
    # the record first: a row the database has must be rebuildable by `reindex` (issue 16)
    write_utility_records(layout.coalition_run_dir(coalition.key, method, run_seed), rows)
    store.upsert("utilities", rows)
    return CoalitionOutcome(coalition, ckpt, img, utilities, time.perf_counter() - start,
                            {"score_s": score_s, "method": method, "seed": spec.seed, "images_dir": str(images_dir)})


def evaluate_coalition_all_seeds(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, coalition: Coalition,
                                 log: Log = _quiet, method: str | None = None) -> list[CoalitionOutcome]:
    """Every utility a valuation by ``method`` needs for this coalition (one per seed)."""
    method = method or cfg.valuation.method
    return [evaluate_coalition(cfg, layout, store, coalition, log, method, s) for s in cfg.utility_seeds(method)]


def evaluate_empty_coalition(cfg: PipelineConfig, layout: RunLayout, store: ResultStore,
                             log: Log = _quiet) -> CoalitionOutcome:
    """v(∅): images of the untrained model (seeded random init), same noise, same scorers."""
    start = time.perf_counter()
    model = get_backend(cfg).build(seed=cfg.train.seed)  # sd_lora: the base model (a zero adapter)
    img = _generate_and_save(cfg, model, layout.untrained_images_dir,
                             signature("untrained_images", cfg.sampling, cfg.model, cfg.train.seed), log)
    utilities = _score(cfg, layout, load_image_set(layout.untrained_images_dir))
    elapsed = time.perf_counter() - start
    rows = _utility_rows(cfg, EMPTY_KEY, utilities, SFT, cfg.finetune.seed, elapsed, None, img.metadata["n_images"])
    write_utility_records(layout.untrained_images_dir.parent, rows)
    store.upsert("utilities", rows)
    empty = make_coalition([], "empty", -1)
    return CoalitionOutcome(empty, StageResult("untrained", True, 0.0), img, utilities, elapsed)


def evaluate_full_model(cfg: PipelineConfig, layout: RunLayout, store: ResultStore,
                        log: Log = _quiet) -> CoalitionOutcome:
    """Properties of θ* itself (method ``full_model``), and how many of its samples the
    reference classifier recognises (probability ≥ 0.5)."""
    from attribution_pipeline.properties.registry import recognized_fraction

    start = time.perf_counter()
    ids = [c["contributor"] for c in read_contributors(layout)["contributors"]]
    full_version = content_hash(layout.full_model_dir)
    model = get_backend(cfg).load(layout.full_model_dir)
    img = _generate_and_save(cfg, model, layout.full_model_images_dir,
                             signature("full_images", cfg.sampling, full_version), log)
    images = load_image_set(layout.full_model_images_dir)
    utilities = _score(cfg, layout, images)
    from attribution_pipeline.stages.base import _property_context

    recognized = float(recognized_fraction(images, _property_context(cfg, layout).classifier, threshold=0.5))
    log(f"full model: {recognized:.1%} of {len(images)} samples recognised with probability >= 0.5")
    elapsed = time.perf_counter() - start
    full = make_coalition(ids, "full", 0)
    rows = _utility_rows(cfg, full.key, utilities, "full_model", cfg.train.seed, elapsed, full_version,
                         img.metadata["n_images"])
    write_utility_records(layout.workdir / "models" / "full_model", rows)
    store.upsert("utilities", rows)
    return CoalitionOutcome(full, StageResult(full_version, True, 0.0), img, utilities, elapsed,
                            {"recognized_fraction": recognized})
