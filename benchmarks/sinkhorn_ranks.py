"""train.assign=sinkhorn over ranks (train.cluster_on=shards): ``balance`` of N points whose rows are split over W
gloo processes, against one process holding them all, on the same features and k-means centroids.

    .venv/bin/python benchmarks/sinkhorn_ranks.py --n 100000 --k 256 [--ranks 2] [--repeats 2]

The features are benchmarks/clustering.py's (a seeded 512-d mixture), PCA-whitened to 256 and clustered once by
``kmeans`` in this process; then ``balance`` runs in fresh processes: one process with W threads and with one
thread, and W ranks (videos r, r + W, ... on rank r, as the trainer shards them) with one thread each, so that
the ranks and the first single process use the same cores. Reported: the seconds of ``balance`` (the slowest
rank's; the fastest of ``--repeats``), the peak resident memory each process adds while balancing (the kernel's
high-water mark), and whether the ranks' labels are the single process's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clustering import _status, cached_features
from common import free_port, report, run_script
from xdc.clustering.features import preprocess_features
from xdc.clustering.kmeans import KMeansResult, kmeans
from xdc.clustering.sinkhorn import balance

MIB = 2**20


def _run(rank: int, world: int, threads: int, data: Path, port: int, out: dict) -> None:
    """``balance`` of this process's rows; ``world`` 0: one process holding every row, no process group."""
    torch.set_num_threads(threads)
    saved = np.load(data)
    ids = np.arange(rank, len(saved["z"]), max(world, 1))
    z = np.ascontiguousarray(saved["z"][ids])
    clusters = KMeansResult(saved["assignments"][ids], saved["centroids"], saved["sizes"], 0.0, 0)
    if world:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        dist.barrier()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak resident set) to the current resident set
    base = _status("VmRSS")
    t = time.perf_counter()
    result = balance(z, clusters, ids=ids, sharded=bool(world))
    seconds = time.perf_counter() - t
    out[rank] = (ids, result.assignments, seconds, (_status("VmHWM") - base) / MIB)
    if world:
        dist.destroy_process_group()


def run(world: int, threads: int, data: Path, port: int) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_run, args=(world, threads, data, port, out), nprocs=max(world, 1),
                 join=True)  # fmt: skip
        return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xdc-bench-sinkhorn-") as tmp:
        z = preprocess_features(np.load(cached_features(args.n, 512, args.seed)), dim=256)
        clusters = kmeans(z, args.k, seed=args.seed)
        data = Path(tmp) / "clusters.npz"
        np.savez(data, z=z, assignments=clusters.assignments, centroids=clusters.centroids, sizes=clusters.sizes)
        settings = {f"one process, {args.ranks} threads": (0, args.ranks), "one process, 1 thread": (0, 1),
                    f"{args.ranks} ranks, 1 thread each": (args.ranks, 1)}  # fmt: skip
        runs: dict[str, list[dict]] = {name: [] for name in settings}
        for _ in range(args.repeats):  # interleaved: load on a shared machine hits every setting
            for name, (world, threads) in settings.items():
                runs[name].append(run(world, threads, data, free_port()))
    reference = np.empty(args.n, np.int64)
    ids, labels = runs[next(iter(settings))][0][0][:2]
    reference[ids] = labels
    rows = []
    for name, results in runs.items():
        fastest = min(results, key=lambda out: max(v[2] for v in out.values()))
        labels = np.empty(args.n, np.int64)
        for ids, assigned, _, _ in fastest.values():
            labels[ids] = assigned
        rows.append({"setting": name, "n": args.n, "k": args.k, "balance_s": max(v[2] for v in fastest.values()),
                     "peak_mib_per_process": max(v[3] for v in fastest.values()),
                     "labels_as_one_process": bool(np.array_equal(labels, reference)),
                     "runs_s": ", ".join(f"{max(v[2] for v in out.values()):.2f}" for out in results)})  # fmt: skip
    report(f"sinkhorn_ranks_{args.n}x{args.k}", rows, {"ranks": args.ranks, "repeats": args.repeats})


if __name__ == "__main__":
    run_script(main)
