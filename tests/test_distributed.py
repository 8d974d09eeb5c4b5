"""Feature gathering and label broadcast across 2 real gloo processes."""

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xdc.training.distributed import Dist, broadcast_labels, gather_rows


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = Dist(rank=rank, world_size=world)
    total = 7  # not divisible by the world size
    indices = torch.arange(rank, total, world)
    if rank == 1:
        indices = indices[indices != 3]  # a clip that failed on this rank: its row must stay missing
    values = indices.float().unsqueeze(1) * torch.tensor([[1.0, -1.0]])
    gathered = gather_rows(values, indices, total, ctx)
    labels = broadcast_labels(np.array([5, 4, 3, 2, 1, 0, -1]) if rank == 0 else None, ctx)
    out[rank] = (gathered.numpy(), labels)
    dist.destroy_process_group()


def test_gather_in_dataset_order_and_broadcast():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, 29533, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        gathered, labels = results[rank]
        expected = np.arange(7, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], dtype=np.float32)
        expected[3] = np.nan
        np.testing.assert_array_equal(gathered, expected)
        np.testing.assert_array_equal(labels, [5, 4, 3, 2, 1, 0, -1])


def test_single_process_needs_no_group():
    gathered = gather_rows(torch.ones(2, 3), torch.tensor([2, 0]), 4, Dist())
    assert torch.isnan(gathered[[1, 3]]).all() and (gathered[[0, 2]] == 1).all()
    assert broadcast_labels(np.array([1, 2]), Dist()).tolist() == [1, 2]
