"""Gradients of a batch computed in equal slices whose sum does not depend on who computed them.

Why: the base model (θ* and the pruned base) trains in one run while nothing else can run, so on a
CPU machine one core would idle through the longest serial part of a valuation. Torch's own threads
do not help at these model sizes (``unet.pick_device``). Splitting each batch into ``shards`` slices
lets ``processes`` CPU processes compute them at once, and the numbers stay the same for every process
count because the slice gradients are always formed the same way and summed in slice order:

    g = g_0 + g_1 + … + g_{S−1},   g_s = ∇ (mse(slice s) / S)

In one process the slices run one after another; in P processes process r computes slices
r, r+P, …, the flattened slice gradients are all-gathered (torch.distributed, gloo on the loopback
interface) and every process sums them in the same order, then takes the same optimizer step. Only
process 0 keeps what it trains; the others are copies that exit when the loop ends.
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

PROCESSES_ENV = "ATTRIBUTION_PIPELINE_PROCESSES"  # how many CPU processes a training run may use
TIMEOUT = timedelta(minutes=10)  # a peer that does not answer a collective in this time fails the run


def check(batch_size: int, shards: int) -> None:
    if shards < 1 or batch_size % shards:
        raise ValueError(f"shards must be >= 1 and divide batch_size ({batch_size}), got {shards}")


def processes_allowed() -> int:
    """The processes a training run may use: ``$ATTRIBUTION_PIPELINE_PROCESSES`` (set by the engine
    for the base run, which runs alone), else 1."""
    try:
        return max(1, int(os.environ.get(PROCESSES_ENV, "1")))
    except ValueError:
        return 1


def usable_processes(shards: int, processes: int) -> int:
    """The largest count ≤ ``processes`` that divides ``shards`` (each process gets as many slices)."""
    n = max(1, min(processes, shards))
    while shards % n:
        n -= 1
    return n


class Slices:
    """One member of a slice group: ``gradients`` sets ``p.grad`` of ``params`` to the ordered sum
    of all slices' gradients and returns the summed loss."""

    def __init__(self, shards: int, rank: int = 0, world: int = 1):
        self.shards, self.rank, self.world = shards, rank, world

    def gradients(self, params: Sequence[torch.nn.Parameter], slice_loss: Callable[[slice], torch.Tensor],
                  batch_size: int) -> float:
        m = batch_size // self.shards
        rows, used = [], None
        for s in range(self.rank, self.shards, self.world):
            for p in params:
                p.grad = None
            loss = slice_loss(slice(s * m, (s + 1) * m)) / self.shards
            loss.backward()
            used = [p.grad is not None for p in params]
            rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                   for p in params] + [loss.detach().reshape(1).to(params[0].device)]))
        local = torch.stack(rows)
        if self.world > 1:
            gathered = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(gathered, local)
        else:
            gathered = [local]
        total = gathered[0][0].clone()
        for s in range(1, self.shards):
            total = total + gathered[s % self.world][s // self.world]
        offset = 0
        for p, has_grad in zip(params, used):
            n = p.numel()
            p.grad = total[offset:offset + n].view_as(p).clone() if has_grad else None
            offset += n
        return float(total[-1])


def _loopback() -> str:
    """The loopback interface's name for gloo (``lo`` on Linux, ``lo0`` on macOS), so that no
    process group ever binds to an outside address."""
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return "lo"


def _join(rank: int, world: int, init: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback())
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=TIMEOUT)


def _member(index: int, world: int, init: str, threads: int, train: Callable, args: tuple, kwargs: dict,
            ready) -> None:
    torch.set_num_threads(threads)
    # torch.multiprocessing hands tensors over in shared memory: train a private copy, or every
    # optimizer step would land twice on the caller's weights (the caller waits at the rendezvous)
    args, kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
    ready.put(index)
    train(*args, **kwargs, member=(index + 1, world, init))


def _await_helpers(helpers, ready, n: int) -> None:
    """Wait until every helper is about to join the rendezvous; a helper that dies first (it could
    not start, or was killed) fails the training here instead of after the rendezvous timeout. Once
    in the group, a peer that dies breaks the next collective at once (gloo: connection reset)."""
    import time

    deadline, joined = time.monotonic() + TIMEOUT.total_seconds(), 0
    while joined < n:
        while not ready.empty():
            ready.get()
            joined += 1
        if joined >= n:
            return
        dead = [p.exitcode for p in helpers.processes if p.exitcode is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"a batch-slice helper process ended before training began (exit code "
                               f"{dead[0] if dead else 'none: it did not start in time'})")
        time.sleep(0.05)


@contextmanager
def group(shards: int, member: tuple[int, int, str] | None, processes: int, train: Callable, args: tuple,
          kwargs: dict) -> Iterator[Slices]:
    """The slice group of one training loop. ``member`` = (rank, world, rendezvous) inside a helper
    process; None in the caller, which starts ``processes − 1`` helpers (spawned, so nothing of the
    caller's state but ``args``/``kwargs`` is shared) that run ``train(*args, **kwargs, member=…)``."""
    if member is not None:
        rank, world, init = member
        _join(rank, world, init)
        try:
            yield Slices(shards, rank, world)
        finally:
            dist.destroy_process_group()
        return
    world = usable_processes(shards, processes)
    if world == 1:
        yield Slices(shards)
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="ap-shards-") as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        ready = mp.get_context("spawn").SimpleQueue()
        helpers = mp.start_processes(_member, args=(world, init, torch.get_num_threads(), train, args, kwargs, ready),
                                     nprocs=world - 1, join=False, start_method="spawn")
        try:
            _await_helpers(helpers, ready, world - 1)
            _join(0, world, init)
            try:
                yield Slices(shards, 0, world)
            finally:
                dist.destroy_process_group()
            helpers.join(timeout=60)  # they end with the loop; one that fails raises here
        finally:
            for p in helpers.processes:
                if p.is_alive():
                    p.terminate()
                    p.join(5)
