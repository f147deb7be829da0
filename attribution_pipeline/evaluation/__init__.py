"""How good an attribution is, measured against retraining (pure numpy; no torch, no Dagster).

- ``lds``: the linear datamodeling score of held-out coalitions with its bootstrap interval, the range
  random attributions reach on the same test set, the oracle ceiling, paired differences of two
  attributions, and the within-size Spearman of two utility methods.
- ``simulate``: known-answer games for the above (tests and ``benchmarks/lds_intervals.py``).
- ``counterfactual``: which contributors to remove (or keep) by an attribution, and the relative
  change of a property after retraining without them.
"""

from attribution_pipeline.evaluation.counterfactual import counterfactual_sets, random_removals, relative_change
from attribution_pipeline.evaluation.lds import (
    LDSDifference, LDSResult, WithinSize, draw_test_coalitions, lds_difference, lds_score, oracle_ceiling,
    random_range, retest_agreement, spearman, within_size_spearman,
)

__all__ = ["LDSDifference", "LDSResult", "WithinSize", "draw_test_coalitions", "lds_difference", "lds_score",
           "oracle_ceiling", "random_range", "retest_agreement", "spearman", "within_size_spearman",
           "counterfactual_sets", "random_removals", "relative_change"]
