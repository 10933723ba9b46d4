"""Data parallelism across the processes of ``accelerate launch`` (or ``torchrun``).

One process (no launcher) is the default and needs nothing from here: every helper is then the
identity, so the code paths of a single run are unchanged. When a launcher started N > 1
processes (``WORLD_SIZE`` > 1), :func:`process_state` sets up accelerate's process group
(``PartialState``: NCCL between GPUs, gloo between CPU processes) and:

* :func:`gather_rows` puts per-row tensors that each rank computed on its rows ``r::N`` of a
  global batch back into the batch order, with autograd: the loss is computed on the whole
  batch on every rank, exactly as one process would, and its backward sends each rank the
  gradient of its own rows;
* :func:`average_gradients` averages parameter gradients over the ranks (the data-parallel step);
* :func:`run_sharded` evaluates rows ``r::N`` on rank r and merges the per-row results into the
  full tensor in the original order (sharded memorization measurement).

accelerate 1.15 on CPU: ``accelerate launch --cpu --num_processes 2`` starts ONE process unless
an MPI hostfile is given; ``accelerate launch --multi_gpu --num_processes 2`` (torchrun under the
hood) starts two, and on a machine without CUDA they talk over gloo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Gradient all-reduce bucket: bounds the extra memory of :func:`average_gradients`.
BUCKET_ELEMENTS = 1 << 25


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_rank() -> int:
    """This process's global rank (``RANK``; 0 without a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """True on rank 0 (the process that prints and writes outputs), and without a launcher."""
    return process_rank() == 0


def local_rank() -> int | None:
    """This process's rank on its machine (``LOCAL_RANK``) under a multi-process launch."""
    if launched_processes() < 2 or "LOCAL_RANK" not in os.environ:
        return None
    try:
        return int(os.environ["LOCAL_RANK"])
    except ValueError:
        return None


def process_state(device: torch.device | str | None = None) -> Any | None:
    """accelerate's ``PartialState`` under a multi-process launch (None for one process).

    The first call initializes the process group: gloo when ``device`` is the CPU (or there is
    no CUDA), NCCL otherwise. Later calls return the same state.
    """
    if launched_processes() < 2:
        return None
    import torch
    from accelerate import PartialState

    cpu = (
        not torch.cuda.is_available()
        or (device is not None and torch.device(device).type == "cpu")
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    state = PartialState(cpu=cpu)
    if state.num_processes < 2:  # pragma: no cover - a launcher accelerate does not recognize
        raise RuntimeError(
            f"WORLD_SIZE={launched_processes()} but accelerate set up {state.num_processes} "
            "process; launch with `accelerate launch --multi_gpu --num_processes N` or torchrun"
        )
    return state


def _comm_device(tensor_device: torch.device) -> torch.device:
    """Where a collective's tensors must live: CUDA for NCCL, else where they are."""
    import torch
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend()) and tensor_device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor_device


def shard_rows(n: int, rank: int, size: int) -> torch.Tensor:
    """[⌈(n − rank)/size⌉] the row indices ``rank::size`` of ``range(n)`` (rank r's shard)."""
    import torch

    return torch.arange(rank, n, size)


def gather_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """[n, ...] the global batch from this rank's rows ``rank::N`` ``x`` [n_r, ...] (autograd).

    Identity for one process. Every rank must call it in the same order.

    The collective is torch's autograd-aware ``torch.distributed.nn.functional.all_gather``: its
    backward sends rank r the sum over ranks of the upstream gradient at r's rows (a
    reduce-scatter; all-to-all + sum on gloo). Every rank computes the same loss from the
    gathered tensor, so that is N times the single-process gradient; :func:`average_gradients`
    divides by N. Shards differ in length by at most one row, and all_gather needs equal shapes,
    so each is zero-padded to ``ceil(n / N)`` rows (the padding rows are cut off again and get no
    gradient).
    """
    if launched_processes() < 2:
        return x
    import torch
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    size = dist.get_world_size()
    per = -(-n // size)
    local = x.to(_comm_device(x.device))
    if len(local) < per:
        local = torch.cat([local, local.new_zeros((per - len(local), *x.shape[1:]))])
    parts = all_gather(local)
    # parts[r][i] is global row i·size + r
    full = torch.stack(parts, dim=1).reshape(per * size, *x.shape[1:])[:n]
    return full.to(x.device)


def broadcast_parameters(params: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (no-op for one process)."""
    if launched_processes() < 2:
        return
    import torch
    import torch.distributed as dist

    for p in params:
        dev = _comm_device(p.device)
        buf = p.detach().to(dev).clone()
        dist.broadcast(buf, src=0)
        with torch.no_grad():
            p.copy_(buf.to(p.device))


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks (no-op for one process).

    A parameter without a gradient counts as zeros. Gradients travel in flat buckets of at most
    :data:`BUCKET_ELEMENTS` elements per dtype.
    """
    if launched_processes() < 2:
        return
    import torch
    import torch.distributed as dist

    size = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        count = 0
        for p in [*group, None]:
            if p is not None and (not bucket or count + p.numel() <= BUCKET_ELEMENTS):
                bucket.append(p)
                count += p.numel()
                continue
            if bucket:
                dev = _comm_device(bucket[0].grad.device)
                flat = torch.cat([q.grad.reshape(-1).to(dev) for q in bucket])
                dist.all_reduce(flat)
                flat /= size
                offset = 0
                for q in bucket:
                    q.grad.copy_(flat[offset : offset + q.numel()].view_as(q.grad))
                    offset += q.numel()
            bucket, count = ([p], p.numel()) if p is not None else ([], 0)


def run_sharded(
    fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
    n: int,
    device: torch.device | str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``fn(rows)`` over all ``n`` rows, split as rows ``r::N`` across the ranks and merged.

    ``fn`` gets a [n_r] index tensor and returns one [n_r] tensor (or a tuple of them) per row;
    the result is the [n] tensor(s) in the original row order on every rank, on the CPU. One
    process: ``fn(arange(n))`` directly.
    """
    import torch

    if launched_processes() < 2:
        return fn(torch.arange(n))
    import torch.distributed as dist

    process_state(device)
    rows = shard_rows(n, dist.get_rank(), dist.get_world_size())
    out = fn(rows)
    single = isinstance(out, torch.Tensor)
    merged = []
    for part in (out,) if single else out:
        part = part.detach()
        dtype = part.dtype
        work = torch.float64 if dtype.is_floating_point else torch.int64  # exact sums
        full = torch.zeros(n, dtype=work, device=_comm_device(part.device))
        full[rows.to(full.device)] = part.to(full.device, work)
        dist.all_reduce(full)  # every row is filled by exactly one rank; the rest add zeros
        merged.append(full.cpu().to(dtype))
    return merged[0] if single else tuple(merged)


__all__ = [
    "BUCKET_ELEMENTS",
    "average_gradients",
    "broadcast_parameters",
    "gather_rows",
    "is_main_process",
    "launched_processes",
    "local_rank",
    "process_rank",
    "process_state",
    "run_sharded",
    "shard_rows",
]
