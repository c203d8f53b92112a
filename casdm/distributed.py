"""One trial over several processes (torchrun): the process group and the few collectives casdm
needs, kept here so the rest of casdm never touches torch.distributed directly.

Every helper is the identity (or does nothing) when no process group is initialised, so
single-process code calls them unconditionally and runs exactly as it did without them.

Sharding is contiguous: `shard(n, r, W)` is the r-th of W consecutive blocks of range(n), sizes
differing by at most one, so `all_gather_cat` of per-rank results is already in index order.

Evaluation statistics over all ranks: gathering the per-rank features with `all_gather_cat`
and computing the statistics once gives exactly the single-process numbers (what FID, IS and
precision/recall need). Moments can instead be reduced without moving the features:
`all_reduce_sum` of (n, sum_i x_i, sum_i x_i x_i^T) in float64, then mu = s1 / n and
sigma = (s2 - n mu mu^T) / (n - 1), equal to the gathered result up to rounding.
"""

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from casdm.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints and talks to Optuna and MLflow."""
        return self.rank == 0


def init_from_env(device: torch.device | str) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise a 1-process Dist.

    NCCL on CUDA, each process on GPU LOCAL_RANK (an index in `device` is ignored); gloo on the
    CPU. Idempotent: a second call returns the group already joined.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return Dist(rank=0, world_size=1, local_rank=0, device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise InputError(
                f"torchrun started process LOCAL_RANK={local_rank} but this machine has {gpus} "
                f"GPU(s); use torchrun --nproc_per_node={gpus} (at most one process per GPU)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise InputError(
            f"distributed runs support device 'cuda' (NCCL) or 'cpu' (gloo), got {device}; "
            "run on one process for this device"
        )
    if not dist.is_initialized():
        # torch._dynamo first: imported after the group exists (as building an optimizer or
        # importing torchvision does), it leaves a reference to the group that outlives
        # destroy_process_group, whose worker threads then run into interpreter shutdown and
        # abort the process (SIGABRT, "terminate called without an active exception") when
        # they release a finished collective's tensors there.
        importlib.import_module("torch._dynamo")

        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown() -> None:
    """Leave the process group, if one is initialised (at the end of a torchrun worker)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank; 0 when not distributed."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the run; 1 when not distributed."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0 (always true when not distributed)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() > 1:
        dist.barrier()


def shard(n: int, rank: int, world: int) -> range:
    """The indices of range(n) that `rank` of `world` handles: its contiguous, balanced block."""
    return range(rank * n // world, (rank + 1) * n // world)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank `rank`'s own random stream (dropout, sampler noise) from step `step` on.

    `seed` itself for rank 0 at step 0, so a single process draws what it always drew; a
    64-bit hash of (seed, rank, step) otherwise, so no two ranks share noise.
    """
    if rank == 0 and step == 0:
        return seed
    digest = hashlib.blake2b(f"casdm-rank:{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """Where a collective can read `tensor`: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (a new tensor on `tensor`'s device); `tensor` as is
    when not distributed."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().to(_comm_device(tensor), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` [n_r, ...] concatenated in rank order along dim 0, on every rank.

    Shards may differ in length (even be empty); the other dimensions must match. `tensor`
    itself when not distributed.
    """
    world = world_size()
    if world == 1:
        return tensor
    device = _comm_device(tensor)
    local = tensor.detach().to(device).contiguous()  # [n_r, ...]
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    counts = [int(size) for size in sizes]
    # all_gather moves equal shapes only: pad every shard to the longest, trim after.
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).to(
        tensor.device
    )


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank; [obj] when not distributed."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank; `obj` when not distributed."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def main_only(fn: Callable[[], T]) -> T:
    """fn() run on rank 0 alone, its (picklable) result returned on every rank.

    A failure on rank 0 is raised on every rank (an InputError as an InputError), so no rank
    waits for a result that never comes.
    """
    if world_size() == 1:
        return fn()
    shared, result = _on_main(fn, share=True)
    return result if is_main() else shared


def main_first(fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on every other rank once rank 0 is done (or raised there too).

    For work that fills an on-disk cache (a trained evaluator, a download): the other ranks
    then read rank 0's file instead of all writing the same file at once.
    """
    if world_size() == 1:
        return fn()
    _, result = _on_main(fn, share=False)
    return result if is_main() else fn()


def _on_main(fn: Callable[[], T], share: bool) -> tuple[Any, T | None]:
    """Run fn() on rank 0 and broadcast (failure, result if share); re-raise a failure everywhere.

    Returns (the broadcast result, rank 0's own result or None on the other ranks).
    """
    if is_main():
        try:
            result = fn()
        except BaseException as err:
            broadcast_object(_failure(err))
            raise
        broadcast_object((None, result if share else None))
        return result, result
    failure, shared = broadcast_object(None)
    _raise_failure(failure)
    return shared, None


def _failure(err: BaseException) -> tuple[tuple[str, bool], None]:
    """What the other ranks learn of rank 0's exception: its text, and whether it is the
    user's to fix (exceptions need not pickle, so they are not sent themselves)."""
    return (f"{type(err).__name__}: {err}", isinstance(err, InputError)), None


def _raise_failure(failure: tuple[str, bool] | None) -> None:
    if failure is None:
        return
    message, user_error = failure
    if user_error:
        raise InputError(f"on rank 0: {message}")
    raise RuntimeError(f"rank 0 failed: {message}")


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel when distributed, else `module` itself.

    DDP starts every rank from rank 0's parameters and buffers and averages the gradients
    over ranks during backward, so a step on equal slices of a global batch equals one
    process's step on the whole batch.
    """
    if world_size() == 1:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
