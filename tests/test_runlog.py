"""Run logs: a record cut short by a kill is dropped, and ``keep`` drops records in log.jsonl and TensorBoard."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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
