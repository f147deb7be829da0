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


def _gradient_family(cfg: PipelineConfig, layout: RunLayout, wanted: list[str], x, image_ids, generated, gen_ids,
                     index: ImageIndex, clock: _Clock, log: Log) -> tuple[dict, dict]:
    b = cfg.baselines
    full_hash = content_hash(layout.full_model_dir)
    model = get_backend(cfg).load(layout.full_model_dir)
    sched = noise_scheduler(cfg.model)
    settings = {"n_timesteps": b.n_timesteps, "dim": b.dim, "seed": b.seed}
    data_hash = read_contributors(layout)["content_hash"]
    gen_hash = content_hash(layout.full_model_images_dir)
    kw = dict(n_timesteps=b.n_timesteps, dim=b.dim, seed=b.seed, batch_size=b.batch_size)

    def feats(name, output, images, ids_, inputs_hash):
        sig = signature("gradients", name, settings, full_hash, inputs_hash)
        t = time.perf_counter()
        f = _cached_features(layout, name, sig, lambda: gradients.gradient_features(
            model, sched, images, ids_, output=output, progress=_progress(log, f"{name} gradients"), **kw), log)
        return f, time.perf_counter() - t

    out, prov = {}, {"timesteps": b.n_timesteps, "projection": "count-sketch", "dim": b.dim, "projection_seed": b.seed,
                     "lambda": b.lam, "aggregation": b.group, "theta": full_hash}
    loss_users = [m for m in wanted if m in ("grad_sim_mean", "grad_sim_max", "trak", "relative_if", "renormalized_if",
                                             "journey_trak")]
    if loss_users:
        (train, t1), (gen, t2) = feats("train_loss", "loss", x, image_ids, data_hash), \
            feats("generated_loss", "loss", generated, gen_ids, gen_hash)
        clock.charge(loss_users, t1)
        phi = influence.align(train, index.ids)
        t = time.perf_counter()
        if {"trak", "relative_if", "renormalized_if"} & set(wanted):
            scores = influence.trak_scores(phi, gen.features, b.lam)
            for m in ("trak", "relative_if", "renormalized_if"):
                out[m] = aggregate.by_contributor(index, index.ids, scores[m], b.group)
            clock.charge([m for m in ("trak", "relative_if", "renormalized_if") if m in wanted],
                         t2 + time.perf_counter() - t)
        t = time.perf_counter()
        if {"grad_sim_mean", "grad_sim_max"} & set(wanted):
            mm = aggregate.mean_and_max(index, index.ids, similarity.cosine_matrix(gen.features, phi))
            out["grad_sim_mean"], out["grad_sim_max"] = mm["mean"], mm["max"]
            clock.charge([m for m in ("grad_sim_mean", "grad_sim_max") if m in wanted], t2 + time.perf_counter() - t)
        if "journey_trak" in wanted:
            from attribution_pipeline.models.sampling import initial_noise

            s = cfg.sampling
            sig = signature("gradients", "journey", settings, b.journey_points, full_hash, s)
            t = time.perf_counter()
            noise = initial_noise(cfg.model, s.n_images, s.seed)
            j = _cached_features(layout, "generated_journey", sig, lambda: gradients.journey_features(
                model, cfg.model, sched, noise, gen_ids, ddim_steps=s.ddim_steps, n_points=b.journey_points,
                progress=_progress(log, "journey gradients"), dim=b.dim, seed=b.seed, batch_size=b.batch_size), log)
            out["journey_trak"] = aggregate.by_contributor(
                index, index.ids, influence.trak_scores(phi, j.features, b.lam)["trak"], b.group)
            clock.charge(["journey_trak"], time.perf_counter() - t)
            prov["journey_points"] = b.journey_points
    if "dtrak" in wanted:
        (train, t1), (gen, t2) = feats("train_output_norm", "output_norm", x, image_ids, data_hash), \
            feats("generated_output_norm", "output_norm", generated, gen_ids, gen_hash)
        t = time.perf_counter()
        scores = influence.trak_scores(influence.align(train, index.ids), gen.features, b.lam)["trak"]
        out["dtrak"] = aggregate.by_contributor(index, index.ids, scores, b.group)
        clock.charge(["dtrak"], t1 + t2 + time.perf_counter() - t)
    return out, prov


def _loo(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, ids: list[str], props: list[str], method: str,
         seeds: list[int], log: Log) -> dict[str, np.ndarray]:
    """v(N) − v(N∖{i}) per property, each utility the mean over ``seeds`` of ``method``."""
    full = make_coalition(ids, "full", 0)
    without = [make_coalition([c for c in ids if c != i], "loo", -3) for i in ids]
    store.upsert("coalitions", [{"coalition_key": c.key, "members": list(c.members), "size": c.size, "kind": c.kind,
                                 "plan_index": c.plan_index} for c in [full, *without]])

    def utility(c):
        outs = [measure_utility(cfg, layout, store, c, log, method=method, seed=s) for s in seeds]
        return {p: float(np.mean([o.utilities[p] for o in outs])) for p in props}

    vn, minus = utility(full), [utility(c) for c in without]
    return {p: heuristics.leave_one_out(vn[p], [m[p] for m in minus]) for p in props}


def compute_baselines(cfg: PipelineConfig, layout: RunLayout, store: ResultStore, log: Log = quiet,
                      methods: list[str] | None = None) -> BaselineOutcome:
    """Every method of ``methods`` (default ``cfg.baselines.methods``) for every property; rows upserted."""
    wanted = list(methods or cfg.baselines.methods)
    ids = contributor_ids(layout)
    props = list(cfg.valuation.properties)
    counts = {c["contributor"]: int(c["n_images"]) for c in read_contributors(layout)["contributors"]}
    index = ImageIndex.from_counts(counts)
    if not is_complete(layout.full_model_images_dir):
        measure_full_model(cfg, layout, store, log)
    basis = content_hash(layout.full_model_dir)
    clock, skipped, values = _Clock(), {}, {}
    x, image_ids = _train_rows(layout, ids)
    generated = load_image_set(layout.full_model_images_dir).float()
    gen_ids = [f"generated/{k}" for k in range(len(generated))]
    ctx = property_context(cfg, layout)
    instrument = instrument_description(layout)
    prov = {"size_share": {}, "own_property": {"instrument": instrument}}

    def put(method, value_by_prop, seconds, provenance):
        values[method] = value_by_prop
        clock.charge([method], seconds)
        prov[method] = provenance

    t = time.perf_counter()
    if "size_share" in wanted:
        put("size_share", {p: heuristics.size_share(list(counts.values())) for p in props}, time.perf_counter() - t, {})
    for kind, feats_of in (("pixel", similarity.pixel_features),
                           ("feature", lambda im: similarity.embedding_features(ctx.classifier, im))):
        names = [f"{kind}_sim_mean", f"{kind}_sim_max"]
        if set(names) & set(wanted):
            t = time.perf_counter()
            mm = aggregate.mean_and_max(index, image_ids, similarity.cosine_matrix(feats_of(generated), feats_of(x)))
            seconds = time.perf_counter() - t
            for h, name in zip(("mean", "max"), names):
                if name in wanted:
                    put(name, {p: mm[h] for p in props}, seconds,
                        {"features": "pixels" if kind == "pixel" else "instrument", "instrument": instrument,
                         "aggregation": h, "generated": content_hash(layout.full_model_images_dir)})
    if {"own_confidence_mean", "own_confidence_max"} & set(wanted):
        t = time.perf_counter()
        conf = heuristics.own_confidence(ctx.classifier, x)
        seconds = time.perf_counter() - t
        for h in ("mean", "max"):
            if f"own_confidence_{h}" in wanted:
                put(f"own_confidence_{h}", {p: aggregate.by_contributor(index, image_ids, conf, h) for p in props},
                    seconds, {"instrument": instrument, "aggregation": h})
    if "own_property" in wanted:
        t = time.perf_counter()
        owners = np.array(index.owner_of(image_ids))
        by_c = {c: x[torch.from_numpy(np.flatnonzero(owners == c))] for c in ids}
        try:
            put("own_property", heuristics.own_property(lambda im: score(cfg, layout, im), by_c, props),
                time.perf_counter() - t, {"instrument": instrument})
        except ValueError as exc:  # e.g. a property undefined on one contributor's images
            skipped["own_property"] = str(exc).splitlines()[0]
    grads = [m for m in wanted if m in GRADIENT]
    if grads:
        if get_backend(cfg).family != "ddpm":
            skipped.update({m: f"the gradient family needs pixel-space images (model.family 'ddpm'), "
                               f"not {get_backend(cfg).family!r}" for m in grads})
        else:
            g_values, g_prov = _gradient_family(cfg, layout, grads, x, image_ids, generated, gen_ids, index, clock, log)
            for m, v in g_values.items():
                if m in wanted:
                    values[m] = {p: v for p in props}
                    prov[m] = g_prov
    for name, method, seeds in (("loo_sft", cfg.valuation.method, cfg.utility_seeds()),
                                ("loo_retrain", "retrain", cfg.evaluation_seeds("counterfactual")[:cfg.baselines.loo_retrain_seeds])):
        if name in wanted:
            t = time.perf_counter()
            put(name, _loo(cfg, layout, store, ids, props, method, seeds, log), time.perf_counter() - t,
                {"utility_method": method, "seeds": seeds})
    rows = _rows(values, clock.costs, prov, ids, props, basis)
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
