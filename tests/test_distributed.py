"""Feature gathering and label broadcast across 2 real gloo processes; what a torchrun job says when it stops."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import (
    child_pids, free_port, kill_with_children, run_two_ranks, still_running, synthetic_manifest, torchrun_command,
)
from xdc.clustering.kmeans import LABEL_DTYPE
from xdc.config import job_ranks, load_config
from xdc.data.datasets import TrainClips
from xdc.data.manifest import Manifest
from xdc.errors import UserError
from xdc.training.checkpoint import load
from xdc.training.distributed import (
    Dist,
    broadcast_buffers,
    broadcast_labels,
    gather_rows,
    gpu_index,
    init_distributed,
    on_main,
)
from xdc.training.pretrain import FeatureShard, Pretrainer


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
    in_steps = gather_rows(values, indices, total, ctx, step_bytes=1)  # a row per rank at a time: 4 steps
    labels = broadcast_labels(np.array([5, 4, 3, 2, 1, 0, -1]) if rank == 0 else None, ctx)
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(2)
    norm(torch.randn(4, 2) + rank)  # a training forward on this rank's own clips: its own running statistics
    own = norm.running_mean.clone()
    broadcast_buffers(norm, ctx)
    out[rank] = [None if g is None else g.numpy() for g in (gathered, in_steps)], labels, (own, norm.running_mean)
    dist.destroy_process_group()


def test_gather_in_dataset_order_and_broadcast():
    results = run_two_ranks(_worker)
    expected = np.arange(7, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], dtype=np.float32)
    expected[3] = np.nan
    for gathered in results[0][0]:
        np.testing.assert_array_equal(gathered, expected)
    assert results[1][0] == [None, None]  # only rank 0 clusters: no other rank holds a copy
    for rank in (0, 1):
        labels = results[rank][1]
        np.testing.assert_array_equal(labels, [5, 4, 3, 2, 1, 0, -1])
        assert labels.dtype == LABEL_DTYPE
    (own0, after0), (own1, after1) = results[0][2], results[1][2]
    assert not torch.equal(own0, own1)  # the ranks' statistics differed, and now both are rank 0's
    assert torch.equal(after0, own0) and torch.equal(after1, own0)


def test_single_process_needs_no_group():
    gathered = gather_rows(torch.ones(2, 3), torch.tensor([2, 0]), 4, Dist())
    assert torch.isnan(gathered[[1, 3]]).all() and (gathered[[0, 2]] == 1).all()
    assert broadcast_labels(np.array([1, 2]), Dist()).tolist() == [1, 2]


def _cluster_worker(rank: int, world: int, port: int, manifest: Path, root: Path, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = Dist(rank=rank, world_size=world)
    result = {}
    for mode in ("rank0", "shards"):
        for assign in ("kmeans", "sinkhorn"):
            trainer = Pretrainer(_cluster_cfg(mode, assign), manifest, root / f"{mode}-{assign}", ctx)
            features = trainer._extract()
            rows = len(features.index) if isinstance(features, FeatureShard) else None
            result[mode, assign] = (rows, trainer._cluster(features))
            trainer.log.close()
    out[rank] = result
    dist.destroy_process_group()


def _cluster_cfg(mode: str, assign: str = "kmeans"):
    # PCA to 8 of the 64 feature dimensions, so that the sharded PCA runs too
    return load_config(None, ["train.batch_size=8", "train.k=4", "data.workers=0", "train.pca_dim=8",
                              f"train.cluster_on={mode}", f"train.assign={assign}"], preset="tiny")  # fmt: skip


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory) -> tuple[Path, dict]:
    """The 2-rank clusterings of every (cluster_on, assign) over one manifest: spawning ranks takes seconds."""
    root = tmp_path_factory.mktemp("clusters")
    manifest = synthetic_manifest(root, 24, 4, seed=0)
    return manifest, run_two_ranks(_cluster_worker, manifest, root)


@pytest.mark.parametrize("assign", ["kmeans", "sinkhorn"])
def test_sharded_clustering_gives_the_pseudo_labels_of_rank0(cluster_runs, tmp_path, assign):
    """2 gloo ranks: cluster_on=shards (features never leave their rank) labels every video as cluster_on=rank0
    (features gathered, faiss k-means on rank 0) and as one process does, from the same seed; with
    train.assign=sinkhorn too (Sinkhorn's column sums and the clusters' capacity choices all-reduced)."""
    manifest, results = cluster_runs
    single = Pretrainer(_cluster_cfg("shards", assign), manifest, tmp_path / "single", Dist())
    expected = single._cluster(single._extract())
    assert set(expected) == {"video", "audio"} and all((v >= 0).all() for v in expected.values())
    if assign == "sinkhorn":  # 24 videos in 4 clusters: at most 6 each
        assert all(np.bincount(v, minlength=4).max() <= 6 for v in expected.values())
    for rank in (0, 1):
        (rows_rank0, by_rank0), (rows_shards, by_shards) = (results[rank][mode, assign] for mode in ("rank0", "shards"))
        assert rows_rank0 is None and rows_shards == 12  # this rank's half of the 24 videos, nothing more
        for name in expected:
            np.testing.assert_array_equal(by_shards[name], expected[name])
            np.testing.assert_array_equal(by_rank0[name], expected[name])
            assert by_shards[name].dtype == by_rank0[name].dtype == expected[name].dtype == LABEL_DTYPE


def _join(rank: int, world: int, port: int) -> Dist:
    """A spawned test rank joins the gloo group (a minute's timeout: a rank left waiting fails the test)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    return Dist(rank=rank, world_size=world)


def _ready_to_step(cfg, manifest: Path, out: Path, ctx: Dist) -> Pretrainer:
    """A trainer with this round's heads on fixed pseudo-labels (video i in cluster i % 4)."""
    trainer = Pretrainer(cfg, manifest, out, ctx)
    trainer.compile_backend = "eager"
    trainer.progress.labels = {s: np.arange(len(trainer.videos)) % 4 for s in trainer.method.label_sets}
    trainer._new_heads()
    return trainer


def _failed_clips_worker(rank: int, world: int, port: int, manifest: Path, root: Path, out: dict) -> None:
    from torch._dynamo.utils import counters

    ctx = _join(rank, world, port)
    result = {}
    for compiled, kept in [(False, 0), (True, 0), (True, 3)]:
        torch._dynamo.reset()
        counters.clear()
        cfg = _cluster_cfg("rank0")
        cfg.train.compile = compiled
        trainer = _ready_to_step(cfg, manifest, root / f"run-{compiled}-{kept}", ctx)
        batch = next(iter(trainer._train_loader()))
        if rank == 1:  # every clip of this rank's batch failed but the first `kept`
            batch = {**{k: v[:kept] for k, v in batch.items() if torch.is_tensor(v) and v.dim()}, "failures": []}
        before = [p.detach().clone() for p in trainer.encoders.parameters()]
        trainer._step(trainer.train_model, batch)
        after = [p.detach().clone() for p in trainer.encoders.parameters()]
        result[compiled, kept] = (before, after, counters["stats"]["unique_graphs"])
        trainer.log.close()
    out[rank] = result
    dist.destroy_process_group()


def test_a_rank_whose_batch_failed_still_takes_the_step(tmp_path):
    """DDP: the other rank waits for this rank's gradients, and every rank must step alike to stay in sync, with
    the training model compiled too (the short batch runs uncompiled; rank 0's full one, compiled)."""
    manifest = synthetic_manifest(tmp_path, 24, 4, seed=0)
    results = run_two_ranks(_failed_clips_worker, manifest, tmp_path)
    for case in [(False, 0), (True, 0), (True, 3)]:
        (before0, after0, graphs0), (before1, after1, graphs1) = results[0][case], results[1][case]
        assert all(torch.equal(a, b) for a, b in zip(before0, before1))  # DDP starts both from rank 0's weights
        assert any(not torch.equal(a, b) for a, b in zip(before0, after0))  # the step learned from the clips
        for a, b in zip(after0, after1):
            assert torch.equal(a, b), case  # and both ranks took it
        assert (graphs0, graphs1) == ((1, 0) if case[0] else (0, 0)), case  # rank 1 compiled nothing


def _accumulate_worker(rank: int, world: int, port: int, manifest: Path, root: Path, out: dict) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    ctx = _join(rank, world, port)
    result = {}
    for accumulate, compiled in [(1, False), (3, False), (3, True)]:
        cfg = load_config(None, ["train.batch_size=12", "train.k=4", "data.workers=0", f"train.accumulate={accumulate}",
                                 f"train.compile={str(compiled).lower()}"], preset="tiny")  # fmt: skip
        trainer = _ready_to_step(cfg, manifest, root / f"run{accumulate}{compiled}", ctx)
        calls = []
        ddp = trainer.train_model._orig_mod if compiled else trainer.train_model
        ddp.register_comm_hook(None, lambda state, bucket: calls.append(1) or allreduce_hook(state, bucket))
        trainer._step(trainer.train_model, next(iter(trainer._train_loader())))
        result[(accumulate, compiled)] = (len(calls), [p.detach().clone() for p in trainer.encoders.parameters()])
        trainer.log.close()
    out[rank] = result
    dist.destroy_process_group()


def test_accumulated_parts_all_reduce_once_per_step(tmp_path):
    manifest = synthetic_manifest(tmp_path, 24, 4, seed=0)
    results = run_two_ranks(_accumulate_worker, manifest, tmp_path)
    once = results[0][(1, False)][0]
    assert once >= 1
    for key in [(3, False), (3, True)]:
        assert results[0][key][0] == results[1][key][0] == once  # not 3 x: the first two parts only accumulate
        for a, b in zip(results[0][key][1], results[1][key][1]):
            assert torch.equal(a, b)  # the ranks stepped alike


def _videos_worker(rank: int, world: int, port: int, manifest: Path, bad: Path, root: Path, out: dict) -> None:
    from xdc.data.manifest import Manifest
    from xdc.errors import UserError

    ctx = _join(rank, world, port)
    loads = []
    load = Manifest.load
    Manifest.load = lambda *args, **kwargs: loads.append(1) or load(*args, **kwargs)  # counts the parses
    cfg = load_config(None, ["train.k=4", "data.workers=0"], preset="tiny")
    result = {}
    # rank 1 on rank 0's run folder (one node, or a shared file system), then on a folder of its own (a node
    # that does not see rank 0's files), then both on a manifest that cannot be read
    for case, out_of_rank in [("shared", {0: "shared", 1: "shared"}), ("apart", {0: "apart", 1: "elsewhere"})]:
        loads.clear()
        trainer = Pretrainer(cfg, manifest, root / out_of_rank[rank], ctx)
        result[case] = (len(loads), trainer.videos.paths.tolist(), (root / out_of_rank[rank] / "videos").exists())
        trainer.log.close()
    try:
        Pretrainer(cfg, bad, root / "bad", ctx)
        result["bad"] = None
    except UserError as e:
        result["bad"] = str(e)
    out[rank] = result
    dist.destroy_process_group()


def test_only_rank0_parses_the_manifest_and_its_errors_stop_every_rank(tmp_path):
    manifest = synthetic_manifest(tmp_path, 24, 4, seed=0)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,size\na.mp4,3\n")  # no path column
    results = run_two_ranks(_videos_worker, manifest, bad, tmp_path)
    zero, one = results[0], results[1]
    assert zero["shared"][0] == 1 and one["shared"][0] == 0  # rank 1 mapped rank 0's saved videos
    assert one["shared"][1] == zero["shared"][1] and len(zero["shared"][1]) == 24
    assert one["apart"][0] == 1 and one["apart"][1] == zero["apart"][1]  # its own copy, the same videos
    assert zero["apart"][2] and not one["apart"][2]  # which it did not save: only rank 0 writes the run folder
    assert zero["bad"] and one["bad"] == zero["bad"]  # rank 1 stopped with rank 0's error, not at a collective


def _slow_rank0_worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    # the group's 2 s, not the rendezvous's: a rank that started over 2 s after the other failed to join it
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=2))
    ctx = init_distributed()  # joins the group above, and adds the one in which ranks wait for rank 0

    def slow() -> int:
        time.sleep(4)  # twice the default group's timeout
        return 42

    def fail(error: Exception):
        def work():
            raise error
        return work

    got = [on_main(slow, ctx)]
    for error in (UserError("no usable videos"), ValueError("bad centroids")):
        try:
            on_main(fail(error), ctx)
        except Exception as e:
            got.append((type(e).__name__, str(e), repr(e.__cause__)))
    out[rank] = got
    dist.destroy_process_group()


def test_ranks_wait_for_rank0_beyond_the_groups_timeout_and_stop_with_its_errors():
    results = run_two_ranks(_slow_rank0_worker)
    # a UserError stops every rank as a SharedError, which rank 0 alone says (until 2026-12-02 every rank said it),
    # any other as a RankFailed (until 2026-12-02 rank 0 raised its error, the others a RuntimeError)
    failed = ("RankFailed", "rank 0 failed (ValueError: bad centroids)")
    assert results[0] == [42, ("SharedError", "no usable videos", "UserError('no usable videos')"),
                          (*failed, "ValueError('bad centroids')")]  # fmt: skip
    assert results[1] == [None, ("SharedError", "no usable videos", "None"), (*failed, "None")]


class _SlowClips(TrainClips):
    """Training clips that take half a second longer each: a rank whose loader falls behind."""

    def __getitem__(self, key):
        time.sleep(0.5)
        return super().__getitem__(key)


def _slow_loader_worker(rank: int, world: int, port: int, manifest: Path, root: Path, out: dict) -> None:
    cfg = load_config(None, ["train.batch_size=4", "train.k=4", "data.workers=0", "train.log_every=1"], preset="tiny")
    trainer = _ready_to_step(cfg, manifest, root / "run", _join(rank, world, port))
    if rank == 1:
        trainer.train_set.__class__ = _SlowClips
    trainer._train_epoch()
    trainer.log.close()
    if rank == 0:
        out[rank] = [r for r in map(json.loads, (root / "run" / "log.jsonl").read_text().splitlines())
                     if r["kind"] == "step"]  # fmt: skip
    dist.destroy_process_group()


def test_the_logged_wait_for_clips_is_the_slowest_ranks(tmp_path):
    """Rank 0's own loader keeps up, but its steps wait for rank 1's in the gradient all-reduce: the step records
    say that the run waits for clips (rank 1's share: a second per batch of 2 clips, against steps of a tiny
    model; the first step's set-up counts too), not rank 0's own small share (0.006 when rank 0 logged it). The
    share falls as a loaded machine slows the steps: 0.14 at a load of 5 with a quarter of a second per clip, so
    the clips take half a second and the bar is 0.1, still 16 times rank 0's own."""
    manifest = synthetic_manifest(tmp_path, 24, 4, seed=0)
    steps = run_two_ranks(_slow_loader_worker, manifest, tmp_path)[0]
    assert len(steps) == 6  # 24 videos, 2 clips per rank and step
    assert steps[-1]["data_wait"] > 0.1


def _failures_worker(rank: int, world: int, port: int, manifest: Path, root: Path, out: dict) -> None:
    from xdc.training.pretrain import pretrain

    ctx = _join(rank, world, port)
    cfg = load_config(None, ["train.k=4", "train.batch_size=8", "train.rounds=1", "train.epochs=1", "data.workers=0",
                             "data.retries=0", "data.max_fail_fraction=0.5"], preset="tiny")  # fmt: skip
    pretrain(cfg, manifest, root / "run", resume=False, ctx=ctx)
    dist.destroy_process_group()


def test_skipped_csv_lists_the_files_that_failed_on_every_rank(tmp_path):
    # Before, each rank counted its own failures and rank 0 saved only its own: another rank's were lost.
    manifest = synthetic_manifest(tmp_path, 24, 4, seed=0)
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    junk = [tmp_path / f"junk{i}.mp4" for i in range(2)]  # videos 24 and 25: the two ranks' extraction halves
    for path in junk:
        path.write_bytes(b"\x00" * 4000)
        row = dict.fromkeys(header, "")
        row.update(path=str(path), status="ok", duration_s="3.0", has_audio="1", width="64", label="class00")
        lines.append(",".join(row[h] for h in header))
    manifest.write_text("\n".join(lines) + "\n")
    run_two_ranks(_failures_worker, manifest, tmp_path)
    skipped = (tmp_path / "run" / "skipped.csv").read_text()
    assert all(str(path) in skipped for path in junk)
    ranks = load(tmp_path / "run" / "checkpoints" / "last.pt")["ranks"]
    assert [list(r["failures"]["files"]) for r in ranks] == [[str(junk[0])], [str(junk[1])]]


def _crash_worker(rank: int, world: int, port: int, manifest: Path, root: Path, victim: str, out: dict) -> None:
    import multiprocessing
    import signal

    from torch.utils.data import get_worker_info

    from xdc.data.datasets import _ClipDataset
    from xdc.training.pretrain import pretrain

    read = _ClipDataset._read_clips

    def read_clips(self, i, starts):  # a loader worker that reads the victim dies, as FFmpeg's crash would end it
        if get_worker_info() and self.manifest.path(i) == victim:
            os.kill(os.getpid(), signal.SIGSEGV)
        return read(self, i, starts)

    _ClipDataset._read_clips = read_clips  # in this rank's process; its loader workers are forked from it
    multiprocessing.set_start_method("fork", force=True)  # as under torchrun (mp.spawn left "spawn" set here)
    ctx = _join(rank, world, port)
    cfg = load_config(None, ["train.k=4", "train.batch_size=8", "train.rounds=2", "train.epochs=1",
                             "data.workers=2"], preset="tiny")  # fmt: skip
    pretrain(cfg, manifest, root / "run", resume=False, ctx=ctx)
    out[rank] = True
    dist.destroy_process_group()


def test_each_rank_goes_on_past_a_file_that_kills_its_loader_worker(tmp_path):
    # The other rank waits for the one that restarts its workers in the next collective; both finish the run.
    manifest = synthetic_manifest(tmp_path, 24, 4, seed=0)
    victim = Manifest.load(manifest).path(3)
    results = run_two_ranks(_crash_worker, manifest, tmp_path, victim)
    assert results == {0: True, 1: True}
    skipped = (tmp_path / "run" / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[1].startswith(victim) and "killed by SIGSEGV" in skipped[1]
    ranks = load(tmp_path / "run" / "checkpoints" / "last.pt")["ranks"]
    assert {path for r in ranks for path in r["crashed"]} == {victim}


def _many_videos(root: Path, videos: int, junk: list[int]) -> tuple[Path, list[str]]:
    """A manifest of ``videos`` rows, copies of 4 synthetic files (no encoding per row), the rows ``junk`` files that
    fail to load (written after indexing, as a file damaged since); and the junk files' paths."""
    manifest = synthetic_manifest(root, 4, 4, seed=0)
    header, *rows = manifest.read_text().splitlines()
    columns = header.split(",")
    lines, broken = [header], []
    for i in range(videos):
        row = dict(zip(columns, rows[i % len(rows)].split(",")))
        path = root / "copies" / f"{i:04d}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"junk" * 1000 if i in junk else Path(row["path"]).read_bytes())
        broken += [str(path)] if i in junk else []
        lines.append(",".join({**row, "path": str(path)}[c] for c in columns))
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, broken


def _failure_stop_worker(rank: int, world: int, port: int, manifest: Path, root: Path, out: dict) -> None:
    from xdc.data.failures import TooManyFailures
    from xdc.training.pretrain import pretrain

    torch.set_num_threads(1)  # a core each (the tests' machine has 2)
    ctx = _join(rank, world, port)
    cfg = load_config(None, ["train.k=4", "train.batch_size=8", "train.rounds=1", "train.epochs=1", "data.workers=0",
                             "data.retries=0", "train.epoch_size=8"], preset="tiny")  # fmt: skip
    result = {}
    try:
        pretrain(cfg, manifest, root / "run", resume=False, ctx=ctx)
    except TooManyFailures as e:
        result["stop"] = str(e)
        result["stopped_skipped"] = (root / "run" / "skipped.csv").read_text() if rank == 0 else None
    pretrain(cfg, manifest, root / "run", resume=True, ctx=ctx, settings={"data.max_fail_fraction": 0.5})
    result["finished"] = True
    out[rank] = result
    dist.destroy_process_group()


def test_a_stop_for_failures_on_another_rank_lists_them_all_with_one_message_on_every_rank(tmp_path):
    """Every failed file falls in rank 1's half of the extraction (odd rows). Before, rank 1 crossed
    data.max_fail_fraction on its own counts and stopped alone, with no skipped.csv, while rank 0 waited in the
    next collective (torchrun then killed it); rank 0, stopping, listed only its own files. Now the ranks judge
    their counts together and stop at the same batch with one message, and rank 0 lists every rank's files; a resume
    with a higher fraction goes on and lists them again."""
    junk = list(range(1, 24, 2))  # rank 1's first 12 videos (112 rows: 14 batches of 4 per rank)
    manifest, broken = _many_videos(tmp_path, 112, junk)
    results = run_two_ranks(_failure_stop_worker, manifest, tmp_path)
    listed = tmp_path / "run" / "skipped.csv"
    stop = results[0]["stop"]
    assert results[1]["stop"] == stop  # one message, from both ranks
    # judged every 10 batches of a pass: 80 clips of both ranks (50 are needed before any judgement)
    assert stop.startswith(f"12 of 80 clips failed to load (15.0%, more than data.max_fail_fraction=0.05); last: "
                           f"{broken[-1]}: ")  # fmt: skip
    assert stop.endswith(f"; the 12 file(s) that failed are listed in {listed}: to go on without them, --resume "
                         "--set data.max_fail_fraction=HIGHER")  # fmt: skip
    rows = results[0]["stopped_skipped"].splitlines()
    assert rows[0] == "path,failures,reason" and sorted(r.split(",")[0] for r in rows[1:]) == broken
    assert results[0]["finished"] and results[1]["finished"]
    assert sorted(r.split(",")[0] for r in listed.read_text().splitlines()[1:]) == broken


def _judge_worker(rank: int, world: int, port: int, out: dict) -> None:
    from xdc.data.failures import FailureLog, TooManyFailures
    from xdc.training.distributed import FAILURE_CHECK_BATCHES, judge_failures

    ctx = _join(rank, world, port)
    result = []
    # batches of 4 clips in a pass: rank 0's 25 (judged at batches 10 and 20, and at its end), rank 1's 3 (at its end
    # only). Failed clips: none, then one in 20 of rank 0's (5%: not more than data.max_fail_fraction alone) and one
    # of rank 1's 12: too many together (3 of 52 at rank 0's batch 10)
    for failing in (False, True):
        failures = FailureLog(0.05, alone=False)
        batches = [25, 3][rank]
        try:
            for number in range(1, batches + 1):
                failures.items += 4
                failures.failed = (failures.items // 20 if rank == 0 else 1) if failing else 0
                if number % FAILURE_CHECK_BATCHES == 0:
                    judge_failures(failures, ctx)
            number = "end"
            judge_failures(failures, ctx, going=False)
            result.append("done")
        except TooManyFailures as e:
            result.append((number, str(e)))
    out[rank] = result
    dist.destroy_process_group()


def test_ranks_with_passes_of_unequal_length_judge_their_failures_together():
    """An extraction's shards can differ in batches (after a resume from its parts, by many): a rank whose pass
    ended takes part in the others' judgements until all have ended, and all stop at the same one."""
    results = run_two_ranks(_judge_worker)
    assert results[0] == ["done", (10, "3 of 52 clips failed to load")]
    assert results[1] == ["done", ("end", "3 of 52 clips failed to load")]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _index_job(tmp_path: Path, fault: str, inputs: str | None = None, torchrun: tuple[str, ...] = ()) -> list[str]:
    """``xdc index`` of ``inputs`` (by default the folder tmp_path/videos) under torchrun (its options ``torchrun``) on
    2 gloo ranks, run by a script that first runs the Python statements ``fault`` (which replace a function of xdc's
    on the ranks)."""
    driver = tmp_path / "driver.py"
    driver.write_text(f"import sys\nfrom xdc.cli import main\n{fault}\nsys.exit(main(sys.argv[1:]))\n")
    return [*torchrun_command(2), *torchrun, str(driver), "index", inputs or str(tmp_path / "videos"), "--out",
            str(tmp_path / "m.csv")]  # fmt: skip


def _index_on_two_ranks(tmp_path: Path, fault: str, **job) -> subprocess.CompletedProcess:
    return subprocess.run(_index_job(tmp_path, fault, **job), capture_output=True, text=True, env=TORCHRUN_ENV,
                          timeout=300, cwd=tmp_path)  # fmt: skip


def test_an_error_of_rank0_alone_is_said_before_the_other_rank_stops(tmp_path):
    """A full disk on rank 0 (writing a checkpoint, say) while rank 1 goes on to the next collective: rank 1 does not
    wait for gloo's timeout but stops at once, as rank 0 leaves the group, and says so in one line after rank 0's
    (until 2026-12-02 gloo's error, with a traceback). Until 2026-12-02 rank 0 left before it said its line, which
    came after rank 1's traceback (5 of 5 tries), and torchrun, once rank 1 had ended, stopped rank 0 (SIGTERM) at
    once: the line could be lost."""
    done = _index_on_two_ranks(tmp_path, torchrun=("--monitor-interval=3",), fault=textwrap.dedent("""
        import errno, torch.distributed as dist, xdc.data.index
        def build_manifest(*args, ctx, **kwargs):
            if ctx.main:
                raise OSError(errno.ENOSPC, "No space left on device")
            dist.barrier()
        xdc.data.index.build_manifest = build_manifest
    """))
    line = "xdc: error: No space left on device\n"
    assert done.returncode != 0 and line in done.stderr, done.stderr[-3000:]
    stopped = "xdc: error: rank 1: stopped: another rank left the job (gloo: "
    assert done.stderr.index(line) < done.stderr.index(stopped), done.stderr[-3000:]
    assert "[rank1]" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("fault, said, failed", [
    ("1 / 0", "[rank0]: ZeroDivisionError: division by zero\n", "ZeroDivisionError: division by zero"),
    ("raise PermissionError(13, 'Permission denied', str(out))", "xdc: error: {out}: Permission denied\n",
     "PermissionError: [Errno 13] Permission denied: '{out}'"),
], ids=["bug", "oserror"])  # fmt: skip
def test_a_failure_of_rank0s_own_work_stops_the_other_rank_with_one_line(tmp_path, fault, said, failed):
    """Rank 0's work alone (on_main; here taking the lock) failing with a bug or with the machine's error naming a
    file: rank 0 says it as one process would (the bug's traceback, the error's one line), then rank 1 that it stopped,
    in one line. Until 2026-12-02 rank 1 printed the traceback of a RuntimeError("rank 0 failed: ..."), as many as
    there are other ranks, before rank 0's error (and torchrun then stopped rank 0 with SIGTERM)."""
    done = _index_on_two_ranks(tmp_path, textwrap.dedent(f"""
        import contextlib, xdc.cli
        @contextlib.contextmanager
        def holding(out, *args, **kwargs):
            {fault}
            yield
        xdc.cli.holding = holding
    """))
    said, failed = said.format(out=tmp_path / "m.csv"), failed.format(out=tmp_path / "m.csv")
    stopped = f"xdc: error: rank 1: stopped: rank 0 failed ({failed}); see its error\n"
    assert done.returncode != 0 and said in done.stderr and stopped in done.stderr, done.stderr[-3000:]
    assert done.stderr.index(said) < done.stderr.index(stopped), done.stderr[-3000:]
    assert "[rank1]" not in done.stderr and done.stderr.count("xdc: error: rank 1:") == 1, done.stderr[-3000:]


ELSEWHERE = """
import os
if os.environ["RANK"] == "1":  # rank 1's node does not see the inputs (its torchrun started elsewhere; a relative path)
    os.chdir("elsewhere")
"""
KILLED = """
import os, signal, xdc.data.index
if os.environ["RANK"] == "1":  # rank 1 killed (by the kernel's OOM killer, say) in its work, once it has joined the job
    xdc.data.index.check_paths = lambda paths: os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("fault, own", [
    (ELSEWHERE, "xdc: error: rank 1: path not found: videos\n"), (KILLED, "exitcode  : -9"),
], ids=["user-error", "killed"])  # fmt: skip
def test_a_rank_that_leaves_on_its_own_stops_the_others_with_one_line(tmp_path, fault, own):
    """Rank 1 ends alone (its own error, said before it leaves, or a kill) while rank 0 goes on to the job's next
    collective (the handing out of the files), which fails as gloo finds rank 1 gone: rank 0 says in one line that it
    stopped for that, after rank 1's error. Until 2026-12-02 it printed gloo's RuntimeError with its traceback.
    torchrun's --monitor-interval of 3 s, not its 0.1: time to say it before torchrun stops it, on a loaded machine."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"\x00" * 1000)
    (tmp_path / "elsewhere").mkdir()
    done = _index_on_two_ranks(tmp_path, fault, inputs="videos", torchrun=("--monitor-interval=3",))
    err = done.stderr
    stopped = [line for line in err.splitlines() if "stopped" in line]
    assert done.returncode != 0 and own in err and len(stopped) == 1, err[-3000:]
    assert stopped[0].startswith("xdc: error: stopped: another rank left the job (gloo: "), err[-3000:]
    assert stopped[0].endswith("); its error, or torchrun's report of its end, says why"), err[-3000:]
    assert err.index(own) < err.index(stopped[0]) or own.startswith("exitcode"), err[-3000:]
    assert "[rank0]" not in err and "RuntimeError" not in err, err[-3000:]  # no traceback of rank 0's


def test_gloos_errors_of_a_peer_gone_are_told_from_other_runtime_errors():
    """The survivors' one line is for gloo's errors of a rank that left the job (the first message as gloo 2.14's
    words it; the others as its source words them); any other RuntimeError keeps its traceback: gloo's timeout,
    another library's broken pipe, and gloo's error raised while this rank handled an error of its own."""
    from xdc.cli import _peer_left

    place = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] "
    for message, left in [
        ("Connection closed by peer [127.0.0.1]:22200. This is typically caused by a remote worker crashing. Check "
         "the logs of the remote worker before reporting an error. GLHF! \U0001f3d6\ufe0f",
         "Connection closed by peer [127.0.0.1]:22200"),
        ("Read error [10.0.0.2]:41162: Connection reset by peer. This is typically caused by a remote worker hanging "
         "or bugs in the application.", "Read error [10.0.0.2]:41162: Connection reset by peer"),
        ("writev [10.0.0.2]:41162: Broken pipe", "writev [10.0.0.2]:41162: Broken pipe"),
    ]:  # fmt: skip
        assert _peer_left(RuntimeError(place + message)) == left
        assert _peer_left(ValueError(place + message)) is None
    assert _peer_left(RuntimeError(place + "Timed out waiting 1800000ms for recv operation to complete")) is None
    assert _peer_left(RuntimeError("[Errno 32] Broken pipe")) is None
    try:
        try:
            raise UserError("this rank's own")
        except UserError:
            raise RuntimeError(place + "Connection closed by peer [127.0.0.1]:22200. This is ...")
    except RuntimeError as e:
        assert _peer_left(e) is None


KILLED_AT_THE_END = """
import contextlib, os, signal, torch.distributed as dist, xdc.cli, xdc.data.index
if os.environ["RANK"] == "1":  # rank 1 killed as the ranks meet to leave the job together (after they stopped, or done)
    dist.barrier = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
xdc.data.index.build_manifest = lambda *args, **kwargs: None  # every rank's work, done at once
@contextlib.contextmanager
def holding(out, *args, **kwargs):  # the lock, which rank 0 alone takes (on_main): every rank stops with its error
    {fault}
    yield
xdc.cli.holding = holding
"""


@pytest.mark.parametrize("fault, said", [
    ("raise PermissionError(13, 'Permission denied', str(out))", "xdc: error: {out}: Permission denied\n"),
    ("raise xdc.cli.UserError('no room for ' + str(out))", "xdc: error: no room for {out}\n"),
    ("pass", "xdc: error: stopped: another rank left the job (gloo: "),
], ids=["rank0-failed", "shared-error", "done"])  # fmt: skip
def test_a_rank_killed_as_the_ranks_meet_to_leave_ends_the_others_with_their_line(tmp_path, fault, said):
    """Every rank stopped with rank 0's error (a RankFailed, a SharedError), or finished its work, and they meet in a
    barrier to leave the job together, where rank 0 finds rank 1 gone (killed there): rank 0's own error, said before,
    is the last line of it (a finished rank says in one line that another left). Until 2026-12-02 gloo's error of the
    barrier followed with a traceback (the error of a second barrier, as the rank left the job, inside it)."""
    done = _index_on_two_ranks(tmp_path, KILLED_AT_THE_END.format(fault=fault), torchrun=("--monitor-interval=3",))
    err, said = done.stderr, said.format(out=tmp_path / "m.csv")
    assert done.returncode != 0 and err.count(said) == 1 and "exitcode  : -9" in err, err[-3000:]
    assert "[rank0]" not in err and "RuntimeError" not in err, err[-3000:]  # no traceback of rank 0's
    assert "xdc: error: rank 1" not in err, err[-3000:]


def test_rank0s_own_error_is_said_where_the_other_rank_left_as_its_work_failed(tmp_path):
    """Rank 0's work alone (on_main; here taking the lock) kills rank 1 as it waits (as the kernel's OOM killer would),
    then fails: rank 0 says its own error, as one process would. Until 2026-12-02 the broadcast of it to rank 1 failed
    and rank 0 said only that another rank left the job: its own error was lost."""
    done = _index_on_two_ranks(tmp_path, torchrun=("--monitor-interval=3",), fault=textwrap.dedent("""
        import contextlib, os, signal, time, xdc.cli
        if os.environ["RANK"] == "1":
            open("rank1.pid", "w").write(str(os.getpid()))
        @contextlib.contextmanager
        def holding(out, *args, **kwargs):
            # torchrun, once its monitor (every 3 s) sees rank 1 gone, stops rank 0 (SIGTERM): on a loaded machine
            # that came before rank 0 had said its line. What rank 0 says is the test, not how torchrun stops it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.kill(int(open("rank1.pid").read()), signal.SIGKILL)
            time.sleep(0.5)  # gone: its sockets closed
            raise PermissionError(13, "Permission denied", str(out))
            yield
        xdc.cli.holding = holding
    """))
    err = done.stderr
    assert done.returncode != 0 and f"xdc: error: {tmp_path / 'm.csv'}: Permission denied\n" in err, err[-3000:]
    assert "exitcode  : -9" in err and "stopped" not in err and "RuntimeError" not in err, err[-3000:]


def test_a_rank_that_never_joins_the_job_is_said_in_one_line(tmp_path):
    """Rank 1 never joins the group (it ended or hangs before: a --config its node lacks, say; here asleep), and rank 0
    waits for it until the group's timeout (30 minutes; 3 s here): rank 0 says in one line what it waited for and what
    to check. Until 2026-12-02 c10d's DistStoreError, with a traceback."""
    done = _index_on_two_ranks(tmp_path, torchrun=("--monitor-interval=3",), fault=textwrap.dedent("""
        import functools, os, time, torch.distributed as dist
        from datetime import timedelta
        if os.environ["RANK"] == "1":
            time.sleep(120)
        dist.init_process_group = functools.partial(dist.init_process_group, timeout=timedelta(seconds=3))
    """))
    err = done.stderr
    line = ("xdc: error: the job's other ranks did not all join it within 3 s (DistStoreError: wait timeout after "
            "3000ms, keys: ")  # fmt: skip
    assert done.returncode != 0 and err.count(line) == 1, err[-3000:]
    assert "torchrun output (a --config or file that node lacks, say)" in err, err[-3000:]
    assert err.count("DistStoreError") == 1 and "xdc/training/distributed.py" not in err, err[-3000:]  # no traceback


AT_WORK = """
import os, time, torch.distributed as dist, xdc.data.index
def build_manifest(*args, ctx, **kwargs):  # every rank's work
    os.write(1, b"at work\\n")  # one write: the ranks' lines never mix
    if {rank0_waits} and ctx.main:
        dist.barrier()  # for rank 1, which does not come
    time.sleep(120)
xdc.data.index.build_manifest = build_manifest
"""
ALONE = """
import contextlib, os, signal, time, xdc.cli
@contextlib.contextmanager
def holding(out, *args, **kwargs):  # the lock, which rank 0 alone takes (on_main): rank 1 waits for it in gloo
    # torchrun stops the ranks (SIGTERM) once the Ctrl-C reaches it: on a loaded machine that came before rank 0 had
    # said its line (seen once). What rank 0 says is the test, not how torchrun stops it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(1, b"at work\\n")  # one write: the ranks' lines never mix
    time.sleep(120)
    yield
xdc.cli.holding = holding
"""


IN_A_DEL = """
import os, time, torch.distributed as dist, xdc.data.index
class Loader:
    def __del__(self):  # as a DataLoader's iterator joins its workers at an epoch's end
        time.sleep(60)
def build_manifest(*args, ctx, **kwargs):  # every rank's work
    os.write(1, b"at work\\n")  # one write: the ranks' lines never mix
    if ctx.main:
        Loader()  # its __del__ at once, where Python ignores the Ctrl-C (printing "Exception ignored in")
        dist.barrier()  # and rank 0 goes on to its next collective: rank 1 has left the job
    time.sleep(120)
xdc.data.index.build_manifest = build_manifest
"""


@pytest.mark.parametrize("fault, working", [
    (AT_WORK.format(rank0_waits=False), 2), (AT_WORK.format(rank0_waits=True), 2), (ALONE, 1), (IN_A_DEL, 2),
], ids=["at-work", "rank0-in-a-collective", "rank0-at-work-alone", "rank0-in-a-del"])  # fmt: skip
def test_a_ctrl_c_stops_every_rank_and_is_said_once(tmp_path, fault, working):
    """A Ctrl-C in the terminal reaches torchrun (its process group; each rank has a session of its own), which
    passes SIGINT to every rank: the job stops wherever its ranks are (rank 0 or 1 waiting in a gloo collective
    too), and says it once, rank 0's line. Until 2026-12-02 each rank said it. A Ctrl-C that Python ignored as it came
    in a ``__del__`` (of a DataLoader's iterator, which joins its workers at each epoch's end: seen in `eval finetune`)
    is said too: until 2026-12-02 rank 0 went on and said only that another rank left the job, after the traceback of
    the ignored KeyboardInterrupt."""
    process = subprocess.Popen(_index_job(tmp_path, fault), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=TORCHRUN_ENV, start_new_session=True)  # fmt: skip
    try:
        assert [process.stdout.readline() for _ in range(working)] == ["at work\n"] * working
        os.killpg(process.pid, signal.SIGINT)
        err = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            kill_with_children(process)
    assert process.returncode != 0
    assert err.count("xdc: interrupted") == 1 and "[rank" not in err, err[-3000:]
    assert "stopped" not in err and "KeyboardInterrupt" not in err, err[-3000:]


@pytest.mark.parametrize("rank0_waits", [False, True], ids=["at-work", "rank0-in-a-collective"])
def test_a_sigterm_to_torchrun_stops_every_rank_and_is_said_once(tmp_path, rank0_waits):
    """A scheduler's preemption: SIGTERM to torchrun alone, which passes it to every rank. The ranks stop as on a
    Ctrl-C, and the job says `xdc: terminated` once. Until 2026-12-03 its default action killed each rank without a
    word."""
    process = subprocess.Popen(_index_job(tmp_path, AT_WORK.format(rank0_waits=rank0_waits)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV, start_new_session=True)  # fmt: skip
    try:
        assert [process.stdout.readline() for _ in range(2)] == ["at work\n"] * 2
        ranks = child_pids(process.pid)
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            kill_with_children(process)
    assert process.returncode != 0 and len(ranks) == 2 and not any(still_running(pid) for pid in ranks)
    assert err.count("xdc: terminated") == 1 and "[rank" not in err, err[-3000:]
    assert "stopped" not in err and "KeyboardInterrupt" not in err, err[-3000:]


@pytest.mark.parametrize("env, said", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 in the environment, but not RANK, MASTER_ADDR, MASTER_PORT: a job of several "
                          "processes is started by torchrun (torchrun --nproc_per_node 2 -m xdc.cli ...)"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 in the environment, but not MASTER_ADDR, MASTER_PORT"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' in the environment is not a number of processes"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "rank 2: RANK='2' in the environment is not one of the WORLD_SIZE=2 processes' ranks (0 to 1)"),
], ids=["world-size-alone", "no-master", "not-a-number", "rank-out-of-range"])  # fmt: skip
def test_an_environment_that_is_no_torchrun_jobs_is_said_in_one_line(tmp_path, env, said):
    """WORLD_SIZE without torchrun (left in a shell, set by a scheduler): until 2026-12-03 c10d's traceback (RANK or
    MASTER_ADDR "expected, but not set", or int()'s ValueError) after the command had started; now one line, and the
    output untouched. LOCAL_RANK alone (no WORLD_SIZE) is a process alone, as before."""
    out = tmp_path / "out"
    bare = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    # pretrain, and index (which shares files out over the ranks without torch: xdc.cli._on_ranks)
    for args in (["pretrain", "--data", str(tmp_path / "m.csv"), "--out", str(out)],
                 ["index", str(tmp_path), "--out", str(out / "m.csv")]):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "xdc.cli", *args], capture_output=True, text=True, timeout=120,
                              env={**bare, **env})  # fmt: skip
        assert done.returncode == 2 and done.stderr.startswith(f"xdc: error: {said}"), done.stderr[-3000:]
        assert done.stderr.count("\n") == 1 and not out.exists(), done.stderr[-3000:]


@pytest.mark.parametrize("rank", ["abc", "1"])
def test_a_rank_left_in_a_shell_is_no_jobs(tmp_path, rank):
    """RANK without WORLD_SIZE (no torchrun) is a process alone, rank 0: until 2026-12-03 RANK=abc gave int()'s
    traceback (in the warning's check of rank 0, and in the line of an error), and RANK=1 kept the warning unsaid
    and named a "rank 1" in the error."""
    bare = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(tmp_path / "m.csv"), "--out",
                           str(tmp_path / "out"), "--set", "finetune.lr=0.5"], capture_output=True, text=True,
                          timeout=120, env={**bare, "RANK": rank})  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "WARNING: xdc pretrain reads no finetune.* or synthetic.* settings (xdc eval finetune and make-synthetic take "
        "theirs); not used: finetune.lr",
        f"xdc: error: manifest not found: {tmp_path / 'm.csv'}",
    ]  # fmt: skip


def test_torchrun_variables_that_are_no_numbers_are_one_line(monkeypatch):
    """LOCAL_WORLD_SIZE, which shares out a node's cores (data.workers auto), and LOCAL_RANK, which chooses a rank's
    GPU, that are no numbers: a UserError, not int()'s ValueError (until 2026-12-03)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(UserError, match="^LOCAL_WORLD_SIZE='two' in the environment is not a number of processes"):
        load_config(None).data.workers_on("cuda")
    job = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(UserError, match="^LOCAL_RANK='first' in the environment is not a number"):
        gpu_index({**job, "LOCAL_RANK": "first"}, 2)
    with pytest.raises(UserError, match="^RANK='²' in the environment is not one of"):  # a digit that int() refuses
        job_ranks({**job, "RANK": "²"})


def test_the_gpu_of_a_rank_is_its_place_on_its_node():
    """gpu_index, which init_distributed binds each rank's GPU with (tests/test_cuda.py runs that on a GPU): a
    torchrun job's rank takes GPU LOCAL_RANK; a process alone the first, whatever LOCAL_RANK a shell left (until
    2026-12-03 that one); a node that runs more ranks than it has GPUs is one line naming both numbers (until
    2026-12-03 CUDA's "invalid device ordinal" traceback on the ranks past its GPUs)."""
    job = {"WORLD_SIZE": "4", "RANK": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert gpu_index({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2) == 0
    assert gpu_index({**job, "WORLD_SIZE": "1", "LOCAL_RANK": "1"}, 2) == 0
    assert gpu_index({**job, "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2) == 1
    assert gpu_index({**job, "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 8) == 1
    assert gpu_index({**job, "RANK": "0"}, 1) == 0  # a launcher that sets no LOCAL_RANK: one rank per node
    too_many = "^4 processes of the job on this node \\(torchrun --nproc_per_node 4\\), but it has 2 GPU\\(s\\)"
    for local in ("0", "3"):  # every rank of the node stops, not only those past its GPUs
        with pytest.raises(UserError, match=too_many + ": each process needs a GPU of its own; start at most 2 per"):
            gpu_index({**job, "LOCAL_RANK": local, "LOCAL_WORLD_SIZE": "4"}, 2)
    with pytest.raises(UserError, match="GPU\\(s\\) \\(CUDA_VISIBLE_DEVICES=0,1\\): "):
        gpu_index({**job, "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3", "CUDA_VISIBLE_DEVICES": "0,1"}, 2)
    with pytest.raises(UserError, match="^3 processes of the job on this node"):  # no LOCAL_WORLD_SIZE: at least 3
        gpu_index({**job, "LOCAL_RANK": "2"}, 2)


def _two_nodes(tmp_path: Path, *jobs: list[str], fail: bool = True) -> list[str]:
    """``xdc`` of ``jobs[node]`` as node 0 and node 1 of a torchrun job, one rank each, each node in a folder of its
    own (tmp_path/nodeN) where a relative --out is that node's own disk: the stderr of each, which must ``fail``
    (else succeed)."""
    per_node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"]  # fmt: skip
    launches = []
    for node, job in enumerate(jobs):
        (tmp_path / f"node{node}").mkdir(exist_ok=True)
        launches.append(subprocess.Popen([*per_node, f"--node_rank={node}", "-m", "xdc.cli", *job], text=True,
                                         cwd=tmp_path / f"node{node}", env=TORCHRUN_ENV, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE))  # fmt: skip
    errors = [launch.communicate(timeout=300)[1] for launch in launches]
    assert all((launch.returncode != 0) == fail for launch in launches), [error[-3000:] for error in errors]
    return errors


def test_ranks_that_do_not_share_the_run_folder_stop_with_one_line(tmp_path):
    """A resume whose nodes do not share the run folder (each node's --out on its own disk; here a folder of its own):
    until 2026-12-03 rank 1 stopped alone with "nothing to resume in run", where rank 0 had the run's checkpoint; now
    rank 0 says for every rank what each sees there. A new run on such disks goes on as before (the ranks agree)."""
    run = tmp_path / "node0" / "run"
    (run / "checkpoints").mkdir(parents=True)  # what rank 0 sees: a run (its files are not read before the check)
    (run / "config.yaml").write_text("{}\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    job = ["pretrain", "--out", "run", "--resume"]
    errors = _two_nodes(tmp_path, job, job)
    said = ("xdc: error: --out run: rank 0 sees config.yaml, checkpoints/last.pt there, rank 1 no run: the ranks' "
            "nodes do not share the run folder; put it on a filesystem that every node sees, at the same path\n")
    assert errors[0].count("xdc: error") == 1 and said in errors[0], errors[0][-3000:]
    assert "xdc: error" not in errors[1] and "nothing to resume" not in errors[1], errors[1][-3000:]
    assert not (tmp_path / "node1" / "run").exists()


def test_a_new_run_whose_nodes_do_not_share_its_folder_trains_and_says_so(tmp_path):
    """Each node's --out on its own disk: a new run goes on, the other node reading the manifest itself, as before,
    and now says at its start that a resume will stop (until 2026-12-03 that came to light only at the resume)."""
    manifest = synthetic_manifest(tmp_path, 8, 2, seed=0)
    job = ["pretrain", "--data", str(manifest), "--out", "run", "--preset", "tiny", "--k", "2", "--rounds", "1",
           "--set", "train.batch_size=4", "--set", "data.workers=0"]  # fmt: skip
    errors = _two_nodes(tmp_path, job, job, fail=False)
    assert "does not see" not in errors[0] and (tmp_path / "node0" / "run" / "encoders.pt").exists(), errors[0]
    said = ("WARNING: rank 1 does not see run/videos, which rank 0 wrote: its node does not share the run folder, so "
            "it reads the manifest itself, and a --resume of this run will stop; put --out on a filesystem that every "
            "node sees\n")  # fmt: skip
    assert errors[1].count(said) == 1 and "xdc: error" not in errors[1], errors[1][-3000:]


def test_ranks_started_with_other_settings_stop_before_the_run_starts(tmp_path):
    """Each node's torchrun gives its ranks that node's command line: until 2026-12-03 a node started with another
    train.lr trained on with it, its weights apart from the other ranks', unsaid (config.yaml has rank 0's). Now
    rank 0 names what differs, and nothing is written; data.workers, which fits each node's cores, may differ."""
    manifest = tmp_path / "manifest.csv"  # not read: the settings are compared first
    job = ["pretrain", "--data", str(manifest), "--out", str(tmp_path / "run"), "--preset", "tiny",
           "--set", "train.batch_size=8", "--set", "data.workers=0"]  # fmt: skip
    errors = _two_nodes(tmp_path, job, [*job, "--set", "train.lr=0.5", "--set", "data.workers=1", "--k", "4"])
    said = ("xdc: error: rank 1 was started with other settings than rank 0: train.k=4 (rank 0: 64), train.lr=0.5 "
            "(rank 0: 0.05); start every node with the same command line and --config\n")
    assert errors[0].count("xdc: error") == 1 and said in errors[0], errors[0][-3000:]
    assert "xdc: error" not in errors[1], errors[1][-3000:]
    assert not (tmp_path / "run").exists()
