"""The extraction cache (train.extract_cache): kept clips are the decoded ones, bit for bit, and need no file; a
record cut short, a cache made for other clips or one a restart may have cut short is not used; a full disk is
a warning, not a crash; a run with the cache trains exactly as one without, on one rank or two."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import gray_frames, run_two_ranks, synthetic_manifest, torchrun_command
import xdc
from xdc.config import load_config
from xdc.data.clip_cache import ClipCache, boot_id
from xdc.data.datasets import EvalClips
from xdc.data.encode import write_av
from xdc.data.manifest import Manifest
from xdc.training.checkpoint import load
from xdc.training.distributed import Dist
from xdc.training.pretrain import Pretrainer, pretrain

TINY = ["train.batch_size=8", "train.k=4", "data.workers=0"]
DESCRIBE = {"clip": "tiny"}


@pytest.fixture
def manifest(tmp_path) -> Path:
    """Files of its own (tests break them): 12 videos of 3 classes."""
    return synthetic_manifest(tmp_path / "set", 12, 3, seed=0)


def eval_clips(manifest: Path, device_logmel: bool = True) -> EvalClips:
    cfg = load_config(None, [], preset="tiny").data
    return EvalClips(Manifest.load(manifest), cfg, clips=1, raw_video=True, device_logmel=device_logmel)


def cache_for(clips: EvalClips, stem: Path, keys: range | None = None, describe: dict = DESCRIBE) -> ClipCache:
    cache = ClipCache(stem, keys if keys is not None else range(len(clips)), clips.cache_fields(), describe)
    assert cache.open() is None
    return cache


def same(a: dict, b: dict, kept: bool | None = None) -> bool:
    """Items ``a`` (``kept``: whether it says it came from a cache) and ``b`` (read without one) are equal."""
    a = dict(a)
    if a.pop("kept", None) is not kept or a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype if torch.is_tensor(a[k]) else a[k] == b[k]
               for k in a)  # fmt: skip


def break_files(manifest: Path) -> None:
    videos = Manifest.load(manifest)
    for i in range(len(videos)):
        Path(videos.path(i)).write_bytes(b"not a video any more")


@pytest.mark.parametrize("device_logmel", [True, False], ids=["waveform", "logmel"])
def test_kept_clips_are_the_decoded_ones_and_need_no_file(manifest, tmp_path, device_logmel):
    clips = eval_clips(manifest, device_logmel)
    decoded = [clips[k] for k in range(len(clips))]
    clips.cache = cache_for(clips, tmp_path / "c", range(0, len(clips), 2))  # a rank's share: the even videos
    clips.cache.begin()
    assert all(same(clips[k], decoded[k], kept=False) for k in range(len(clips)))  # decoded; the even ones kept
    clips.cache.end()
    break_files(manifest)

    again = eval_clips(manifest, device_logmel)
    again.cache = cache_for(again, tmp_path / "c", range(0, len(clips), 2))
    for k in range(len(clips)):
        if k % 2 == 0:
            assert same(again[k], decoded[k], kept=True), k  # read back: the file is no longer needed
        else:
            assert "failure" in again[k]  # another rank's video: decoded, and its file is broken now


def test_a_clip_moved_into_the_sound_is_kept_with_its_start(tmp_path):
    """A video whose sound is its first second: its centred clip is read where the sound is (EvalClips), and the
    start read back from the cache is that one, not the centre's."""
    write_av(tmp_path / "early.mp4", gray_frames(80, 32, 48), 16, 0.1 * np.ones(16000, np.float32), 16000)
    row = dict(path=str(tmp_path / "early.mp4"), status="ok", duration_s="5.0", has_audio="1")
    clips = EvalClips(Manifest.from_rows([row]), load_config(None, [], preset="tiny").data, clips=1, raw_video=True)
    decoded = clips[0]
    assert decoded["start"] < 1.0 < float(clips.latest_start(0)) / 2  # moved from the centre into the sound
    clips.cache = cache_for(clips, tmp_path / "c")
    assert same(clips[0], decoded, kept=False)
    (tmp_path / "early.mp4").unlink()
    assert same(clips[0], decoded, kept=True)


def test_a_record_cut_short_is_decoded_again(manifest, tmp_path):
    clips = eval_clips(manifest)
    decoded = [clips[k] for k in range(len(clips))]
    clips.cache = cache = cache_for(clips, tmp_path / "c")
    assert all(same(clips[k], decoded[k], kept=False) for k in range(len(clips)))
    last = len(clips) - 1
    with open(cache.data, "r+b") as f:
        f.truncate(cache.size - 1)  # the last record lost its last byte: a write cut short
        f.seek(4 * cache.record - len(cache.mark))
        f.write(bytes(len(cache.mark)))  # record 3 its mark, as a write cut short leaves it
    assert cache.read(last) is None and cache.read(3) is None
    assert cache.read(2) is not None
    assert same(clips[3], decoded[3], kept=False) and same(clips[last], decoded[last], kept=False)  # and kept again
    assert cache.read(3) is not None and cache.read(last) is not None


def test_another_caches_records_in_the_same_file_are_misses(manifest, tmp_path):
    """Two runs' cache folders linked to one place: a run started later empties the file and fills it with its
    own clips, which a loader worker of the first, opening the file anew, must not take for its own."""
    clips = eval_clips(manifest)
    mine = cache_for(clips, tmp_path / "c")
    other = ClipCache(tmp_path / "c", range(len(clips)), clips.cache_fields(), {**DESCRIBE, "run": "another"})
    other.remove()
    assert other.open() is None
    for k in range(len(clips)):
        other.write(k, clips[(k + 1) % len(clips)])  # another run's video at this row
    worker = pickle.loads(pickle.dumps(mine))  # as a loader worker gets it: it opens the file itself
    assert all(other.read(k) is not None and worker.read(k) is None for k in range(len(clips)))


def _linked_runs(tmp_path: Path) -> Path:
    """Run folders a and b whose extract_cache is a link to one folder (one local SSD), which is returned."""
    shared = tmp_path / "ssd"
    shared.mkdir()
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "extract_cache").symlink_to(shared)
    return shared


def test_runs_whose_cache_folders_link_to_one_place_read_only_their_own(manifest, tmp_path):
    """A run killed, another started with its extraction cache at the same place (ln -s), the first resumed: the
    first reads back its own clips, not the other's (until 2026-12-02 it read the other's, which had overwritten
    its file; until 2026-12-03 it decoded them again)."""
    _linked_runs(tmp_path)
    settings = load_config(None, [*TINY, "train.extract_cache=true"], preset="tiny")
    expected = Pretrainer(settings, manifest, tmp_path / "a", Dist())._extract()  # killed after this
    other = synthetic_manifest(tmp_path / "other", 12, 3, seed=1)  # as many videos, other ones
    Pretrainer(settings, other, tmp_path / "b", Dist())._extract()
    resumed = Pretrainer(settings, manifest, tmp_path / "a", Dist(), resume=True)
    features = resumed._extract()
    assert resumed.kept_clips == 12 and all(torch.equal(features[e], expected[e]) for e in expected)


class Killed(Exception):
    """A run's process killed where it raises."""


def _killed_after_a_round(manifest, out: Path, monkeypatch):
    """The settings of a 2-round run with an extraction cache, started in ``out`` and killed after its first round."""
    from xdc.training.runlog import RunLog

    settings = load_config(None, [*TINY, "train.rounds=2", "train.epochs=1", "train.extract_cache=true"],
                           preset="tiny")  # fmt: skip
    write = RunLog.write

    def killed_after_a_round(self, kind: str, step: int, **values) -> None:
        write(self, kind, step, **values)
        if kind == "round":
            raise Killed

    monkeypatch.setattr(RunLog, "write", killed_after_a_round)
    with pytest.raises(Killed):
        pretrain(settings, manifest, out, resume=False, ctx=Dist())
    monkeypatch.undo()
    return settings


def test_runs_whose_cache_folders_link_to_one_place_keep_each_others_files(manifest, tmp_path, monkeypatch):
    """A run killed after its first round; another, its cache folder linked to the same place, started and
    finished: the first run's files are still there, byte for byte, and its resume reads its clips back. Until
    2026-12-03 both named their files rank0of1: the second run's start emptied the first's, and its end deleted
    them."""
    shared = _linked_runs(tmp_path)
    settings = _killed_after_a_round(manifest, tmp_path / "a", monkeypatch)

    def files() -> dict[str, str]:
        return {f.name: hashlib.blake2b(f.read_bytes()).hexdigest() for f in shared.iterdir()}

    first = files()
    assert any(f.suffix == ".bin" and f.stat().st_size > 0 for f in shared.iterdir())

    pretrain(settings, synthetic_manifest(tmp_path / "other", 12, 3, seed=1), tmp_path / "b", resume=False,
             ctx=Dist())  # fmt: skip
    assert files() == first  # what the second run kept there, it removed
    assert (tmp_path / "b" / "extract_cache").is_symlink()  # the link stays, as made
    pretrain(settings, manifest, tmp_path / "a", resume=True, ctx=Dist())
    records = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["extract_kept"] for r in records if r["kind"] == "round"][-1] == len(Manifest.load(manifest))
    assert shared.is_dir() and not list(shared.iterdir())  # each run's end removed its own files


def test_a_start_removes_only_cache_files_of_its_own_run(manifest, tmp_path):
    """In a folder that runs' caches share: this run's files of another number of ranks go, and those xdc before
    2026-12-03 named rank{r}of{W} that name this run or none; another run's stay, of any number of ranks."""
    shared = _linked_runs(tmp_path)
    settings = load_config(None, [*TINY, "train.extract_cache=true"], preset="tiny")
    mine = Pretrainer(settings, manifest, tmp_path / "a", Dist()).eval_set.cache.data
    theirs = Pretrainer(settings, manifest, tmp_path / "b", Dist()).eval_set.cache.data
    theirs.rename(shared / theirs.name.replace("of1.", "of2."))  # the other run's, on 2 ranks
    mine.with_name(mine.name.replace("of1.", "of3.")).write_bytes(b"this run's, on 3 ranks")

    def old(stem: str, run: Path | None) -> None:
        (shared / f"{stem}.bin").write_bytes(b"records")
        if run is not None:
            items = {"clip": {}, "run": str(run.resolve())}
            (shared / f"{stem}.json").write_text(json.dumps({"identity": {"version": 3, "items": items}}))

    old("rank0of3", tmp_path / "b")  # another run's, of the older code
    old("rank0of1", tmp_path / "a")  # this run's
    old("rank1of2", None)  # of an older code still, or a pass not begun: whose, unknown
    Pretrainer(settings, manifest, tmp_path / "a", Dist(), resume=True)
    left = {f.name for f in shared.iterdir()}
    assert left == {mine.name, theirs.name.replace("of1.", "of2."), "rank0of3.bin", "rank0of3.json"}


def test_a_shared_cache_keeps_the_files_of_a_run_this_machine_does_not_see(manifest, tmp_path):
    """A folder that runs share by links (ln -s) may hold the files of a run on another node, whose path this one
    does not see: they stay; those of a run seen here that keeps its cache elsewhere (the run copied from) go."""
    shared = _linked_runs(tmp_path)
    settings = load_config(None, [*TINY, "train.extract_cache=true"], preset="tiny")
    (tmp_path / "seen" / "extract_cache").mkdir(parents=True)  # a run of this machine, its cache its own

    def files_of(stem: str, run: Path) -> None:
        (shared / f"{stem}.bin").write_bytes(b"records")
        items = {"clip": {}, "run": str(run)}
        (shared / f"{stem}.json").write_text(json.dumps({"identity": {"version": 3, "items": items}}))

    files_of("0badcafe-rank0of1", Path("/nodes/elsewhere/run"))
    files_of("0badf00d-rank0of1", tmp_path / "seen")
    mine = Pretrainer(settings, manifest, tmp_path / "a", Dist()).eval_set.cache.data.name.split("-")[0]
    left = {f.name for f in shared.iterdir() if not f.name.startswith(mine)}
    assert left == {"0badcafe-rank0of1.bin", "0badcafe-rank0of1.json"}


def test_a_run_folder_copied_and_resumed_removes_the_cache_files_of_its_old_path(manifest, tmp_path, monkeypatch):
    """A run killed after its first round, its folder copied (cp -r) and moved (mv), each copy resumed to its end:
    neither keeps the files of the path it was copied from (until 2026-12-03 they stayed in its extract_cache/ for
    good, a clip per video), and the run copied from keeps its own, byte for byte."""
    settings = _killed_after_a_round(manifest, tmp_path / "a", monkeypatch)
    kept = {f.name: f.read_bytes() for f in (tmp_path / "a" / "extract_cache").iterdir()}
    assert any(name.endswith(".bin") for name in kept)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    shutil.copytree(tmp_path / "a", tmp_path / "before-move")
    (tmp_path / "before-move").rename(tmp_path / "moved")
    for run in ("copy", "moved"):
        pretrain(settings, manifest, tmp_path / run, resume=True, ctx=Dist())
        assert (tmp_path / run / "encoders.pt").exists()
        assert not (tmp_path / run / "extract_cache").exists()  # its own files removed at its end, then the folder
    assert {f.name: f.read_bytes() for f in (tmp_path / "a" / "extract_cache").iterdir()} == kept


def test_what_a_reopened_cache_keeps(manifest, tmp_path):
    clips = eval_clips(manifest)
    stem = tmp_path / "c"

    def filled() -> ClipCache:
        cache = cache_for(clips, stem)
        cache.begin()
        for k in range(len(clips)):
            cache.write(k, clips[k])
        return cache

    def kept(**changes) -> bool:
        cache = ClipCache(stem, changes.get("keys", range(len(clips))), clips.cache_fields(),
                          changes.get("describe", DESCRIBE))  # fmt: skip
        assert cache.open() is None
        return cache.read(0) is not None

    filled().end()
    assert kept()  # the last pass ended: its records are on disk
    assert not kept(describe={"clip": "other settings"})  # and emptied: clips of other settings are not these
    assert not kept()

    filled()  # a pass that did not end (the process was killed) ...
    if boot_id():
        assert kept()  # ... on a machine that has not restarted since: its written records are whole
    filled()
    meta = json.loads(cache_for(clips, stem).meta.read_text())
    stem.with_suffix(".json").write_text(json.dumps({**meta, "synced": False, "boot": "another boot"}))
    assert not kept()  # after a restart, records of an unfinished pass may not have reached the disk
    assert cache_for(clips, stem).data.stat().st_size == 0
    filled().end()
    assert not kept(keys=range(0, len(clips), 2))  # the videos shared out over another number of ranks


def test_a_cache_the_disk_cannot_hold_is_refused(manifest, tmp_path):
    clips = eval_clips(manifest)
    why = ClipCache(tmp_path / "c", range(10**13), clips.cache_fields(), DESCRIBE).open()
    assert why is not None and "GB" in why and str(tmp_path) in why
    # a share of about half the free space: room for one rank's, not for those of the two ranks of a node
    record = ClipCache(tmp_path / "c", range(1), clips.cache_fields(), DESCRIBE).record
    half = range(int(0.5 * shutil.disk_usage(tmp_path).free / record))
    assert ClipCache(tmp_path / "c", half, clips.cache_fields(), DESCRIBE).open(sharers=1) is None
    why = ClipCache(tmp_path / "c", half, clips.cache_fields(), DESCRIBE).open(sharers=2)
    assert why is not None and "2 ranks x" in why


def test_a_write_that_fails_warns_once_and_is_a_miss(manifest, tmp_path):
    """Past the disk's end (a file-size limit: writes fail with EFBIG, as they would with ENOSPC)."""
    script = f"""
import resource, signal, warnings
from pathlib import Path
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_clip_cache import eval_clips, cache_for
clips = eval_clips(Path({str(manifest)!r}))
cache = cache_for(clips, Path({str(tmp_path / "c")!r}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2 * cache.record, resource.RLIM_INFINITY))
items = [clips[k] for k in range(5)]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for k in range(5):
        cache.write(k, items[k])
print(len(caught), [cache.read(k) is not None for k in range(5)])
print(caught[0].message)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    counts, message = result.stdout.splitlines()
    count, hits = counts.split(" ", 1)
    assert count == "1" and hits == "[True, True, False, False, False]"
    assert "extraction cache" in message and "stops writing" in message


def test_extraction_reads_back_the_kept_clips(manifest, tmp_path):
    """With loader workers (each writes its records): the same features as without the cache, and a second
    extraction needs no file."""
    settings = ["train.batch_size=8", "train.k=4", "data.workers=2"]
    plain = Pretrainer(load_config(None, settings, preset="tiny"), manifest, tmp_path / "plain", Dist())
    cached = Pretrainer(load_config(None, [*settings, "train.extract_cache=true"], preset="tiny"), manifest,
                        tmp_path / "cached", Dist())  # fmt: skip
    expected = plain._extract()
    first = cached._extract()
    break_files(manifest)
    second = cached._extract()
    assert not cached.failures.files
    for e in expected:
        assert torch.equal(first[e], expected[e]) and torch.equal(second[e], expected[e])
    meta = json.loads(cached.eval_set.cache.meta.read_text())
    assert meta["synced"] is True


def test_a_run_with_the_cache_trains_as_one_without(manifest, tmp_path):
    """Re-clustering on a plateau: the held-back videos' clips come from the cache after every epoch too."""
    common = [*TINY, "train.rounds=2", "train.epochs=2", "train.recluster=plateau", "train.holdout_fraction=0.25"]
    for name, extra in (("plain", []), ("cached", ["train.extract_cache=true"])):
        pretrain(load_config(None, [*common, *extra], preset="tiny"), manifest, tmp_path / name, resume=False,
                 ctx=Dist())  # fmt: skip
    a, b = (load(tmp_path / name / "encoders.pt")["encoders"] for name in ("plain", "cached"))
    assert all(torch.equal(a[e][n], b[e][n]) for e in a for n in a[e])
    records = [json.loads(x) for x in (tmp_path / "cached" / "log.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "start" and records[0]["extract_cache"] is True
    assert records[0]["xdc"] == xdc.__version__  # a run's log names the code that made it
    videos = len(Manifest.load(manifest))
    assert [r["extract_kept"] for r in records if r["kind"] == "round"] == [0, videos]  # the log says it worked
    assert not (tmp_path / "cached" / "extract_cache").exists()  # the run ended: its disk given back, the folder too
    assert not (tmp_path / "plain" / "extract_cache").exists()


def _extract_twice(rank: int, world: int, port: int, manifest: Path, out: Path, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = load_config(None, [*TINY, "train.extract_cache=true"], preset="tiny")
    trainer = Pretrainer(cfg, manifest, out, Dist(rank=rank, world_size=world))
    first = trainer._extract()
    dist.barrier()
    if rank == 0:
        break_files(manifest)
    dist.barrier()
    second = trainer._extract()  # every rank reads its own share back
    cache = trainer.eval_set.cache
    result[rank] = {
        "failures": len(trainer.failures.files), "keys": list(cache.keys), "whole": cache.data.stat().st_size,
        "record": cache.record,
        "same": None if first["video"] is None else all(torch.equal(first[e], second[e]) for e in first),
        "complete": None if first["video"] is None else all(not v.isnan().any() for v in second.values()),
    }  # fmt: skip
    dist.destroy_process_group()


def test_two_ranks_keep_their_own_shares(manifest, tmp_path):
    results = run_two_ranks(_extract_twice, manifest, tmp_path / "run")
    videos = len(Manifest.load(manifest))
    for rank, r in results.items():
        assert r["failures"] == 0 and r["keys"] == list(range(rank, videos, 2))
        assert r["whole"] == len(r["keys"]) * r["record"]  # every video of its share, in a file of its own
    assert results[0]["same"] and results[0]["complete"]  # gathered on rank 0: every video, as first extracted


def test_a_run_on_two_ranks_with_the_cache(manifest, tmp_path):
    """Re-clustering on a plateau, the held-back videos shared out as the extraction's; the cache of a run on
    another number of ranks is removed at the start, and this run's at its end."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    settings = [*TINY, "train.rounds=2", "train.epochs=2", "train.recluster=plateau", "train.holdout_fraction=0.25",
                "train.extract_cache=true"]  # fmt: skip
    (out / "extract_cache").mkdir(parents=True)
    (out / "extract_cache" / "rank0of3.bin").write_bytes(b"from a run on 3 ranks")
    command = [*torchrun_command(2), "-m", "xdc.cli", "pretrain", "--data", str(manifest), "--out", str(out),
               "--preset", "tiny", "--method", "xdc", *(f"--set={s}" for s in settings)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, env=env, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "extract_cache").exists()  # the other run's files, then its own, and the folder
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    holdouts = [r for r in records if r["kind"] == "holdout"]
    assert len(holdouts) >= 2 and all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in holdouts)
    videos = len(Manifest.load(manifest))
    assert [r["extract_kept"] for r in records if r["kind"] == "round"] == [0, videos]  # both ranks' shares


def test_a_new_run_does_not_read_the_cache_of_a_run_started_there_before(manifest, tmp_path):
    """A run killed before its first checkpoint leaves its cache; a new run in that folder (not --resume) may list
    other videos at the same rows, so it starts with an empty cache. A resumed run keeps it."""
    settings = load_config(None, [*TINY, "train.extract_cache=true"], preset="tiny")
    first = Pretrainer(settings, manifest, tmp_path / "run", Dist())
    first._extract()
    assert first.kept_clips == 0 and first.eval_set.cache.read(0) is not None
    again = Pretrainer(settings, manifest, tmp_path / "run", Dist())  # a new run in the same folder
    again._extract()
    assert again.kept_clips == 0
    resumed = Pretrainer(settings, manifest, tmp_path / "run", Dist(), resume=True)
    resumed._extract()
    assert resumed.kept_clips == len(resumed.eval_set)


def test_a_resumed_cache_needs_room_only_for_what_it_lacks(manifest, tmp_path):
    clips = eval_clips(manifest)
    cache = cache_for(clips, tmp_path / "c")
    cache.begin()
    for k in range(len(clips)):
        cache.write(k, clips[k])
    cache.end()
    # whole: it needs no more room, however many ranks of the node share the disk (each counted its own file only)
    assert ClipCache(tmp_path / "c", range(len(clips)), clips.cache_fields(), DESCRIBE).open(sharers=10**12) is None


def test_a_cache_that_cannot_be_used_gives_its_disk_back(manifest, tmp_path, monkeypatch, capsys):
    """Refused for room at the start, or its disk failing at the end of a pass (full): the rank goes on without
    it, with a warning, and its files go."""
    import xdc.data.clip_cache as clip_cache

    settings = load_config(None, [*TINY, "train.extract_cache=true"], preset="tiny")
    files = tmp_path / "run" / "extract_cache"
    monkeypatch.setattr(clip_cache, "ROOM", 1e-30)
    refused = Pretrainer(settings, manifest, tmp_path / "run", Dist())
    assert refused.eval_set.cache is None and not list(files.iterdir())
    assert "rank 0 runs without train.extract_cache" in capsys.readouterr().err
    monkeypatch.undo()

    def full_disk(self) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ClipCache, "end", full_disk)
    trainer = Pretrainer(settings, manifest, tmp_path / "run", Dist())
    features = trainer._extract()
    assert trainer.eval_set.cache is None and not list(files.iterdir())
    assert all(not v.isnan().any() for v in features.values())
    assert ("WARNING: the extraction cache's disk failed (No space left on device): rank 0 goes on without "
            "train.extract_cache") in capsys.readouterr().err  # fmt: skip
    monkeypatch.undo()

    def no_space(fd: int) -> None:  # the disk fills as the pass begins: its state file (meta) cannot be written
        raise OSError(28, "No space left on device")

    trainer = Pretrainer(settings, manifest, tmp_path / "run", Dist())
    monkeypatch.setattr(os, "fsync", no_space)
    features = trainer._extract()
    monkeypatch.undo()
    assert trainer.eval_set.cache is None and not list(files.iterdir())
    assert all(not v.isnan().any() for v in features.values())
    assert "WARNING: the extraction cache's disk failed (cannot write " in capsys.readouterr().err


def test_a_new_run_clears_what_a_start_that_never_checkpointed_left(manifest, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "extract_parts" / "rank0").mkdir(parents=True)
    (out / "extract_parts" / "rank0" / "part-00000.pt").write_bytes(b"rows of another run")
    (out / "log.jsonl").write_text('{"kind": "start", "step": 0}\n')
    (out / "config.yaml").write_text("seed: 0\n")  # which a run's start writes first
    pretrain(load_config(None, [*TINY, "train.rounds=1", "train.epochs=1"], preset="tiny"), manifest, out,
             resume=False, ctx=Dist())  # fmt: skip
    assert "holds the start of a run that never reached a checkpoint; its log.jsonl, extract_parts removed" in (
        capsys.readouterr().err)  # fmt: skip
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("start") == 1 and "device" in records[0]
