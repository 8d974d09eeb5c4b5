"""The benchmark scripts still run against the library as it is now, each at its smallest setting on the CPU.
They are what a lent GPU machine runs (benchmarks/gpu_check.sh) and what BENCHMARKS.md is re-measured with, and
nothing else calls them: a script broken by a change would otherwise be found only on the next GPU lease, whose
minutes are few. Timings are not checked here, only that each script ends and writes its table as JSON, and that a
mistake in its arguments ends it with one line.
Left out: decode.py (reads GRID from ../shared/data), grid_study.py (minutes of training), simd.py and
offline_tools.py (about 16 s each at their smallest)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_STEP = ["--preset", "tiny", "--device", "cpu", "--batch", "4", "--steps", "2", "--warmup", "1"]

# (script, arguments, the JSON file it writes): the flags of gpu_check.sh's steps, at sizes a CPU runs in seconds
RUNS = [
    ("train_step", [*TINY_STEP, "--loader-steps", "2"], "train_step"),
    ("train_step", [*TINY_STEP, "--model-only", "--channels-last", "--s2d-stem", "--pad-widths", "8",
                    "--cudnn-limit", "0", "--profile", "{tmp}/profiles.txt"], "train_step"),  # fmt: skip
    ("crops", ["--videos", "2", "--seconds", "2", "--items", "8", "--rounds", "1", "--batch", "4", "--device", "cpu"],
     "crops"),  # fmt: skip
    ("conv_shapes", ["--preset", "tiny", "--device", "cpu", "--batch", "2", "--reps", "1"], "conv_shapes"),
    ("roofline", ["--preset", "tiny", "--batch", "2"], "roofline"),
    ("clustering", ["--sizes", "2000", "--ks", "16", "--repeats", "1", "--paths", "ours", "faiss", "sharded", "torch",
                    "lloyd", "sinkhorn", "sinkhorn-torch"], "clustering"),  # fmt: skip
    ("sinkhorn_ranks", ["--n", "2000", "--k", "16", "--ranks", "2", "--repeats", "1"], "sinkhorn_ranks_2000x16"),
    ("prepare", ["--videos", "1", "--seconds", "2", "--sizes", "320x180", "--gops", "16", "--clips", "4"], "prepare"),
    ("eval_clips", ["--preset", "tiny", "--videos", "3", "--clips", "2", "--rounds", "1"], "eval_clips"),
    ("encoder_reads", ["--preset", "tiny", "--repeats", "1"], "encoder_reads"),
    ("extract_cache", ["--preset", "tiny", "--videos", "3", "--rounds", "1"], "extract_cache"),
    ("pretrain", ["--presets", "tiny", "--videos", "8"], "pretrain"),
    ("listing", ["--files", "300", "--ranks", "2"], "listing"),
    ("rank_joins", ["--rows", "500", "--ranks", "2"], "rank_joins"),
    ("per_video_memory", ["--videos", "200", "--k", "8", "--world-size", "2", "--batch", "4"], "per_video_memory"),
    ("worker_deaths", ["--workers", "1", "--batches", "3", "--kill-after", "1", "--batch", "4", "--rounds", "1"],
     "worker_deaths"),  # fmt: skip
    ("start_methods", ["--videos", "8", "--rounds", "1", "--workers", "1", "--repeats", "1", "--methods", "fork",
                       "forkserver"], "start_methods"),  # fmt: skip
]
# The ports on which these scripts' process groups listened until 2026-12-02 (at the settings above), taken while
# they run, as by another run on the host: each draws a free one now
FIXED_PORTS = {"per_video_memory": [29611], "sinkhorn_ranks": [29652]}


@contextmanager
def _taken(port: int) -> Iterator[None]:
    with socket.socket() as s:
        try:
            s.bind(("", port))
            s.listen()
        except OSError:  # taken already
            pass
        yield


@pytest.mark.parametrize(("script", "args", "name"), RUNS, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(RUNS)])
def test_benchmark_script_runs_and_writes_its_table(script: str, args: list[str], name: str, tmp_path: Path) -> None:
    env = {**os.environ, "XDC_BENCHMARK_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *(a.format(tmp=tmp_path) for a in args)]
    with ExitStack() as taken:
        for port in FIXED_PORTS.get(script, []):
            taken.enter_context(_taken(port))
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    written = json.loads((tmp_path / f"{name}.json").read_text())
    assert written["rows"] and written["machine"]["torch"], written
    assert f"wrote {tmp_path / name}.json" in done.stdout
    if "--profile" in args:
        assert (tmp_path / "profiles.txt").read_text().strip()
    if script == "crops":  # each round's rates before the table: a step stopped at its limit still has them
        assert done.stdout.index("round 1 items/s per core: nothing (aac) ") < done.stdout.index("on_device")


# (script, arguments, what the last line of its error output says): a user's mistake, or a measuring child's
# failure, ends the script with one line that names it, before anything is measured or written
MISTAKES = [
    ("prepare", ["--data", "{tmp}/missing", "--gops", "16", "--clips", "1"], "prepare.py: error: path not found"),
    ("prepare", ["--sizes", "640-360"], "'640-360' is not WIDTHxHEIGHT"),
    # grid-s1/videos instead of grid-s1: generated media were measured instead, the run ending as if all were well
    ("decode", ["--data", "{tmp}", "--clips", "1", "--workers", "1"], "no videos/ folder in it"),
    ("pretrain", ["--presets", "tiny", "nope"], "pretrain.py: error: unknown preset 'nope'"),
    ("clustering", ["--sizes", "100", "--ks", "256", "--paths", "ours"], "k-means needs at least k points"),
    # a negative seed fails only in the child that builds the features: its error, not just its exit status
    ("clustering", ["--sizes", "100", "--ks", "16", "--paths", "ours", "--seed", "-1"],
     "path ours at N = 100, k = 16 failed: ValueError"),  # fmt: skip
    ("encoder_reads", ["--folder", "{tmp}/missing", "--preset", "tiny"], "--folder {tmp}/missing: not a folder"),
]


@pytest.mark.parametrize(("script", "args", "says"), MISTAKES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(MISTAKES)])
def test_benchmark_script_names_a_mistake_in_one_line(script: str, args: list[str], says: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {**os.environ, "XDC_BENCHMARK_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *(a.format(tmp=tmp_path) for a in args)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert says.format(tmp=tmp_path) in done.stderr.strip().splitlines()[-1], done.stderr[-3000:]
    assert not results.exists()


def test_train_step_says_that_a_gpu_preset_on_the_cpu_is_slow(tmp_path: Path) -> None:
    """BENCHMARKS.md's GPU commands (--preset paper --batch 128), run where --device defaults to the CPU, ran for
    hours without a word: a NOTE says so first, and the run goes on (here to its one-line end at a missing --data,
    before anything is measured). The presets a CPU measures in minutes get none."""
    env = {**os.environ, "XDC_BENCHMARK_RESULTS": str(tmp_path / "results"), "OMP_NUM_THREADS": "1"}
    for preset, noted in (("paper", True), ("small", False)):
        command = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--preset", preset, "--device", "cpu",
                   "--batch", "128", "--model-only", "--data", str(tmp_path / "missing")]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "path not found" in done.stderr.strip().splitlines()[-1], done.stderr[-3000:]
        notes = [line for line in done.stdout.splitlines() if line.startswith("NOTE")]
        if noted:  # 35 steps (5 warm-up, 30 timed) of 128 clips at 0.8 s a clip
            assert notes == ["NOTE: --preset paper is meant for a GPU: on a CPU a training step takes about 0.8 s per "
                             "clip (2 cores), so these 35 steps of 128 clips take roughly 1.0 h; --preset tiny or "
                             "small measures a CPU in minutes"], done.stdout  # fmt: skip
        else:
            assert notes == [], done.stdout
