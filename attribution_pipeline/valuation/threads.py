"""One thread for the numerical libraries while an estimate runs.

The estimators do many small matrix products (one Gram matrix per bootstrap resample) and small tree
fits. On a machine shared with other work, multi-threaded OpenBLAS and OpenMP spin-wait for cores
that are busy: we measured a 200-resample KernelSHAP bootstrap at n = 200, B = 2000 taking 22 s with
two BLAS threads and 0.8 s with one. These problems are too small to gain from threads anyway.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def single_threaded():
    """Limit BLAS and OpenMP pools to one thread inside the block (threadpoolctl, from scikit-learn)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
