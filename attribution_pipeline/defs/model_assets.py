"""Assets up to the pruned base: contributors → full model → pruned base, and the property reference."""


import dagster as dg

from attribution_pipeline import stages
from attribution_pipeline.defs.jobs import BASE_GROUP as GROUP, GPU_POOL
from attribution_pipeline.defs.resources import PipelineResource
from attribution_pipeline.storage.index import contributor_rows


@dg.asset(group_name=GROUP, code_version="1", kinds={"python", "duckdb"})
def contributors(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Validated contributors: one folder each, images cached at the model's resolution.

    Fails before anything is written when a file or folder is bad (the error names it). Rows of the
    ``contributors`` table: duplicate images across contributors are flagged, a contributor whose
    folder is gone gets ``removed_at``. Values ``pipeline.snapshot`` when the launcher passed one.
    """
    cfg, layout = pipeline.config(), pipeline.layout()
    manifest = stages.prepare_contributors(cfg, layout, context.log.info, snapshot=pipeline.snapshot)
    rows = contributor_rows(manifest)  # DuckDB gets them from the manifest, by the head's ingest
    table = "\n".join(f"| {r['contributor']} | {r['n_images']} | `{r['data_hash']}` | "
                      f"{', '.join(r['duplicates_with']) or ''} |" for r in rows)
    return dg.MaterializeResult(
        metadata={
            "n_contributors": len(rows),
            "n_images": sum(r["n_images"] for r in rows),
            "contributors_dir": dg.MetadataValue.path(cfg.contributors_dir),
            "contributors": dg.MetadataValue.md("| contributor | images | hash | duplicates with |\n|---|---|---|---|\n"
                                                + table),
        },
        data_version=dg.DataVersion(manifest["content_hash"]),
    )


@dg.asset(group_name=GROUP, deps=[contributors], code_version="1", kinds={"pytorch"})
def property_reference(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """The instruments that score a generated image set: a classifier of contributors and the
    real images' feature statistics (FID reference)."""
    r = stages.build_property_reference(pipeline.config(), pipeline.layout(), context.log.info)
    return _result(r, pipeline.layout().reference_dir)


@dg.asset(group_name=GROUP, deps=[contributors], code_version="1", kinds={"pytorch"}, pool=GPU_POOL)
def full_model(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """θ*: the diffusion model trained on every contributor (EMA weights, diffusers format)."""
    r = stages.train_full_model(pipeline.config(), pipeline.layout(), context.log.info)
    return _result(r, pipeline.layout().full_model_dir)


@dg.asset(group_name=GROUP, deps=[full_model, contributors], code_version="1", kinds={"pytorch"}, pool=GPU_POOL)
def pruned_base_model(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """θ̃*: θ* pruned structurally (torch-pruning) and fine-tuned on all data: the base every
    coalition is fine-tuned from."""
    r = stages.prune_base_model(pipeline.config(), pipeline.layout(), context.log.info)
    return _result(r, pipeline.layout().pruned_base_dir)


def _result(r: stages.StageResult, path) -> dg.MaterializeResult:
    meta = {k: v for k, v in r.metadata.items() if v is not None}
    meta.update({"path": dg.MetadataValue.path(str(path)), "skipped_up_to_date": r.skipped,
                 "elapsed_s": round(r.elapsed_s, 3), "content_hash": r.content_hash})
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(r.content_hash))
