"""Clustering at scale: feature PCA + k-means as the Pretrainer runs it against a bare faiss call on the same data.

For every N x k: (a) xdc's path, ``preprocess_features`` (PCA-whitening to 256 + L2) then ``kmeans`` (20 Lloyd
iterations, no subsampling, final nearest-centroid assignment); (b) the bare faiss calls that do the same
(PCAMatrix, normalize_L2, faiss.Kmeans without subsampling, a search for the labels); (c) the sharded
PCA + Lloyd k-means of ``xdc.clustering.sharded`` in one process, from the same initial centroids as (a);
(d) the per-iteration cost of faiss's k-means and the sharded Lloyd k-means, alternated in one process on the
same features from the same initial centroids; (e) the sharded path with the torch search on a CUDA device
(what a round runs on a GPU when faiss has none; on the CPU where there is no GPU, for comparison only);
(f) ``train.assign=sinkhorn``: the same PCA and k-means as (a), then ``balance`` (a Sinkhorn-balanced
assignment) on the CPU; (g) the same as a round on a CUDA device runs it: the torch path of (e), then ``balance``
on the device. (f) and (g) only when named in ``--paths``.
Features: a seeded mixture of 2,000 anisotropic Gaussian groups in 512-d, float32.

Each path runs in a fresh process that first reads the features (built once, cached in the temporary folder):
its time excludes that, and its memory is the peak resident memory it adds on top of the features (the
kernel's high-water mark, reset after the features are read), untouched by what other paths allocated and freed (on a GPU also the peak device memory).
Wall and CPU seconds (all threads) are the fastest of ``--repeats`` interleaved runs. On a shared machine,
``--threads 1`` gives the steadiest comparison: with several threads, waiting threads spin and charge CPU time whenever a peer is descheduled.

    .venv/bin/python benchmarks/clustering.py --sizes 100000 --ks 256 1024 --repeats 5
    .venv/bin/python benchmarks/clustering.py --sizes 100000 --ks 256 1024 --repeats 3 --threads 1
    python3 benchmarks/clustering.py --sizes 1000000 --ks 256 1024 --paths ours torch   # on a GPU machine
    python3 benchmarks/clustering.py --sizes 100000 1000000 --ks 1024 --paths sinkhorn-torch  # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import torch

from common import child_output, report, run_script
from xdc.clustering.features import preprocess_features
from xdc.clustering.kmeans import kmeans
from xdc.clustering.sharded import sharded_kmeans, sharded_preprocess_features
from xdc.clustering.sinkhorn import balance

MIB = 2**20
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # of the torch path


def features(n: int, dim: int, seed: int, groups: int = 2000) -> np.ndarray:
    """Gaussian mixture with a decaying spectrum (a few directions dominate, as in encoder features)."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.3, dim, dtype=np.float32)
    centres = rng.standard_normal((groups, dim), dtype=np.float32) * scale * 2
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        x[start : start + rows] = centres[rng.integers(0, groups, rows)]
        x[start : start + rows] += rng.standard_normal((rows, dim), dtype=np.float32) * scale
    return x


def cached_features(n: int, dim: int, seed: int) -> Path:
    """``features`` saved once in the temporary folder, which every child then reads (building 1M rows takes
    10-20 s on one core, reading them back about 1 s)."""
    path = Path(tempfile.gettempdir()) / f"xdc-clustering-features-{n}x{dim}-seed{seed}.npy"
    if not path.exists():
        partial_path = path.with_suffix(f".{os.getpid()}.npy")
        np.save(partial_path, features(n, dim, seed))
        partial_path.rename(path)  # atomic: a killed run leaves no truncated cache behind
    return path


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class Clock:
    """Wall and CPU seconds (all threads of the process) of consecutive steps."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.last = (time.perf_counter(), time.process_time())

    def lap(self, step: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.times[f"{step}_s"], self.times[f"{step}_cpu_s"] = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now


def pipeline(preprocess, cluster, balance_on: str | None = None):
    """A path of PCA-whitening + L2 (``preprocess``) then k-means (``cluster``), then with ``balance_on`` a
    Sinkhorn-balanced assignment on that device (train.assign=sinkhorn), timed step by step."""

    def run(x: np.ndarray, k: int, pca_dim: int, iters: int, seed: int, clock: Clock) -> None:
        z = preprocess(x, dim=pca_dim)
        clock.lap("pca")
        clusters = cluster(z, k, seed=seed, iters=iters)
        clock.times["iterations"] = clusters.iterations
        clock.lap("kmeans")  # its result is on the host: the device has finished
        if balance_on:
            balance(z, clusters, device=balance_on)
            clock.lap("balance")

    return run


def bare_faiss(x: np.ndarray, k: int, pca_dim: int, iters: int, seed: int, clock: Clock) -> None:
    pca = faiss.PCAMatrix(x.shape[1], pca_dim, -0.5)
    pca.max_points_per_d = -(-len(x) // x.shape[1]) + 1  # every row, as xdc's PCA since 2026-12-01
    pca.train(x)
    z = pca.apply(x)
    faiss.normalize_L2(z)
    clock.lap("pca")
    km = faiss.Kmeans(pca_dim, k, niter=iters, seed=seed, max_points_per_centroid=-(-len(x) // k) + 1,
                      min_points_per_centroid=1)  # fmt: skip
    km.train(z)
    km.index.search(z, 1)  # the labels; the index holds the final centroids after training
    clock.times["iterations"] = len(km.obj)
    clock.lap("kmeans")


def lloyd(x: np.ndarray, k: int, pca_dim: int, iters: int, seed: int, clock: Clock) -> None:
    """faiss k-means (``kmeans``) and the sharded Lloyd k-means in one process, on the same features from the
    same initial centroids, alternated twice: their per-iteration cost under the same load."""
    z = preprocess_features(x, dim=pca_dim)
    clock.lap("setup")
    for r in range(2):
        for name in ("faiss", "sharded")[:: 1 if r == 0 else -1]:
            result = (kmeans if name == "faiss" else sharded_kmeans)(z, k, seed=seed, iters=iters)
            clock.times[f"{name}_iterations"] = result.iterations
            clock.lap(f"{name}{r}")


PATHS = {
    "ours": pipeline(preprocess_features, kmeans),  # what a round runs
    "faiss": bare_faiss,
    "sharded": pipeline(sharded_preprocess_features, sharded_kmeans),  # train.cluster_on=shards, one process
    "torch": pipeline(partial(sharded_preprocess_features, device=DEVICE),  # a round on a GPU without faiss-gpu
                      partial(sharded_kmeans, device=DEVICE, search="torch")),  # fmt: skip
    "lloyd": lloyd,
    "sinkhorn": pipeline(preprocess_features, kmeans, balance_on="cpu"),  # train.assign=sinkhorn on a CPU
    "sinkhorn-torch": pipeline(partial(sharded_preprocess_features, device=DEVICE),  # the same on a GPU
                               partial(sharded_kmeans, device=DEVICE, search="torch"), balance_on=DEVICE),
}
ON_DEVICE = {"torch", "sinkhorn-torch"}  # paths that run on DEVICE


def child(args: argparse.Namespace) -> None:
    """One path on freshly built features; prints its timings and added peak memory as one JSON line."""
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    x = np.load(cached_features(args.n, args.dim, args.seed))
    if args.child in ON_DEVICE and DEVICE == "cuda":
        torch.zeros(1, device=DEVICE)  # CUDA's start-up is not clustering time
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak resident set) to the current resident set
    base = _status("VmRSS")
    clock = Clock()
    PATHS[args.child](x, args.k, args.pca_dim, args.iters, args.seed, clock)
    t = clock.times
    if "pca_s" in t:
        steps = [step for step in ("pca", "kmeans", "balance") if f"{step}_s" in t]
        t["total_s"], t["total_cpu_s"] = sum(t[f"{s}_s"] for s in steps), sum(t[f"{s}_cpu_s"] for s in steps)
    if args.child in ON_DEVICE and DEVICE == "cuda":
        t["device_peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    print(json.dumps({**t, "peak_mib": (_status("VmHWM") - base) / MIB}))


def run_child(path: str, n: int, k: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", path, "--n", str(n), "--k", str(k), "--dim", str(args.dim),
               "--pca-dim", str(args.pca_dim), "--iters", str(args.iters), "--seed", str(args.seed),
               "--threads", str(args.threads)]  # fmt: skip
    out = child_output(f"path {path} at N = {n}, k = {k}", command)
    return json.loads(out.strip().splitlines()[-1])


def fastest(runs: list[dict], key: str) -> float:
    return min(r[key] for r in runs)


def lloyd_iter(times: dict, name: str, unit: str) -> str:
    """Seconds per search (iterations run + the final assignment) of the faster of the two runs."""
    return f"{min(times[f'{name}{r}{unit}'] for r in range(2)) / (times[f'{name}_iterations'] + 1):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path, interleaved; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss and torch threads (0: their default, all cores)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["ours", "faiss", "sharded", "lloyd"],
                        help="paths to time (torch: the torch search on %s here)" % DEVICE)
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if max(args.ks) > min(args.sizes):  # checked before minutes of building features
        parser.error(f"k-means needs at least k points: --ks {max(args.ks)} is more than --sizes {min(args.sizes)}")
    if not 0 < args.pca_dim <= args.dim:
        parser.error(f"--pca-dim {args.pca_dim}: between 1 and --dim {args.dim}")
    rows = []
    paths = [p for p in args.paths if p != "lloyd"]
    for n in args.sizes:
        for k in args.ks:
            runs = {path: [] for path in paths}
            for r in range(args.repeats if paths else 0):  # interleaved, rotating: load on a shared machine hits all
                for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                    runs[path].append(run_child(path, n, k, args))
            row = {"N": n, "k": k, "features_mib": round(n * args.dim * 4 / MIB)}
            for path, got in runs.items():
                keys = ("total_s", "total_cpu_s", "pca_s", "kmeans_s", "balance_s")
                row |= {f"{path}_{key}": round(fastest(got, key), 2) for key in keys if key in got[0]}
                row |= {f"{path}_pca_cpu_s": round(fastest(got, "pca_cpu_s"), 1),
                        f"{path}_iters": min(r["iterations"] for r in got),
                        f"{path}_peak_mib": round(fastest(got, "peak_mib"))}  # fmt: skip
                if "device_peak_mib" in got[0]:
                    row[f"{path}_device_peak_mib"] = round(fastest(got, "device_peak_mib"))
            if "ours" in runs and "faiss" in runs:
                row["ratio"] = round(row["ours_total_s"] / row["faiss_total_s"], 3)
                row["cpu_ratio"] = round(row["ours_total_cpu_s"] / row["faiss_total_cpu_s"], 3)
            if "lloyd" in args.paths:
                it = run_child("lloyd", n, k, args)
                row["iter_s"] = f"{lloyd_iter(it, 'faiss', '_s')} / {lloyd_iter(it, 'sharded', '_s')}"
                row["iter_cpu_s"] = f"{lloyd_iter(it, 'faiss', '_cpu_s')} / {lloyd_iter(it, 'sharded', '_cpu_s')}"
            rows.append(row)
            print(rows[-1], flush=True)
    name = "clustering" + (f"_threads{args.threads}" if args.threads else "")
    report(name, rows, {"args": vars(args), "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus(),
                       "torch_device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"})


if __name__ == "__main__":
    run_script(main)
