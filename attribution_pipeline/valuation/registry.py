"""Every estimator ``estimate`` can run, in one list; each record lives beside its math.

To add an estimator, define its ``Estimator`` record in the module that holds its math and add it
here; ``ESTIMATORS`` (and so ``applicable_estimators``) lists them in this order.
"""

from __future__ import annotations

from attribution_pipeline.valuation.classical import EXACT, LOO, PERMUTATION
from attribution_pipeline.valuation.estimator import Estimator
from attribution_pipeline.valuation.montecarlo import BANZHAF_MSR
from attribution_pipeline.valuation.regression import KERNELSHAP, KERNELSHAP_PAPER, LEVERAGE
from attribution_pipeline.valuation.regression_msr import PROXY, REGRESSION_MSR

REGISTRY: dict[str, Estimator] = {
    e.name: e
    for e in (EXACT, KERNELSHAP, LEVERAGE, REGRESSION_MSR, PROXY, BANZHAF_MSR, LOO, PERMUTATION, KERNELSHAP_PAPER)
}
ESTIMATORS = tuple(REGISTRY)
