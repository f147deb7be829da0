"""The coalition plan, the per-coalition assets (partitioned by coalition), v(∅) and θ*'s own
properties.

Fine-tuning, generation and scoring of a coalition run in one step that emits the three assets:
a Dagster step per asset would pay the torch import three times for seconds of work. A run may
carry several coalitions (a partition range, at most ``valuation.coalitions_per_run``); the step
loops over them and attaches each partition's own metadata.
"""

import os
import socket

import dagster as dg

from attribution_pipeline import stages
from attribution_pipeline.defs.jobs import BASE_GROUP, COALITIONS_GROUP, GPU_POOL
from attribution_pipeline.defs.model_assets import contributors, full_model, property_reference, pruned_base_model
from attribution_pipeline.defs.partitions import coalition_partitions
from attribution_pipeline.defs.resources import PipelineResource


# after the pruned base: under the incremental policy the plan grows from the previous one only
# when the base was kept (stages/lineage.py), and it records the base it was made with
@dg.asset(group_name=BASE_GROUP, deps=[contributors, pruned_base_model], code_version="1", kinds={"duckdb"})
def coalition_plan(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The coalitions to evaluate: the full coalition plus the first ``valuation.budget`` draws of a
    seeded, prefix-stable design (``valuation.design``). Registers one coalition partition per distinct
    coalition (a draw the paper's kernel design repeats is one partition; growing
    the budget only adds partitions) and writes ``plan.json``, which the head indexes into the
    ``coalitions`` table (``storage/index.py``)."""
    plan = stages.plan_coalitions(pipeline.config(), pipeline.layout())
    existing = set(context.instance.get_dynamic_partitions(coalition_partitions.name))
    new_keys = list(dict.fromkeys(c.key for c in plan.coalitions if c.key not in existing))
    if new_keys:
        context.instance.add_dynamic_partitions(coalition_partitions.name, new_keys)
    sizes = [c.size for c in plan.coalitions]
    return dg.MaterializeResult(
        metadata={"n_coalitions": len(plan.coalitions), "budget": plan.budget, "seed": plan.seed,
                  "n_contributors": len(plan.contributors), "new_partitions": len(new_keys),
                  "mean_size": round(sum(sizes) / len(sizes), 2), "design": plan.design},
        data_version=dg.DataVersion(plan.content_hash),
    )


def _partition_metadata(context, outs: list, method: str, n_fitted: int) -> None:
    """Each partition's own metadata on the three coalition assets; seconds are this run's work
    (0 for a cached step), ``cached`` says which steps were read from cache. ``outs``: the method's
    seeds (the first ``n_fitted``, whose mean the round fits), then the coalition's replicates."""
    out, key = outs[0], outs[0].coalition.key
    context.add_asset_metadata({"members": ", ".join(out.coalition.members), "size": out.coalition.size,
                                "method": method, "seeds": ", ".join(str(o.extra["seed"]) for o in outs),
                                "content_hash": out.checkpoint.content_hash,
                                "trained": sum(not o.checkpoint.skipped for o in outs),
                                "models": len(outs), "replicates": len(outs) - n_fitted,
                                "finetune_s": round(sum(o.checkpoint.elapsed_s for o in outs), 3),
                                "skipped_up_to_date": all(o.checkpoint.skipped for o in outs),
                                # where it ran: Ray sets CUDA_VISIBLE_DEVICES to the GPU it placed the run on
                                "worker": f"{socket.gethostname()}:{os.getpid()}",
                                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")},
                               asset_key="coalition_checkpoint", partition_key=key)
    context.add_asset_metadata({"n_images": out.images.metadata["n_images"], "content_hash": out.images.content_hash,
                                "generated": sum(not o.images.skipped for o in outs),
                                "generate_s": round(sum(o.images.elapsed_s for o in outs), 3),
                                "grid": dg.MetadataValue.path(out.images.metadata["grid"]), "method": method},
                               asset_key="coalition_images", partition_key=key)
    fitted = outs[:n_fitted]
    context.add_asset_metadata({**{p: float(sum(o.utilities[p] for o in fitted) / len(fitted)) for p in out.utilities},
                                "method": method, "score_s": round(sum(o.extra["score_s"] for o in outs), 3),
                                "work_s": round(sum(o.work_s for o in outs), 3)},
                               asset_key="coalition_utilities", partition_key=key)


def build_coalition_outcomes(coalitions_per_run: int) -> dg.AssetsDefinition:
    """The per-coalition multi-asset; a backfill from the UI runs ``coalitions_per_run`` per run."""

    @dg.multi_asset(
        specs=[
            dg.AssetSpec("coalition_checkpoint", group_name=COALITIONS_GROUP, partitions_def=coalition_partitions,
                         deps=[pruned_base_model, coalition_plan, contributors], code_version="1",
                         description="The coalition's model by the utility method (sFT: the pruned base "
                                     "fine-tuned k steps on the coalition's data only).", kinds={"pytorch"}),
            dg.AssetSpec("coalition_images", group_name=COALITIONS_GROUP, partitions_def=coalition_partitions,
                         deps=["coalition_checkpoint"], code_version="1",
                         description="Images generated by the coalition's model with the shared noise seeds."),
            dg.AssetSpec("coalition_utilities", group_name=COALITIONS_GROUP, partitions_def=coalition_partitions,
                         deps=["coalition_images", property_reference], code_version="1",
                         description="Each property of the coalition's image set (rows of `utilities`).",
                         kinds={"duckdb"}),
        ],
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=max(1, coalitions_per_run)),
        pool=GPU_POOL,  # with the engine's queue: no more coalition runs in flight than workers (GPUs)
    )
    def coalition_outcomes(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        """Train (by the utility method), generate and score every coalition partition of this run.
        Utilities already present for the method and seed are read from cache, not recomputed."""
        cfg, layout = pipeline.config(), pipeline.layout()
        method = cfg.valuation.method
        keys = list(context.partition_keys)
        coalitions = stages.planned_coalitions(layout, keys)
        for i, key in enumerate(keys, 1):  # store None: a worker leaves its rows in the outbox, never in DuckDB
            outs = stages.measure_utility_all_seeds(cfg, layout, None, coalitions[key], context.log.info)
            context.log.info(
                f"[{i}/{len(keys)}] coalition {key} (size {coalitions[key].size}, {method}): "
                + ", ".join(f"{p}={v:.4g}" for p, v in outs[0].utilities.items())
                + f" in {sum(o.elapsed_s for o in outs):.1f}s" + (" (cached)" if outs[0].checkpoint.skipped else ""))
            _partition_metadata(context, outs, method, len(cfg.utility_seeds(method)))
        for name in ("coalition_checkpoint", "coalition_images", "coalition_utilities"):
            yield dg.MaterializeResult(asset_key=name)

    return coalition_outcomes


@dg.asset(group_name=BASE_GROUP, deps=[property_reference, contributors], code_version="1", kinds={"duckdb"})
def empty_coalition_utilities(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """v(∅): the properties of images from the untrained (random-init) model, same noise seeds."""
    out = stages.measure_empty_coalition(pipeline.config(), pipeline.layout(), None, context.log.info)
    return dg.MaterializeResult(
        metadata={**{p: float(v) for p, v in out.utilities.items()}, "elapsed_s": round(out.elapsed_s, 3)},
        data_version=dg.DataVersion(stages.utilities_version(out.utilities)),
    )


@dg.asset(group_name=BASE_GROUP, deps=[full_model, property_reference], code_version="1", kinds={"duckdb"})
def full_model_utilities(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The properties of the full model θ* itself (method ``full_model``), beside the sFT v(N)."""
    out = stages.measure_full_model(pipeline.config(), pipeline.layout(), None, context.log.info)
    return dg.MaterializeResult(
        metadata={**{p: float(v) for p, v in out.utilities.items()}, "elapsed_s": round(out.elapsed_s, 3),
                  "recognized_fraction": out.extra.get("recognized_fraction", float("nan"))},
        data_version=dg.DataVersion(stages.utilities_version(out.utilities)),
    )
