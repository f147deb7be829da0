"""The baseline attributions of a work directory: the paper's Table 1 rows, stored like Shapley values.

``compute_baselines`` reads the contributors' cached images, θ* and its generated images (the
``full_model_utility`` asset's), the instruments, and computes every method of
``cfg.baselines.methods`` (``config.BASELINE_METHODS``) with the pure modules of ``baselines/``.
The projected gradients are cached as artifacts under ``<workdir>/baselines/gradients/<name>``
(atomic, signed by θ*, the data or the generated set, and the cache settings), so a second call
recomputes only what changed. LOO uses ``measure_utility``: its coalitions N∖{i} are cached like any
other utility, and ``loo_retrain`` retrains with the counterfactual evaluation's seeds, so the full
coalition's retrains are shared with ``evaluate_counterfactual``.

One row per (method, property, contributor) goes to the ``attributions`` table, with the method's
cost in seconds and its provenance (JSON).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from attribution_pipeline import versions
from attribution_pipeline.baselines import aggregate, gradients, heuristics, influence, similarity
from attribution_pipeline.baselines.aggregate import ImageIndex
from attribution_pipeline.coalitions import make_coalition
from attribution_pipeline.config import PipelineConfig
from attribution_pipeline.data.imagesets import load_image_set
from attribution_pipeline.layout import RunLayout, content_hash, current_signature, signature
from attribution_pipeline.models.backends import load_pixels
from attribution_pipeline.models.registry import get_backend
from attribution_pipeline.models.unet import noise_scheduler
from attribution_pipeline.stages.contributors import contributor_ids, read_contributors
from attribution_pipeline.stages.measure import measure_full_model, measure_utility
from attribution_pipeline.stages.reference import instrument_description, property_context, score
from attribution_pipeline.stages.result import Log, quiet
from attribution_pipeline.storage.artifacts import atomic_folder, is_complete, read_manifest
from attribution_pipeline.storage.results import ResultStore

FAMILY = {"size_share": "size", "loo_sft": "loo", "loo_retrain": "loo", "own_property": "own_data",
          "own_confidence_mean": "own_data", "own_confidence_max": "own_data"}
GRADIENT = ("grad_sim_mean", "grad_sim_max", "trak", "relative_if", "renormalized_if", "dtrak", "journey_trak")
FEATURES_FILE = "features.npz"


def family_of(method: str) -> str:
    return FAMILY.get(method, "gradient" if method in GRADIENT else "similarity")


@dataclass
class BaselineOutcome:
    rows: list[dict]
    values: dict  # method -> property -> (n_contributors,) in contributor order
    costs: dict[str, float]  # method -> seconds
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it was not computed
    basis: str = ""


def gradients_dir(layout: RunLayout, name: str):
    return layout.workdir / "baselines" / "gradients" / name


def _cached_features(layout: RunLayout, name: str, sig: str, compute, log: Log) -> gradients.GradientFeatures:
    """The gradient features ``name`` signed ``sig``: read back, or computed and written atomically."""
    folder = gradients_dir(layout, name)
    if current_signature(folder) == sig:
        with np.load(folder / FEATURES_FILE) as z:
            return gradients.GradientFeatures([str(i) for i in z["ids"]], z["features"], read_manifest(folder)["meta"])
    feats = compute()
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(feats.ids), features=feats.features)
    with atomic_folder(folder, {"inputs_signature": sig, "meta": feats.meta, **versions.snapshot()}) as tmp:
        (tmp / FEATURES_FILE).write_bytes(buffer.getvalue())
    log(f"baselines: {name} gradients of {len(feats.ids)} images in {feats.meta['seconds']:.0f}s")
    return feats


def _train_rows(layout: RunLayout, ids: list[str]):
    """Pixels of every contributor's cached images, with their image ids (``c/<row>``)."""
    data = load_pixels(layout, ids)
    labels = data.labels.numpy()
    seen: dict[int, int] = {}
    image_ids = []
    for label in labels:
        image_ids.append(aggregate.image_id(ids[label], seen.get(label, 0)))
        seen[label] = seen.get(label, 0) + 1
    return data.x, image_ids


def _progress(log: Log, what: str):
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 30:
            last[0] = now
            log(f"baselines: {what} {done}/{total}")

    return report


class _Clock:
    """Seconds spent per method; a shared step is charged in full to each method that needs it."""

    def __init__(self):
        self.costs: dict[str, float] = {}

    def charge(self, methods, seconds: float) -> None:
        for m in methods:
            self.costs[m] = self.costs.get(m, 0.0) + seconds


class _Gradients:
    """What every gradient feature set of one θ* shares: the model, its schedule, the cache settings."""

    def __init__(self, cfg: PipelineConfig, layout: RunLayout, log: Log):
        self.cfg, self.layout, self.log, self.b = cfg, layout, log, cfg.baselines
        self.theta = content_hash(layout.full_model_dir)
        self.model = get_backend(cfg).load(layout.full_model_dir)
        self.sched = noise_scheduler(cfg.model)
        self.settings = {"n_timesteps": self.b.n_timesteps, "dim": self.b.dim, "seed": self.b.seed}

    def features(self, name: str, output: str, images, ids: list[str], inputs_hash: str):
        """(features, seconds): cached gradients of ``output`` for ``images``; the seconds they took when
        computed, so that a baseline read from the cache still reports its cost."""
        b = self.b
        sig = signature("gradients", name, self.settings, self.theta, inputs_hash)
        f = _cached_features(self.layout, name, sig, lambda: gradients.gradient_features(
            self.model, self.sched, images, ids, output=output, n_timesteps=b.n_timesteps, dim=b.dim, seed=b.seed,
            batch_size=b.batch_size, progress=_progress(self.log, f"{name} gradients")), self.log)
        return f, float(f.meta["seconds"])

    def journey(self, gen_ids: list[str]):
        from attribution_pipeline.models.sampling import initial_noise

        b, s = self.b, self.cfg.sampling
        sig = signature("gradients", "journey", self.settings, b.journey_points, self.theta, s)
        noise = initial_noise(self.cfg.model, s.n_images, s.seed)
        f = _cached_features(self.layout, "generated_journey", sig, lambda: gradients.journey_features(
            self.model, self.cfg.model, self.sched, noise, gen_ids, ddim_steps=s.ddim_steps, n_points=b.journey_points,
            dim=b.dim, seed=b.seed, batch_size=b.batch_size, progress=_progress(self.log, "journey gradients")), self.log)
        return f, float(f.meta["seconds"])


TRAK_SCORES = ("trak", "relative_if", "renormalized_if")


def _gradient_family(cfg: PipelineConfig, layout: RunLayout, wanted: list[str], x, image_ids, generated, gen_ids,
                     index: ImageIndex, clock: _Clock, log: Log) -> tuple[dict, dict]:
    """The gradient family's per-contributor values and their provenance; costs charged to ``clock``."""
    b, g = cfg.baselines, _Gradients(cfg, layout, log)
    data_hash = read_contributors(layout)["content_hash"]
    gen_hash = content_hash(layout.full_model_images_dir)
    out, prov = {}, {"timesteps": b.n_timesteps, "projection": "count-sketch", "dim": b.dim, "projection_seed": b.seed,
                     "lambda": b.lam, "aggregation": b.group, "theta": g.theta}
    group = lambda scores: aggregate.by_contributor(index, index.ids, scores, b.group)  # noqa: E731
    loss_users = [m for m in wanted if m in (*TRAK_SCORES, "grad_sim_mean", "grad_sim_max", "journey_trak")]
    if loss_users:
        (train, t1), (gen, t2) = (g.features("train_loss", "loss", x, image_ids, data_hash),
                                  g.features("generated_loss", "loss", generated, gen_ids, gen_hash))
        clock.charge(loss_users, t1)
        phi, t = influence.align(train, index.ids), time.perf_counter()
        if set(TRAK_SCORES) & set(wanted):
            scores = influence.trak_scores(phi, gen.features, b.lam)
            out.update({m: group(scores[m]) for m in TRAK_SCORES})
            clock.charge([m for m in TRAK_SCORES if m in wanted], t2 + time.perf_counter() - t)
        t = time.perf_counter()
        if {"grad_sim_mean", "grad_sim_max"} & set(wanted):
            mm = aggregate.mean_and_max(index, index.ids, similarity.cosine_matrix(gen.features, phi))
            out["grad_sim_mean"], out["grad_sim_max"] = mm["mean"], mm["max"]
            clock.charge([m for m in ("grad_sim_mean", "grad_sim_max") if m in wanted], t2 + time.perf_counter() - t)
        if "journey_trak" in wanted:
            j, t3 = g.journey(gen_ids)
            out["journey_trak"] = group(influence.trak_scores(phi, j.features, b.lam)["trak"])
            clock.charge(["journey_trak"], t3)
            prov["journey_points"] = b.journey_points
    if "dtrak" in wanted:
        (train, t1), (gen, t2) = (g.features("train_output_norm", "output_norm", x, image_ids, data_hash),
                                  g.features("generated_output_norm", "output_norm", generated, gen_ids, gen_hash))
        t = time.perf_counter()
        out["dtrak"] = group(influence.trak_scores(influence.align(train, index.ids), gen.features, b.lam)["trak"])
        clock.charge(["dtrak"], t1 + t2 + time.perf_counter() - t)
    return out, prov


def _loo(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, ids: list[str], props: list[str], method: str,
         seeds: list[int], log: Log) -> tuple[dict[str, np.ndarray], float]:
    """v(N) − v(N∖{i}) per property, each utility the mean over ``seeds`` of ``method``; and the seconds
    its utilities cost as first measured (cached ones included: LOO pays for its coalitions)."""
    full = make_coalition(ids, "full", 0)
    without = [make_coalition([c for c in ids if c != i], "loo", -3) for i in ids]
    store.upsert("coalitions", [{"coalition_key": c.key, "members": list(c.members), "size": c.size, "kind": c.kind,
                                 "plan_index": c.plan_index} for c in [full, *without]])

    cost = 0.0

    def utility(c):
        nonlocal cost
        outs = [measure_utility(cfg, layout, store, c, log, method=method, seed=s) for s in seeds]
        cost += sum(o.cost_s for o in outs)
        return {p: float(np.mean([o.utilities[p] for o in outs])) for p in props}

    vn, minus = utility(full), [utility(c) for c in without]
    return {p: heuristics.leave_one_out(vn[p], [m[p] for m in minus]) for p in props}, cost


@dataclass
class _Inputs:
    """What the model-free baselines read: contributors, their images with ids, θ*'s samples, instruments."""

    ids: list[str]
    props: list[str]
    counts: dict[str, int]
    index: ImageIndex
    x: torch.Tensor
    image_ids: list[str]
    generated: torch.Tensor
    gen_ids: list[str]
    ctx: object
    instrument: str | None


def _inputs(cfg: PipelineConfig, layout: RunLayout) -> _Inputs:
    counts = {c["contributor"]: int(c["n_images"]) for c in read_contributors(layout)["contributors"]}
    x, image_ids = _train_rows(layout, contributor_ids(layout))
    generated = load_image_set(layout.full_model_images_dir).float()
    return _Inputs(contributor_ids(layout), list(cfg.valuation.properties), counts, ImageIndex.from_counts(counts), x,
                   image_ids, generated, [f"generated/{k}" for k in range(len(generated))],
                   property_context(cfg, layout), instrument_description(layout))


def _encoder(cfg: PipelineConfig, d: _Inputs):
    """Feature similarity's embedding and how to name it: a local vision model folder (its path and the
    hash of its files) when ``baselines.encoder`` is set, else the instrument classifier's features."""
    if cfg.baselines.encoder:
        from attribution_pipeline.properties.vision import load_vision_encoder
        from attribution_pipeline.storage.artifacts import hash_folder

        path = str(cfg.baselines.encoder)
        return (lambda im: load_vision_encoder(path)(im)), f"encoder {path} ({hash_folder(Path(path))[0][:16]})"
    return (lambda im: similarity.embedding_features(d.ctx.classifier, im)), "instrument classifier features"


def _model_free(cfg: PipelineConfig, layout: RunLayout, wanted: list[str], d: _Inputs, put, skipped: dict) -> None:
    """Size share, pixel and feature similarity, own confidence, own property: ``put(method, values, s, prov)``."""
    t, props = time.perf_counter(), d.props
    if "size_share" in wanted:
        put("size_share", {p: heuristics.size_share(list(d.counts.values())) for p in props}, time.perf_counter() - t, {})
    encoder, described = _encoder(cfg, d)
    for kind, feats_of in (("pixel", similarity.pixel_features), ("feature", encoder)):
        names = [f"{kind}_sim_mean", f"{kind}_sim_max"]
        if set(names) & set(wanted):
            t = time.perf_counter()
            mm = aggregate.mean_and_max(d.index, d.image_ids, similarity.cosine_matrix(feats_of(d.generated), feats_of(d.x)))
            for h, name in zip(("mean", "max"), names):
                if name in wanted:
                    put(name, {p: mm[h] for p in props}, time.perf_counter() - t,
                        {"features": "pixels" if kind == "pixel" else described, "instrument": d.instrument,
                         "aggregation": h, "generated": content_hash(layout.full_model_images_dir)})
    if {"own_confidence_mean", "own_confidence_max"} & set(wanted):
        t = time.perf_counter()
        conf = heuristics.own_confidence(d.ctx.classifier, d.x)
        for h in ("mean", "max"):
            if f"own_confidence_{h}" in wanted:
                put(f"own_confidence_{h}", {p: aggregate.by_contributor(d.index, d.image_ids, conf, h) for p in props},
                    time.perf_counter() - t, {"instrument": d.instrument, "aggregation": h})
    if "own_property" in wanted:
        t = time.perf_counter()
        owners = np.array(d.index.owner_of(d.image_ids))
        by_c = {c: d.x[torch.from_numpy(np.flatnonzero(owners == c))] for c in d.ids}
        try:
            put("own_property", heuristics.own_property(lambda im: score(cfg, layout, im), by_c, props),
                time.perf_counter() - t, {"instrument": d.instrument})
        except ValueError as exc:  # e.g. a property undefined on one contributor's images
            skipped["own_property"] = str(exc).splitlines()[0]


def compute_baselines(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = quiet,
                      methods: list[str] | None = None) -> BaselineOutcome:
    """Every method of ``methods`` (default ``cfg.baselines.methods``) for every property; rows upserted."""
    wanted = list(methods or cfg.baselines.methods)
    if not is_complete(layout.full_model_images_dir):
        measure_full_model(cfg, layout, store, log)
    basis = content_hash(layout.full_model_dir)
    d = _inputs(cfg, layout)
    clock, skipped, values, prov = _Clock(), {}, {}, {}

    def put(method, value_by_prop, seconds, provenance):
        values[method] = value_by_prop
        clock.charge([method], seconds)
        prov[method] = provenance

    _model_free(cfg, layout, wanted, d, put, skipped)
    grads = [m for m in wanted if m in GRADIENT]
    family = get_backend(cfg).family
    if grads and family != "ddpm":
        skipped.update({m: f"the gradient family needs pixel-space images (model.family 'ddpm'), not {family!r}"
                        for m in grads})
    elif grads:
        g_values, g_prov = _gradient_family(cfg, layout, grads, d.x, d.image_ids, d.generated, d.gen_ids, d.index,
                                            clock, log)
        for m in grads:
            values[m], prov[m] = {p: g_values[m] for p in d.props}, g_prov
    for name, method, seeds in (("loo_sft", cfg.valuation.method, cfg.utility_seeds()),
                                ("loo_retrain", "retrain",
                                 cfg.evaluation_seeds("counterfactual")[:cfg.baselines.loo_retrain_seeds])):
        if name in wanted:
            loo, seconds = _loo(cfg, layout, store, d.ids, d.props, method, seeds, log)
            put(name, loo, seconds, {"utility_method": method, "seeds": seeds})
    rows = _rows(values, clock.costs, prov, d.ids, d.props, basis)
    store.upsert("attributions", rows)
    for m, why in skipped.items():
        log(f"baselines: {m} skipped: {why}")
    return BaselineOutcome(rows, values, dict(clock.costs), skipped, basis)


def _rows(values: dict, costs: dict, prov: dict, ids: list[str], props: list[str], basis: str) -> list[dict]:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = []
    for method, by_prop in values.items():
        for p in props:
            v = np.asarray(by_prop[p], dtype=float)
            order = np.argsort(-v, kind="stable")
            rank = np.empty(len(v), dtype=int)
            rank[order] = np.arange(1, len(v) + 1)
            rows += [{"basis": basis, "method": method, "family": family_of(method), "property": p, "contributor": c,
                      "value": float(v[k]), "rank": int(rank[k]), "cost_s": float(costs.get(method, 0.0)),
                      "provenance": json.dumps(prov.get(method, {}), sort_keys=True), "computed_at": now}
                     for k, c in enumerate(ids)]
    return rows


def read_baselines(store: ResultStore, basis: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """method -> property -> {contributor: value} of the latest baselines (of ``basis`` if given)."""
    where, params = ("WHERE basis = ?", [basis]) if basis else ("", [])
    df = store.query(f"SELECT method, property, contributor, value FROM attributions {where}", params)
    out: dict = {}
    for r in df.iter_rows(named=True):
        out.setdefault(r["method"], {}).setdefault(r["property"], {})[r["contributor"]] = r["value"]
    return out
