"""Run logs: a record cut short by a kill is dropped, and ``keep`` drops records in log.jsonl and TensorBoard."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xdc.atomic import WriteError
from xdc.training.runlog import RunLog


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_record_cut_short_is_dropped_and_keep_rewrites_both_logs(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 6):
        log.write("step", step, loss=1.0 / step if step < 3 else 0.25, flag=True)  # float32 in TensorBoard
    log.close()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "step", "step": 6, "lo')  # a kill in the middle of a record
    log = RunLog(tmp_path)
    assert log.records == 5
    log.write("step", 6, loss=0.5)
    log.keep(lambda number, record: number < 3 or record["step"] == 6)
    log.write("holdout", 7, loss=0.25)
    log.close()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("step", 1), ("step", 2), ("step", 3), ("step", 6),
                                                         ("holdout", 7)]  # fmt: skip
    assert _scalars(tmp_path) == {"step/loss": [(1, 1.0), (2, 0.5), (3, 0.25), (6, 0.5)], "holdout/loss": [(7, 0.25)]}


def test_a_damaged_line_is_named_and_dropped_and_the_log_goes_on(tmp_path, capsys):
    """A byte that is not UTF-8 (or a line that is not JSON) stopped a resume with a traceback until 2026-12-01:
    now that line alone is dropped, and named; a last line that a kill cut short is dropped without a word."""
    log = RunLog(tmp_path)
    for step in range(1, 4):
        log.write("step", step, loss=1.0)
    log.close()
    lines = (tmp_path / "log.jsonl").read_bytes().splitlines(keepends=True)
    damaged = [lines[0], b'{"kind": "step", "step": 9, "note": "r\xe9"}\n', lines[1], b"not json\n", lines[2]]
    (tmp_path / "log.jsonl").write_bytes(b"".join(damaged) + b'{"kind": "st\xff')
    log = RunLog(tmp_path)
    assert log.records == 3
    assert capsys.readouterr().err == (f"WARNING: {tmp_path / 'log.jsonl'}: dropped 2 damaged line(s), not JSON "
                                       "records in UTF-8 (line 2, 4)\n")  # fmt: skip
    log.write("step", 4, loss=0.5)
    log.close()
    assert (tmp_path / "log.jsonl").read_bytes() == b"".join([*lines, (tmp_path / "log.jsonl").read_bytes()
                                                               .splitlines(keepends=True)[-1]])  # fmt: skip
    from xdc.training.runlog import read_log  # new on 2026-12-01: here, so that the lines above run before it

    assert read_log(tmp_path / "log.jsonl")[1] == 0 and RunLog(tmp_path).records == 4
    assert capsys.readouterr().err == ""  # a whole log: nothing to say


def test_a_resume_rewrites_tensorboard_with_what_a_kill_left_unwritten(tmp_path):
    """TensorBoard's writer keeps its events in memory up to two minutes: a run killed just after a checkpoint lost
    those logged before it, and a resume that had nothing to drop kept TensorBoard as it was (until 2026-12-01)."""
    killed = "import os, sys\nfrom pathlib import Path\nfrom xdc.training.runlog import RunLog\n"
    killed += "log = RunLog(Path(sys.argv[1]))\nfor step in (1, 2, 3):\n    log.write('step', step, loss=0.5)\n"
    killed += "os._exit(9)  # SIGKILL, just after a checkpoint that kept the 3 records\n"
    subprocess.run([sys.executable, "-c", killed, str(tmp_path)], check=False)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    log = RunLog(tmp_path)
    log.keep(lambda number, _: number < 3)  # as a resume does with the checkpoint's count
    log.close()
    assert _scalars(tmp_path) == {"step/loss": [(1, 0.5), (2, 0.5), (3, 0.5)]}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (Linux's device that is always full)")
def test_a_full_disk_under_either_log_is_one_line_that_names_it(tmp_path, capsys):
    """TensorBoard's events and log.jsonl written onto a full disk (/dev/full): a WriteError that names the file, not
    an OSError that names none and, from TensorBoard's writer thread, a traceback first (until 2026-12-02)."""
    log = RunLog(tmp_path)
    log.write("start", 0)
    log.tb.flush()
    events = next((tmp_path / "tb").iterdir())
    events.unlink()
    events.symlink_to("/dev/full")  # TensorBoard's writer opens its file again at each write
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'tb'}: No space left on device$"):
        for step in range(1, 500):  # its thread fails at the first write; a later scalar raises what stopped it
            log.write("step", step, loss=1.0)
            time.sleep(0.01)
    assert "Traceback" not in capsys.readouterr().err
    log.file = open("/dev/full", "a")
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'log.jsonl'}: No space left on device$"):
        log.write("step", 500, loss=1.0)


def test_nan_and_infinity_are_written_as_null_for_strict_json_readers(tmp_path):
    """A diverged run's loss: Python's json writes ``NaN``, which jq and JavaScript refuse."""
    log = RunLog(tmp_path)
    log.write("step", 1, loss=1.5)
    log.write("step", 2, loss=float("nan"), clips_per_s=float("inf"), sizes=[1.0, float("-inf")])
    log.close()

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [(r["loss"], r.get("clips_per_s"), r.get("sizes")) for r in records] == [
        (1.5, None, None), (None, None, [1.0, None])]  # fmt: skip
    assert _scalars(tmp_path) == {"step/loss": [(1, 1.5)]}
