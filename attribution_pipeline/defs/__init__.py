"""Dagster wiring: thin assets over the pure stages in ``attribution_pipeline.stages``."""
