"""Host memory of the per-video state one rank holds through a round, at the paper's scale.

What does not shrink with the number of ranks under ``train.cluster_on=shards`` is what every rank holds for
every video: the manifest and the pseudo-labels (docs/clustering.md "Memory per rank at 65M clips"). This
walks one rank through the steps of a round that touch them, with the library's own functions, for a
manifest of N videos (Kinetics-like paths of 63 characters) and XDC's two label sets:

m. manifest  - ``Manifest.load`` of the N-row manifest (written beforehand to a temporary folder), then
   saved       its rows saved as a run's ``videos/`` folder and the loaded copy dropped, and
   mapped      every rank's ``Manifest.open`` of that folder, every page read: shared by the ranks (see PSS)
0. previous  - last round's labels of every video (as 1.), which a round keeps until it has compared them
1. assemble  - ``assemble_labels`` of every rank's share (N / W videos each, random assignments) into every
               video's label on every rank, for each set, over a gloo group of ``--world-size`` processes
2. stats     - rank 0's log: ``cluster_stats`` and ``nmi`` against the previous round's labels, which are
               then dropped
3. sampler   - the training loader's ``ClusterBalancedSampler`` (``--holdout`` videos masked as the trainer
               does)
4. epoch     - an epoch's iterator over this rank's keys (the loader holds it through the epoch), one batch
               taken
5. targets   - the pseudo-labels of one batch for each head, as the training step looks them up
6. checkpoint - the checkpoint (this round's labels; last round's are gone by then) written atomically
7. npz       - the round's labels saved as ``labels/round_NNN.npz``

For each step, on rank 0: the resident memory held after it and its peak (the kernel's high-water mark,
reset before the step), both above what the process held before it had any of this state, and the
proportional set size (PSS: a page shared by W processes counts 1/W). Times are wall
seconds. The rank's share of the epoch (N / W keys) is what makes ``--world-size`` matter beyond the assembly.

    .venv/bin/python benchmarks/per_video_memory.py --videos 65000000 --k 1024 --world-size 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import free_port, report, run_script
from xdc.clustering.metrics import cluster_stats, nmi
from xdc.clustering.sampler import ClusterBalancedSampler
from xdc.clustering.sharded import assemble_labels
from xdc.data.manifest import COLUMNS, Manifest
from xdc.training import checkpoint

MIB = 2**20


def _status(field: str, source: str = "/proc/self/status") -> int:
    with open(source) as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class Meter:
    """Held and peak resident memory of consecutive steps, above a baseline."""

    def __init__(self):
        self.rows: list[dict] = []
        self.base, self.base_pss = _status("VmRSS"), _status("Pss", "/proc/self/smaps_rollup")
        self._start()

    def _start(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
        self.t = time.perf_counter()

    def step(self, name: str) -> None:
        self.rows.append({
            "step": name,
            "seconds": round(time.perf_counter() - self.t, 2),
            "held_mib": round((_status("VmRSS") - self.base) / MIB),
            "peak_mib": round((_status("VmHWM") - self.base) / MIB),
            # this process's share of its resident pages: pages mapped by both ranks count half
            "pss_mib": round((_status("Pss", "/proc/self/smaps_rollup") - self.base_pss) / MIB),
        })  # fmt: skip
        print(self.rows[-1], flush=True)
        self._start()


def rank_main(rank: int, args: argparse.Namespace) -> None:
    """One of W gloo ranks; rank 0 measures (the others only take part in the label assembly)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank,
                            world_size=args.world_size, timeout=timedelta(minutes=30))  # fmt: skip
    n, k, w = args.videos, args.k, args.world_size
    rng = np.random.default_rng([args.seed, rank])
    sets = ("audio", "video")  # XDC: the clusters of each modality train the other's head
    mine = np.arange(rank, n, w)  # this rank's videos, as extraction shards them
    holdout = np.random.default_rng(args.seed).random(n) < args.holdout
    meter = Meter()
    videos = args.manifest.with_name("videos")
    if rank == 0:  # as a new run: the manifest read (by every rank; one measures), the run's videos saved
        manifest = Manifest.load(args.manifest)
        assert len(manifest) == n
        meter.step("manifest")
        manifest.save(videos)
        del manifest
        meter.step("saved")
    dist.barrier()
    mapped = Manifest.open(videos)  # then every rank maps the saved arrays and reads every page
    for field in ("paths", "durations", "offsets", "has_audio", "has_video", "labels"):
        np.asarray(getattr(mapped, field)).view(np.uint8).sum()
    dist.barrier()
    if rank == 0:
        meter.step("mapped")

    previous = {s: assemble_labels(rng.integers(0, k, mine.size), mine, n) for s in sets}  # kept for the NMI
    meter.step("previous")
    shard = {s: rng.integers(0, k, mine.size) for s in sets}  # this rank's k-means assignments (int64)
    labels = {s: assemble_labels(shard[s], mine, n) for s in sets}
    del shard  # with the rest of the k-means result
    meter.step("assemble")
    if rank == 0:  # the log is rank 0's
        for s in sets:
            cluster_stats(labels[s][labels[s] >= 0], k)
            both = (labels[s] >= 0) & (previous[s] >= 0)
            nmi(labels[s][both], previous[s][both])
            del both
    previous = {}  # the trainer keeps last round's labels only until they are compared
    if rank == 0:
        meter.step("stats")
        hide = holdout.any()
        label_sets = [np.where(holdout, -1, labels[s]) if hide else labels[s] for s in sets]
        sampler = ClusterBalancedSampler(label_sets, n, seed=args.seed, rank=rank, world_size=w)
        del label_sets
        meter.step("sampler")
        sampler.set_epoch(0)
        keys = iter(sampler)  # the loader holds this iterator through the epoch
        index = torch.tensor([video for video, _ in islice(keys, args.batch)])
        meter.step("epoch")
        targets = {s: torch.from_numpy(labels[s])[index].long() for s in sets}
        assert all(t.shape == (args.batch,) for t in targets.values())
        meter.step("targets")
        with tempfile.TemporaryDirectory() as tmp:
            state = {"labels": {s: torch.from_numpy(v) for s, v in labels.items()}, "previous": {}}
            checkpoint.save_atomic(state, Path(tmp) / "last.pt")
            del state
            meter.step("checkpoint")
            np.savez(Path(tmp) / "round_000.npz", **labels)
            meter.step("npz")
        report("per_video_memory", meter.rows, {"videos": n, "k": k, "world_size": w, "holdout": args.holdout,
                                                "label_dtype": str(labels[sets[0]].dtype)})  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=65_000_000, help="N, videos in the run")
    parser.add_argument("--k", type=int, default=1024, help="clusters per label set")
    parser.add_argument("--world-size", type=int, default=2, help="gloo processes (each holds N / W videos)")
    parser.add_argument("--batch", type=int, default=16, help="clips per rank and step")
    parser.add_argument("--holdout", type=float, default=0.0, help="fraction of videos held back (train.holdout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, help="the gloo group's port on this host (default: a free one)")
    args = parser.parse_args()
    args.port = args.port or free_port()
    with tempfile.TemporaryDirectory() as tmp:
        args.manifest = Path(tmp) / "videos.csv"
        t = time.perf_counter()
        write_manifest(args.manifest, args.videos)
        print(f"wrote a {args.videos:,}-row manifest in {time.perf_counter() - t:.0f} s", flush=True)
        mp.spawn(rank_main, args=(args,), nprocs=args.world_size, join=True)


def write_manifest(path: Path, n: int) -> None:
    """N usable rows as ``xdc index`` writes them: Kinetics-like paths of 63 characters, 400 classes."""
    with open(path, "w") as f:
        f.write(",".join(COLUMNS) + "\n")
        for start in range(0, n, 1 << 20):
            f.write("".join(
                f"/data/kinetics400/train/class_{i % 400:03d}/{i:011d}_000010_000020.mp4,ok,,10.01,29.97,340,256,0,1,"
                f"44100,2,class_{i % 400:03d},1234567,1700000000.123456789\n"
                for i in range(start, min(n, start + (1 << 20)))
            ))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
