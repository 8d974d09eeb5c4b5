import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is absent (real-data test; the project's own media cover the core)")
    return path


def unwritable_folder(folder: Path) -> list[str]:
    """Make ``folder`` take no new file (its permissions; a read-only mount alike) and return the prefix of a command
    that honours that: root writes anywhere, so its commands run without that power (CAP_DAC_OVERRIDE). Skips the
    test where neither can be set up."""
    folder.mkdir()
    folder.chmod(0o555)
    drop = ["setpriv", "--bounding-set", "-dac_override", "--"] if os.geteuid() == 0 else []
    if (drop and not shutil.which("setpriv")) or not subprocess.run([*drop, "touch", str(folder / "x")],
                                                                     capture_output=True).returncode:  # fmt: skip
        pytest.skip("no folder can be made unwritable here (root, and no setpriv that drops CAP_DAC_OVERRIDE)")
    return drop


def unreadable_folder(folder: Path) -> list[str]:
    """Make ``folder`` (there already) unlistable (its permissions) and return the prefix of a command that honours
    that: root reads anywhere, so its commands run without that power (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
    Skips the test where neither can be set up."""
    folder.chmod(0)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    if (drop and not shutil.which("setpriv")) or not subprocess.run([*drop, "ls", str(folder)],
                                                                     capture_output=True).returncode:  # fmt: skip
        folder.chmod(0o755)
        pytest.skip("no folder can be made unreadable here (root, and no setpriv that drops CAP_DAC_READ_SEARCH)")
    return drop


def xdc_unable_to_list(folders: list[Path], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``xdc ARGS``, run in ``cwd`` by a process that cannot list ``folders`` (``unreadable_folder``), which are made
    listable again after it."""
    try:
        drop = [unreadable_folder(folder) for folder in folders][0]
        return subprocess.run([*drop, sys.executable, "-m", "xdc.cli", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    finally:  # pytest removes the folders later
        for folder in folders:
            folder.chmod(0o755)


def kill_once_rows_are_kept(command: list[str], side: Path, rows: int = 3) -> None:
    """Start ``command`` and SIGKILL it once its side file ``side`` holds ``rows`` rows after the header (or when
    it ends first, which the caller's assertions then catch)."""
    proc, deadline = subprocess.Popen(command), time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if side.exists() and side.read_text().count("\n") > rows:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()


def kill_with_children(proc: subprocess.Popen) -> list[int]:
    """SIGKILL ``proc`` and its child processes: under torchrun, the ranks, each in a session of its own, so that
    killing torchrun's process group would leave them running. Returns the children's pids once they have ended:
    a rank being killed still holds its run's lock (xdc.locks) for a moment, and the next run would be refused."""
    children = child_pids(proc.pid)
    for pid in [*children, proc.pid]:
        with suppress(ProcessLookupError):  # one that had just ended
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while any(still_running(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(still_running(pid) for pid in children), "a killed rank outlived its SIGKILL by a minute"
    return children


def still_running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended: one of its threads has not. A zombie has, but its first
    thread turns zombie before the others end, and its files (the lock) are closed only once the last has."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for thread in threads:
        try:
            if (thread / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
        except OSError:  # ended meanwhile
            continue
    return False


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # ended meanwhile
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def gray_frames(n: int, height: int = 32, width: int = 48, step: int = 4) -> np.ndarray:
    """Frames whose uniform gray level encodes their index (level = step * i), to identify decoded frames."""
    levels = (np.arange(n) * step).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def write_square(path: Path, width: int, height: int, sar: Fraction, side: int, rotation: int = 0) -> None:
    """A file of ``width`` x ``height`` coded pixels of aspect ``sar`` (a pixel's displayed width over its height)
    showing a white square ``side`` displayed pixels wide and tall on black, centred: ``side / sar`` coded pixels
    wide. Checks that the file states the aspect (the container's and the bitstream's, as FFmpeg reads them)."""
    from xdc.data.encode import write_av

    image = np.zeros((height, width, 3), np.uint8)
    coded = side / sar
    image[(height - side) // 2 : (height + side) // 2, round((width - coded) / 2) : round((width + coded) / 2)] = 255
    write_av(path, np.repeat(image[None], 4, axis=0), 8, None, rotation=rotation, sample_aspect=sar)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio) == (sar, sar)


def square_geometry(image: np.ndarray) -> tuple[float, float, float, float]:
    """Width, height, centre column and centre row of a bright square on black, in pixels: its centre of brightness,
    and the brightness along the row and the column through it over the brightness there (exact through blurred
    edges)."""
    level = image.astype(np.float64).mean(axis=-1)
    y, x = (np.indices(level.shape) * level).reshape(2, -1).sum(axis=1) / level.sum()
    level /= level[round(y), round(x)]  # white as decoded (YUV's white is a level or two below 255)
    return level[round(y)].sum(), level[:, round(x)].sum(), x, y


def frame_index(frames: np.ndarray, step: int = 4) -> np.ndarray:
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / step).astype(int)


def segment_parts(src: Path, pattern: Path, seconds: float) -> list[Path]:
    """Cut ``src`` into parts of about ``seconds`` with FFmpeg's segment muxer, as ``ffmpeg -f segment`` does:
    each part keeps its timestamps, so all but the first start after 0."""
    options = {"segment_time": str(seconds), "segment_format": "matroska"}
    with av.open(str(src)) as inp, av.open(str(pattern), "w", format="segment", options=options) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return sorted(pattern.parent.glob("part*.mkv"))


def synthetic_manifest(root: Path, videos: int, classes: int, seed: int) -> Path:
    """The built-in synthetic dataset written under root/data and indexed, labels included: root/manifest.csv."""
    from xdc.data.index import build_manifest
    from xdc.data.synthetic import make_synthetic

    labels = make_synthetic(root / "data", videos, classes, seed=seed, workers=2)
    build_manifest([str(root / "data" / "videos")], root / "manifest.csv", labels=labels, workers=2)
    return root / "manifest.csv"


def tiny_run(root: Path, videos: int, classes: int, seed: int, batch: int, k: int) -> Path:
    """A finished one-round XDC run of the tiny preset (no loader workers) on synthetic_manifest(root, ...):
    root/run."""
    from xdc.config import load_config
    from xdc.training.distributed import Dist
    from xdc.training.pretrain import pretrain

    synthetic_manifest(root, videos, classes, seed=seed)
    cfg = load_config(None, [f"train.batch_size={batch}", f"train.k={k}", "train.rounds=1", "data.workers=0"],
                      preset="tiny")  # fmt: skip
    pretrain(cfg, root / "manifest.csv", root / "run", resume=False, ctx=Dist())
    return root / "run"


def ready_trainer(manifest: Path, out: Path, *settings: str):
    """A tiny-preset Pretrainer (batch 8, k = 4, no loader workers) ready to step: every video in one of 4
    pseudo-label clusters, fresh heads, training mode."""
    from xdc.config import load_config
    from xdc.training.distributed import Dist
    from xdc.training.pretrain import Pretrainer

    cfg = load_config(None, ["train.batch_size=8", "train.k=4", "data.workers=0", *settings], preset="tiny")
    trainer = Pretrainer(cfg, manifest, out, Dist())
    trainer.progress.labels = {s: np.arange(len(trainer.videos)) % 4 for s in trainer.method.label_sets}
    trainer._new_heads()
    trainer.train_model.train()
    return trainer


def _load_benchmarks_common():
    """benchmarks/common.py, which the benchmark scripts import as ``common`` from their own folder."""
    path = Path(__file__).parents[1] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("benchmarks_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A port free now, below the ephemeral ports: the tests draw theirs as the benchmarks do (a fixed port per test
# until 2026-12-01: two test runs on one host, two checkouts, took each other's).
free_port = _load_benchmarks_common().free_port


def torchrun_command(ranks: int) -> list[str]:
    """torchrun starting ``ranks`` processes on this host, its group on a :func:`free_port`."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={free_port()}"]


def run_two_ranks(worker, *args) -> dict:
    """Run ``worker(rank, 2, port, *args, out)`` on 2 spawned processes (each joins a gloo group on a
    :func:`free_port`); their ``out[rank]`` entries."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(2, free_port(), *args, out), nprocs=2, join=True)
        return dict(out)


def stopped_by_ctrl_c_in_a_fork(work: str) -> None:
    """Run the Python statements ``work``, which start worker processes, in a fresh interpreter where every fork
    sends SIGINT to the parent from inside the fork (standing in for a Ctrl-C timed so) while another thread runs
    (as tqdm's, which the kernel may hand the signal): the KeyboardInterrupt must reach the code around ``work``,
    not be printed as ignored by the at-fork hooks."""
    script = (
        "import os, signal, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        f"try:\n{textwrap.indent(work, '    ')}\nexcept KeyboardInterrupt:\n    sys.exit(7)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr[-2000:]
    assert "Exception ignored" not in done.stderr


@contextmanager
def opens_of(path: Path) -> Iterator[list[Path]]:
    """Every open of ``path`` by this process while the block runs (an audit hook; it stays for the process, and
    counts only while watching)."""
    opened, watching = [], [True]

    def count(event: str, args: tuple) -> None:
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            if Path(os.fsdecode(args[0])) == path:
                opened.append(path)

    sys.addaudithook(count)
    try:
        yield opened
    finally:
        watching[0] = False


def as_if_written_on_a_gpu(path: Path) -> int:
    """Rewrite the torch file ``path`` so that its tensors' storages say "cuda:0", as a file that torch.save wrote
    from a GPU's modules says, however it was made; returns how many storages name their device (the first one's
    name stands for the rest in the pickle's memo). Loading it without map_location fails where CUDA is missing."""
    import zipfile

    cpu, gpu = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # BINUNICODE, as torch.save's protocol 2 writes
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    named = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            if name.endswith("/data.pkl"):
                named = data.count(cpu)
                data = data.replace(cpu, gpu)
            archive.writestr(name, data)
    return named
