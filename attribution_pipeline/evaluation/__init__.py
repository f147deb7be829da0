"""How good an attribution is, measured against retraining (pure numpy; no torch, no Dagster).

- ``lds``: the linear datamodeling score of held-out coalitions and its test–retest ceiling.
- ``counterfactual``: which contributors to remove (or keep) by an attribution, and the relative
  change of a property after retraining without them.
"""

from attribution_pipeline.evaluation.counterfactual import counterfactual_sets, random_removals, relative_change
from attribution_pipeline.evaluation.lds import LDSResult, draw_test_coalitions, lds_score, spearman

__all__ = ["LDSResult", "draw_test_coalitions", "lds_score", "spearman", "counterfactual_sets", "random_removals", "relative_change"]
