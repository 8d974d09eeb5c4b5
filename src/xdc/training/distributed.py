"""torchrun / DDP plumbing. Everything here also works in a plain single process (no process group)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from xdc.clustering.kmeans import LABEL_DTYPE

GATHER_STEP_BYTES = 256 * 2**20  # features that rank 0 receives at once (gather_rows)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> Dist:
    """Join the process group that torchrun describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world == 1:
        return Dist(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":  # binding the rank's GPU up front lets NCCL collectives (barrier too) use it
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def leave_distributed(finished: bool) -> None:
    """Leave the process group that init_distributed joined, if any: after the others (a barrier) when this rank
    ``finished``; at once after an error, when the others may never get there. Left to the interpreter's exit,
    gloo's threads were torn down with the group still alive and a rank could abort at the very end of a
    finished run ("terminate called without an active exception", seen about once in five 2-rank runs on a
    loaded 2-core machine)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def gather_rows(
    values: torch.Tensor, indices: torch.Tensor, total: int, ctx: Dist, step_bytes: int = GATHER_STEP_BYTES
) -> torch.Tensor | None:
    """Assemble per-rank rows into one ``total x D`` tensor ordered by dataset index, on rank 0 (which alone
    clusters them); the other ranks get None and hold no copy.

    Rows a rank could not compute (failed clips) are simply absent from its shard and stay NaN: nothing is
    dropped or duplicated, whatever ``total`` is relative to the world size. The rows travel in steps of at
    most ``step_bytes`` for all ranks together: rank 0 receives them on its device (NCCL), where all at once
    would be N x D more memory beside the model (20 GB at 10M videos, D = 512).
    """
    out = torch.full((total, values.shape[1]), float("nan"), dtype=values.dtype) if ctx.main else None
    if not ctx.enabled:
        out[indices] = values
        return out
    count = torch.tensor([len(indices)], device=ctx.device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    step = max(1, step_bytes // (ctx.world_size * values.shape[1] * values.element_size()))
    for start in range(0, longest, step):
        # Ranks hold different row counts: each sends `rows` rows, padded with index -1.
        rows, mine = min(step, longest - start), indices[start : start + step]
        piece = torch.zeros(rows, values.shape[1], dtype=values.dtype, device=ctx.device)
        piece[: len(mine)] = values[start : start + step].to(ctx.device)
        keys = torch.full((rows,), -1, dtype=torch.long, device=ctx.device)
        keys[: len(mine)] = mine.to(ctx.device)
        pieces = [torch.zeros_like(piece) for _ in range(ctx.world_size)] if ctx.main else None
        all_keys = [torch.zeros_like(keys) for _ in range(ctx.world_size)] if ctx.main else None
        dist.gather(piece, pieces, dst=0)
        dist.gather(keys, all_keys, dst=0)
        if ctx.main:
            for v, i in zip(pieces, all_keys):
                kept = i >= 0
                out[i[kept].cpu()] = v[kept].cpu()
    return out


def broadcast_labels(labels: np.ndarray | None, ctx: Dist) -> np.ndarray:
    """Rank 0's pseudo-labels (int32: ``LABEL_DTYPE``) on every rank (the other ranks pass None)."""
    if not ctx.enabled:
        return labels
    length = torch.tensor([len(labels) if ctx.main else 0], device=ctx.device)
    dist.broadcast(length, 0)
    if ctx.main:
        tensor = torch.from_numpy(np.asarray(labels, dtype=LABEL_DTYPE)).to(ctx.device)
    else:
        tensor = torch.empty(int(length.item()), dtype=torch.int32, device=ctx.device)
    dist.broadcast(tensor, 0)
    return tensor.cpu().numpy()


def broadcast_failure(failure: tuple[str, str] | None, ctx: Dist) -> tuple[str, str] | None:
    """Rank 0's outcome of work the other ranks wait for: None, or (kind, message) of what went wrong, so that
    every rank stops with rank 0's error instead of waiting for it at the next collective."""
    if not ctx.enabled:
        return failure
    box = [failure]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
