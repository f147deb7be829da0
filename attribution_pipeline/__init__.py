"""Shapley valuation of the data contributors of diffusion models by sparsified fine-tuning."""

import os

# OpenMP threads that spin while waiting make torch collapse when another process shares the
# cores (measured on 2 cores: 6.3 s per training step instead of 0.06-0.18 s). Passive waiting
# costs little when the machine is idle. It must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
