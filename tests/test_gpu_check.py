"""benchmarks/gpu_check.sh on a machine without a GPU: what a lent machine's call depends on before any step
measures anything (its arguments, its plan against the deadline, a step stopped at its limit). The script runs from
a copy in a temporary repository root, so that no wheels/ of the checkout is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check(tmp_path: Path, *args: str, path: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "repo" / "benchmarks").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "repo" / "benchmarks")
    # python3 is this interpreter (torch in it), as on a lent machine
    env = {**os.environ, "PATH": os.pathsep.join(p for p in (path, str(Path(sys.executable).parent),
                                                               os.environ["PATH"]) if p)}  # fmt: skip
    return subprocess.run(["bash", str(tmp_path / "repo" / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out"),
                           *args], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


def test_a_step_named_where_the_deadline_goes_is_refused(tmp_path):
    # "gpu_check.sh OUT tests compile" read 'tests' as the deadline (an error at each step, then no deadline) and
    # ran compile alone, with exit 0 where it passed
    done = _gpu_check(tmp_path, "tests", "compile")
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_check.sh: SECONDS 'tests' is not a whole number of seconds"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the chosen steps would run")
def test_the_plan_says_which_steps_the_deadline_cuts_before_anything_runs(tmp_path):
    """A session's dry run on a CPU machine: the plan, then the stop for want of CUDA."""
    done = _gpu_check(tmp_path, "540", "clustering", "s2d", "crops", "pad64", "cudnnall", "cudagraphs")
    assert done.returncode == 1
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert log.splitlines()[0] == (
        "=== plan: crops 120 s, s2d 150 s, pad64 150 s, cudnnall 180 s (cut to 105 s if the steps before use their "
        "limits), cudagraphs 240 s (skipped if the steps before use their limits), clustering 180 s (skipped if the "
        "steps before use their limits): 1020 s of limits, a deadline of 540 s"
    )  # in the script's order, not the order named
    assert "torch sees no CUDA device here" in log and "=== crops" not in log


def test_a_step_at_its_limit_is_interrupted_and_the_run_ends_by_its_deadline(tmp_path):
    """SIGINT (Python's KeyboardInterrupt: pytest's summary, where a script was), not SIGTERM; the limit is cut so
    that a step that ignores it is killed before the deadline. nvidia-smi here stands in for a hung command."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "nvidia-smi").write_text(  # it says so, then ends by the signal, as a program without a handler does
        "#!/bin/bash\ntrap 'echo nvidia-smi: interrupted; trap - INT; kill -INT $$' INT\nsleep 60\n"
    )
    (bin_ / "nvidia-smi").chmod(0o755)
    start = time.monotonic()
    done = _gpu_check(tmp_path, "23", "env", path=str(bin_))
    took = time.monotonic() - start
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert done.returncode == 1, log
    limit = int(re.search(r"=== env \(limit (\d+) s\)", log)[1])
    assert limit in (7, 8), log  # 23 s less 15 for the kill, less the second the script may have taken to start
    assert "nvidia-smi: interrupted" in log, log
    assert re.search(rf"=== env: exit 124 after ({limit}|{limit + 1}) s", log), log
    assert log.rstrip().endswith("failed: env"), log
    assert took < 23, log


def _wheel(folder: Path, name: str, version: str) -> str:
    """A minimal real wheel of ``name`` (no code: what pip download reads is its name, version and tags)."""
    stem = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{stem}-cp311-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-abi3-any\n")
        z.writestr(f"{stem}.dist-info/RECORD", "")
    return path.name


def test_gpu_wheels_fetches_the_pinned_versions_alone(tmp_path):
    """benchmarks/gpu_wheels.sh from a local index: the versions of pyproject.toml, and a wheel of an earlier pin
    removed (pip on the lent machine refuses two versions of one package, and the call gets nothing)."""
    pins = dict(re.findall(r'"(av|faiss-cpu)==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    index, repo = tmp_path / "index", tmp_path / "repo"
    for folder in (index, repo / "benchmarks", repo / "wheels"):
        folder.mkdir(parents=True)
    expected = {_wheel(index, name, version) for name, version in pins.items()}
    stale = _wheel(repo / "wheels", "av", "0.1")
    _wheel(index, "av", "0.1")  # the index has it too: only the pin picks
    shutil.copy(ROOT / "benchmarks" / "gpu_wheels.sh", repo / "benchmarks")
    shutil.copy(ROOT / "pyproject.toml", repo)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index),
           "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ["PATH"]))}  # fmt: skip
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_wheels.sh")], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (repo / "wheels").iterdir()} == expected and stale not in expected
