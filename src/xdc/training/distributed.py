"""torchrun / DDP plumbing. Everything here also works in a plain single process (no process group)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from xdc.clustering.kmeans import LABEL_DTYPE


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


def gather_rows(values: torch.Tensor, indices: torch.Tensor, total: int, ctx: Dist) -> torch.Tensor | None:
    """Assemble per-rank rows into one ``total x D`` tensor ordered by dataset index, on rank 0 (which alone
    clusters them); the other ranks get None and hold no copy.

    Rows a rank could not compute (failed clips) are simply absent from its shard and stay NaN: nothing is
    dropped or duplicated, whatever ``total`` is relative to the world size.
    """
    out = torch.full((total, values.shape[1]), float("nan"), dtype=values.dtype) if ctx.main else None
    if not ctx.enabled:
        out[indices] = values
        return out
    # Ranks hold different row counts: pad to the largest, gather, then drop the padding.
    count = torch.tensor([len(indices)], device=ctx.device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded_values = torch.zeros(longest, values.shape[1], dtype=values.dtype, device=ctx.device)
    padded_values[: len(indices)] = values.to(ctx.device)
    padded_indices = torch.full((longest,), -1, dtype=torch.long, device=ctx.device)
    padded_indices[: len(indices)] = indices.to(ctx.device)
    all_values = [torch.zeros_like(padded_values) for _ in range(ctx.world_size)] if ctx.main else None
    all_indices = [torch.zeros_like(padded_indices) for _ in range(ctx.world_size)] if ctx.main else None
    dist.gather(padded_values, all_values, dst=0)
    dist.gather(padded_indices, all_indices, dst=0)
    if ctx.main:
        for v, i, c in zip(all_values, all_indices, counts):
            n = int(c.item())
            out[i[:n].cpu()] = v[:n].cpu()
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


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
