"""Shapley valuation of data contributors from one shared pool of evaluated coalitions.

Pure numpy/scipy (scikit-learn for the tree proxy, imported only when used); imports neither torch
nor Dagster. "Estimator" here is how the values are fitted from the pool (``ESTIMATORS``); how a
coalition's utility is measured (sft/ft/retrain) is the pipeline's "method" and is not seen here.

    from attribution_pipeline.valuation import CoalitionDesign, estimate
    design = CoalitionDesign(n_players=n, seed=0)     # paired, Shapley-kernel sizes, prefix-stable
    masks = design.take(B)                            # (B, n) bool, never ∅ or N
    res = estimate(masks, values, empty_value=v0, full_value=vN, estimator="auto", seed=0)
    res.values, res.std_errors, res.ci_low, res.ci_high, res.rank_low, res.rank_high, res.p_top
"""

from attribution_pipeline.valuation.design import DESIGNS, CoalitionDesign

# Bumped whenever what an estimator returns for the same pool changes (values, intervals, the choice of
# ``auto``): a valuation round is keyed on it, so an upgrade refits rounds instead of showing stale ones.
# 2: stratified bootstrap, unbiased ``auto``, what intervals cover.
# 3: utility noise (replicates) in every interval, Rao-Wu finite-population bootstrap, regression-msr
#    exact on complete pair classes and resampled within classes.
# 4: the linear proxy (and the tree proxy's linear part) blends in diluted memberships 1{i∈S}/|S|;
#    20 cross-fit folds (this release).
ESTIMATORS_VERSION = 4
from attribution_pipeline.valuation.estimate import applicable_estimators, estimate, select_estimator
from attribution_pipeline.valuation.registry import ESTIMATORS
from attribution_pipeline.valuation.result import ValuationResult

__all__ = [
    "DESIGNS",
    "ESTIMATORS",
    "ESTIMATORS_VERSION",
    "CoalitionDesign",
    "ValuationResult",
    "applicable_estimators",
    "estimate",
    "select_estimator",
]
