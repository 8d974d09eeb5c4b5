"""xdc export and xdc.load_encoder on a real tiny XDC run: same outputs as the run, metadata, model card, errors."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

import xdc
from conftest import opens_of, synthetic_manifest
from xdc.cli import main
from xdc.config import config_to_dict, load_config, with_settings
from xdc.data.manifest import Manifest
from xdc.errors import UserError
from xdc.evaluation.adapters import Item, write_table
from xdc.evaluation.sources import load_run_encoder
from xdc.export import _data_line, export_run, read_metadata
from xdc.training.distributed import Dist
from xdc.training.pretrain import pretrain

SETTINGS = ["train.batch_size=8", "train.k=3", "train.rounds=2", "data.workers=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    manifest = synthetic_manifest(root, 12, 3, seed=2)
    pretrain(load_config(None, SETTINGS, preset="tiny"), manifest, root / "run", resume=False, ctx=Dist())
    return root / "run"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> tuple[Path, dict, dict]:
    """An export citing a linear probe and the cluster quality in its model card: (folder, probe, clusters)."""
    root = tmp_path_factory.mktemp("exported")
    with open(run.parent / "data" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    items = [Item(str(run.parent / "data" / r["path"]), r["label"], "test" if i % 3 == 0 else "train")
             for i, r in enumerate(rows)]  # fmt: skip
    write_table(items, root / "table.csv")
    assert main(["extract", "--run", str(run), "--encoder", "audio", "--data", str(root / "table.csv"),
                 "--clips", "1", "--out", str(root / "audio.npz")]) == 0  # fmt: skip
    assert main(["eval", "linear", "--features", str(root / "audio.npz"), "--out", str(root / "linear.json")]) == 0
    assert main(["eval", "clusters", "--run", str(run), "--out", str(root / "clusters.json")]) == 0
    assert main(["export", str(run), "--out", str(root / "out"), "--metrics", str(root / "linear.json"),
                 "--metrics", str(root / "clusters.json")]) == 0  # fmt: skip
    results = [json.loads((root / f"{name}.json").read_text()) for name in ("linear", "clusters")]
    return root / "out", *results


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"video": torch.randn(2, 3, 4, 32, 32, generator=g), "audio": torch.randn(2, 1, 40, 100, generator=g)}


def test_loaded_encoders_match_the_run_exactly(run, exported):
    out, _, _ = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "audio.safetensors", "video.safetensors"]
    for name in ("video", "audio"):
        own, modality, _ = load_run_encoder(run, name)
        for loaded in (xdc.load_encoder(out / f"{name}.safetensors"), xdc.load_encoder(out, name=name)):
            assert not loaded.training
            assert all(torch.equal(v, own.state_dict()[k]) for k, v in loaded.state_dict().items())
            with torch.no_grad():
                assert torch.equal(loaded(inputs()[modality]), own(inputs()[modality]))


def test_an_export_reads_the_runs_encoders_once(run, tmp_path):
    """Until 2026-12-03 once, then once per encoder (170 MB at the paper's width each time)."""
    with opens_of(run / "encoders.pt") as opened:
        export_run(run, tmp_path / "export")
    assert len(opened) == 1 and len(list((tmp_path / "export").glob("*.safetensors"))) == 2


def test_exporting_a_run_twice_writes_the_same_bytes(run, tmp_path):
    """safetensors keeps the metadata in a hash map, whose order changed from one save to the next: until 2026-12-03
    two exports of one run differed in their files' bytes (a checksum published with one did not fit the other)."""
    exports = [export_run(run, tmp_path / name) for name in ("a", "b", "c")]
    for files in exports[1:]:
        assert [f.read_bytes() for f in files] == [f.read_bytes() for f in exports[0]]
    assert read_metadata(exports[0][0])["name"] == exports[0][0].stem


def test_metadata_is_enough_to_feed_the_encoders(run, exported):
    out, _, _ = exported
    cfg = load_config(run / "config.yaml")
    video, audio = read_metadata(out / "video.safetensors"), read_metadata(out, name="audio")
    assert (video["modality"], audio["modality"], video["method"]) == ("video", "audio", "xdc")
    assert video["model"] == audio["model"] == config_to_dict(cfg.model)
    assert video["data"] == {"clip": config_to_dict(cfg.data.clip), "mel": config_to_dict(cfg.data.mel),
                             "eval_short_side": 36, "augment": config_to_dict(cfg.data.augment), "eval_clips": 10,
                             "missing_audio": "skip"}  # fmt: skip
    assert video["input_shape"] == [3, 4, 32, 32] and audio["input_shape"] == [1, 40, 100]
    assert video["video_mean"] == [0.43216, 0.394666, 0.37645] and "video_mean" not in audio
    assert video["feature_dim"] == audio["feature_dim"] == 64


def test_the_documented_recipe_feeds_an_encoder_of_crops_above_the_default_jitter(tmp_path):
    """docs/export.md's read_metadata example, as written but for its path, on an export of 160-pixel crops: until
    2026-12-01 it laid them over the default jitter (128-160) and stopped with a UserError."""
    from xdc.export import _write_encoder, encoder_metadata
    from xdc.models import build_encoder

    cfg = load_config(None, ["data.clip.crop=160", "data.augment.scale_min=176", "data.augment.scale_max=200"],
                      preset="tiny")  # fmt: skip
    encoder = build_encoder("video", cfg.model)
    _write_encoder(tmp_path, "video", encoder_metadata("video", "video", "xdc", encoder, cfg), encoder, ())
    docs = (Path(__file__).parents[1] / "docs" / "export.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", docs, re.S) if "read_metadata(" in block)
    names: dict = {}
    exec(example.replace('"exports/xdc/video.safetensors"', repr(str(tmp_path / "video.safetensors"))), names)
    assert names["data"] == cfg.data
    clip = names["transform"](np.zeros((4, 180, 240, 3), np.uint8))
    assert clip.shape == (3, 4, 160, 160)


def test_model_card(exported):
    out, linear, clusters = exported
    card = (out / "README.md").read_text()
    assert "method **xdc**" in card and "k = 3 clusters" in card and "rounds: 2 of 2" in card
    assert "12 videos" in card and "Preset: `tiny`" in card and "Round 1 (log.jsonl)" in card
    assert "| video |" in card and "| audio |" in card  # the last round's two label sets
    last = [r for r in clusters["rounds"] if r["round"] == 1 and r["label_set"] == "video"][0]
    assert f"nmi (video) {last['nmi']:.4g}" in card and "`clusters.json` | eval clusters" in card
    assert f"top1 {linear['top1']:.4g}, top5 {linear['top5']:.4g}, clip_top1 {linear['clip_top1']:.4g}" in card
    assert 'xdc.load_encoder("video.safetensors")' in card and "mean [0.43216, 0.394666, 0.37645]" in card


def test_the_card_says_what_trained_the_encoders(run):
    from xdc.export import model_card
    from xdc.methods import get_method

    cfg = load_config(run / "config.yaml")
    encoders = {name: load_run_encoder(run, name)[0] for name in ("video", "audio")}
    card = {name: model_card(run, get_method(name), cfg, encoders, {"video": "video", "audio": "audio"}, [])
            for name in ("xdc", "supervised", "scratch")}  # fmt: skip
    assert "Self-supervised encoders trained with `xdc pretrain`" in card["xdc"] and "re-cluster on" in card["xdc"]
    assert "Encoders trained on the manifest's labels with `xdc pretrain`" in card["supervised"]
    assert "re-cluster" not in card["supervised"] and "assignment" not in card["supervised"]
    # supervised trains one round of train.epochs x train.rounds epochs (the card said train.epochs until 2026-12-01)
    epochs = cfg.train.epochs * cfg.train.rounds
    assert f"- per round: {epochs} epoch(s) (train.epochs x train.rounds) of " in card["supervised"]
    assert "Untrained encoders (random weights, a baseline)" in card["scratch"]
    # with recluster=plateau train.epochs is a cap (the card gave it as the count until 2026-12-01)
    plateau = with_settings(cfg, {"train.recluster": "plateau"})
    text = model_card(run, get_method("xdc"), plateau, encoders, {"video": "video", "audio": "audio"}, [])
    assert f"- per round: up to {cfg.train.epochs} epoch(s) of " in text and "re-cluster on plateau" in text
    assert "Self-supervised" not in card["supervised"] + card["scratch"]


def test_export_of_a_run_being_extended_cites_the_clusters_of_its_encoders(run, exported, tmp_path):
    """The log of a run extended by more rounds also holds the clusters of those rounds: until 2026-12-03 the card of
    its earlier encoders (encoders-N-rounds.pt) cited the latest round's, not those of the encoders' last round."""
    extended = tmp_path / "run"
    shutil.copytree(run, extended)
    pretrain(load_config(None, preset="tiny"), None, extended, resume=True, ctx=Dist(), rounds=3)
    assert main(["export", str(extended / "encoders-2-rounds.pt"), "--out", str(tmp_path / "out")]) == 0

    def clusters(card: str) -> str:
        return card[card.index("### Last round's clusters") : card.index("## Evaluation")]

    card = (tmp_path / "out" / "README.md").read_text()
    assert "rounds: 2 of 3" in card and "Round 1 (log.jsonl)" in clusters(card)
    assert clusters(card) == clusters((exported[0] / "README.md").read_text())  # the run's before the extension


def test_export_refuses_unfinished_runs_and_foreign_folders(run, exported, tmp_path, capsys):
    for typo in (run.parent / "rnu", run / "encoders.py"):  # until 2026-12-03: "... has no encoders.pt: is it a run?"
        assert main(["export", str(typo), "--out", str(tmp_path / "a")]) == 2
        assert capsys.readouterr().err == (f"xdc: error: {typo}: no such file or folder (expected an `xdc pretrain` "
                                           "run folder, one of its encoders files, or the released XDC weights)\n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["export", str(unfinished), "--out", str(tmp_path / "a")]) == 2
    assert "no encoders.pt" in capsys.readouterr().err and not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(busy)]) == 2
    assert "not empty and not a previous `xdc export`" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    for given in (exported[0] / "audio.safetensors", exported[0]):  # the folder: "no encoders.pt: is it a run?"
        assert main(["export", str(given), "--out", str(tmp_path / "a")]) == 2
        assert capsys.readouterr().err == (f"xdc: error: {given} is an export already: xdc export takes a run folder "
                                           "or the released XDC weights\n")  # fmt: skip
    assert main(["export", str(run / "videos.csv"), "--out", str(tmp_path / "a")]) == 2  # not the released weights
    assert capsys.readouterr().err == (f"xdc: error: {run / 'videos.csv'} is a file of the run {run}: give the run's "
                                       "folder or its encoders.pt\n")  # fmt: skip
    (tmp_path / "bad.json").write_text("{}")
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--metrics", str(tmp_path / "bad.json")]) == 2
    assert "not a result file of `xdc eval" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_metrics_of_another_run_are_refused(run, exported, tmp_path, capsys, monkeypatch):
    """The card cites --metrics as the run's own: a result of another run (by its run, or for a probe by its
    features' summary) is refused, not listed under this run's name."""
    other = tmp_path / "other"
    shutil.copytree(run, other)
    root = exported[0].parent
    for name in ("linear", "clusters"):
        assert main(["export", str(other), "--out", str(tmp_path / "e"), "--metrics", str(root / f"{name}.json")]) == 2
        assert capsys.readouterr().err == (f"xdc: error: metrics {name}.json evaluated the run {run}, not {other}: "
                                           "give this run's results\n")  # fmt: skip
    assert not (tmp_path / "e").exists()
    # a result made with a relative --run records where that was: the check holds from any folder
    clusters = tmp_path / "clusters.json"
    monkeypatch.chdir(other.parent)
    assert main(["eval", "clusters", "--run", other.name, "--out", str(clusters)]) == 0
    monkeypatch.chdir(run.parent)
    assert main(["export", str(other), "--out", str(tmp_path / "e"), "--metrics", str(clusters)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "f"), "--metrics", str(clusters)]) == 2
    assert f"metrics clusters.json evaluated the run {other}, not {run}" in capsys.readouterr().err
    # and a probe's made with relative --features (its summary names the run): until 2026-12-01 export looked for
    # the summary from its own folder, found none there, and cited the other run's result
    monkeypatch.chdir(root)
    assert main(["eval", "linear", "--features", "audio.npz", "--out", str(tmp_path / "linear.json")]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(other), "--out", str(tmp_path / "g"), "--metrics", str(tmp_path / "linear.json")]) == 2
    assert f"metrics linear.json evaluated the run {run}, not {other}" in capsys.readouterr().err


def test_the_released_weights_and_a_run_do_not_cite_each_others_metrics(run, tmp_path, capsys):
    """Until 2026-12-01 an export of the released weights cited any result (a run's clusters as theirs), and a run's
    export the results of the released weights as the run's."""
    from test_official import official_state_dict

    released, other = tmp_path / "r2plus1d_18_xdc_ig65m_kinetics.pth", tmp_path / "r2plus1d_18_xdc_audioset.pth"
    torch.save(official_state_dict(), released)
    results = {"run.json": {"command": "eval clusters", "run": str(run)},
               "released.json": {"command": "eval finetune", "run": str(released), "source": "released",
                                 "mean_top1": 0.5},
               "other.json": {"command": "eval finetune", "run": str(other), "source": "released", "mean_top1": 0.4}}
    for name, record in results.items():
        (tmp_path / name).write_text(json.dumps(record))
    for exported, name, message in [
        (released, "run.json", f"evaluated the run {run}, not {released}: give these weights' results"),
        (released, "other.json", f"evaluated the released weights {other}, not {released}: give these weights' "
                                 "results"),
        (run, "released.json", f"evaluated the released weights {released}, not {run}: give this run's results"),
    ]:  # fmt: skip
        assert main(["export", str(exported), "--out", str(tmp_path / "e"), "--metrics", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err == f"xdc: error: metrics {name} {message}\n"
        assert not (tmp_path / "e").exists()
    assert main(["export", str(released), "--out", str(tmp_path / "e"), "--metrics", str(tmp_path / "released.json")]
                ) == 0  # fmt: skip
    assert "mean_top1 0.5" in (tmp_path / "e" / "README.md").read_text()


def test_metrics_that_are_not_utf8_are_named_in_one_line(run, tmp_path, capsys):
    """A result saved again by PowerShell's > (UTF-16) or a Latin-1 editor: said so, before any export (until
    2026-12-01: UnicodeDecodeError); UTF-8 with a BOM is read."""
    result = '{"command": "eval linear", "top1": 0.5, "features": "caf\u00e9.npz"}'
    (tmp_path / "utf16.json").write_bytes(result.encode("utf-16"))
    (tmp_path / "latin1.json").write_bytes(result.encode("latin-1"))
    for name, why in [("utf16.json", "(a binary file, or text in UTF-16: save it as UTF-8)"),
                      ("latin1.json", "(byte 0xe9 on line 1): save it as UTF-8")]:  # fmt: skip
        assert main(["export", str(run), "--out", str(tmp_path / "e"), "--metrics", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err == f"xdc: error: metrics {tmp_path / name} is not UTF-8 text {why}\n"
        assert not (tmp_path / "e").exists()
    (tmp_path / "bom.json").write_bytes(result.encode("utf-8-sig"))
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--metrics", str(tmp_path / "bom.json")]) == 0
    assert "0.5" in (tmp_path / "e" / "README.md").read_text()


def test_the_card_of_a_run_resumed_with_a_lower_lr_says_the_earlier_one(run, tmp_path):
    """After --resume --set train.lr=LOWER the card gave config.yaml's lr alone (until 2026-12-03)."""
    lowered = tmp_path / "run"
    shutil.copytree(run, lowered)
    before = load_config(run / "config.yaml").train.lr
    pretrain(load_config(None, preset="tiny"), None, lowered, resume=True, ctx=Dist(), rounds=3,
             settings={"train.lr": before / 10})  # fmt: skip
    step = [r["step"] for r in map(json.loads, (lowered / "log.jsonl").open()) if r["kind"] == "start"][-1]
    assert main(["export", str(lowered), "--out", str(tmp_path / "out")]) == 0
    assert f"- optimiser: SGD lr {before / 10} ({before} until step {step}), momentum" in (
        tmp_path / "out" / "README.md").read_text()


def test_a_damaged_line_of_the_log_costs_the_card_that_line_only(run, tmp_path):
    """Until 2026-12-01 a byte that was not UTF-8 was a traceback, and a line that was not JSON lost the clusters."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with open(copy / "log.jsonl", "ab") as f:
        f.write(b'{"kind": "note", "text": "r\xe9"}\nnot json\n')
    assert main(["export", str(copy), "--out", str(tmp_path / "e")]) == 0
    assert "Round 1 (log.jsonl)" in (tmp_path / "e" / "README.md").read_text()


def test_a_run_that_cannot_load_leaves_a_previous_export_alone(run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    whole = (run / "encoders.pt").read_bytes()
    (damaged / "encoders.pt").write_bytes(whole[: len(whole) // 2])
    assert main(["export", str(damaged), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xdc: error: cannot read {damaged / 'encoders.pt'} as a run's encoders: ") and err.count(
        "\n") == 1  # fmt: skip
    (damaged / "encoders.pt").write_bytes(whole)  # whole weights, but config.yaml describes another model
    config = (damaged / "config.yaml").read_text()
    assert "video_width: 8" in config
    (damaged / "config.yaml").write_text(config.replace("video_width: 8", "video_width: 16"))
    assert main(["export", str(damaged), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the encoder 'video' does not fit the model that" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_replaces_a_previous_export_whole(run, tmp_path, capsys):
    """And says so, naming the files of the previous export that are gone: until 2026-12-02 a re-run, or another
    run's export into the folder, printed the same lines as a first export."""
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().out
    (out / "video.safetensors").rename(out / "stale.safetensors")  # an encoder this run does not have
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "audio.safetensors", "video.safetensors"]
    assert capsys.readouterr().out.splitlines()[-1] == f"replaced the previous export in {out}; removed its " \
                                                       "stale.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"replaced the previous export in {out}"
    assert "No results were given" in (out / "README.md").read_text()


def test_a_failed_export_leaves_the_previous_export_whole(run, tmp_path, monkeypatch):
    """Until 2026-12-01 the previous export's files were removed first: a program writer that failed (ONNX on an
    unsupported operator), a full disk or Ctrl-C after that lost the export, and left half a new one."""
    import xdc.export

    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--also", "pt2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fails(encoder, meta, path):
        raise KeyboardInterrupt  # after the first encoder's safetensors file was written

    monkeypatch.setattr(xdc.export, "write_program", fails)
    with pytest.raises(KeyboardInterrupt):
        xdc.export.export_run(run, out, also=["pt2"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no half-new export, no leftovers
    monkeypatch.undo()
    assert main(["export", str(run), "--out", str(out)]) == 0  # without programs: the previous ones go
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "audio.safetensors", "video.safetensors"]


def test_export_after_a_killed_export(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".video.safetensors.tmp4242").write_bytes(b"half a file")  # killed while writing the first encoder
    assert main(["export", str(run), "--out", str(out)]) == 0
    (out / ".audio.safetensors.tmp77").write_bytes(b"half")  # killed during a re-export
    (out / ".export.tmp78").mkdir()  # killed during a re-export, its files staged there
    (out / ".export.tmp78" / "video.safetensors").write_bytes(b"whole, not yet moved")
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "audio.safetensors", "video.safetensors"]


def test_load_encoder_errors(exported, tmp_path):
    out, _, _ = exported
    with pytest.raises(UserError, match=r"several encoders \(audio, video\): choose one with name="):
        xdc.load_encoder(out)
    with pytest.raises(UserError, match="has no encoder 'video2'; it has: audio, video"):
        xdc.load_encoder(out, name="video2")
    with pytest.raises(UserError, match="no such file or folder"):
        xdc.load_encoder(tmp_path / "absent.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(UserError, match="not written by `xdc export`.*load_official_xdc"):
        xdc.load_encoder(tmp_path / "foreign.safetensors")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(UserError, match="cannot read .* as a safetensors file: .*use xdc.models.load_official_xdc"):
        xdc.load_encoder(tmp_path / "text.safetensors")
    meta = read_metadata(out / "video.safetensors")
    raw = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in meta.items()}
    save_file({"stem.0.weight": torch.zeros(1)}, tmp_path / "video.safetensors", metadata=raw)
    with pytest.raises(UserError, match="do not fit the video encoder its metadata describes: .*Missing key"):
        xdc.load_encoder(tmp_path / "video.safetensors")


def test_load_encoder_of_a_run_is_what_its_export_loads(run, exported):
    """A run folder or its encoders.pt loads in one line, as an export of it would (until 2026-12-03 it was refused
    with "write one with `xdc export`")."""
    out, _, _ = exported
    for name in ("video", "audio"):
        from_export = xdc.load_encoder(out, name=name)
        for given in (run, run / "encoders.pt", str(run)):
            loaded = xdc.load_encoder(given, name=name)
            assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
            state = loaded.state_dict()
            assert state.keys() == from_export.state_dict().keys()
            assert all(torch.equal(v, state[k]) for k, v in from_export.state_dict().items())
            with torch.no_grad():  # the modality is the name in an XDC run
                assert torch.equal(loaded(inputs()[name]), from_export(inputs()[name]))


def test_load_encoder_of_a_run_of_one_encoder_needs_no_name(run, exported, tmp_path):
    cfg = load_config(None, [*SETTINGS, "train.method=sdc-audio", "train.rounds=1"], preset="tiny")
    pretrain(cfg, run.parent / "manifest.csv", tmp_path / "sdc", resume=False, ctx=Dist())
    loaded, own = xdc.load_encoder(tmp_path / "sdc"), load_run_encoder(tmp_path / "sdc", "audio")[0]
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(UserError, match=re.escape(f"{run} holds several encoders (video, audio): choose one with "
                                                  "name=")):  # fmt: skip
        xdc.load_encoder(run)
    with pytest.raises(UserError, match=re.escape(f"{run} has no encoder 'video2'; it has: video, audio")):
        xdc.load_encoder(run / "encoders.pt", name="video2")


def test_load_encoder_of_an_unfinished_run_says_what_xdc_eval_says(run, tmp_path):
    from xdc.evaluation.sources import load_source

    killed = tmp_path / "killed"  # killed before its end wrote encoders.pt: a config and a training checkpoint
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", killed)
    shutil.copy(run / "checkpoints" / "last.pt", killed / "checkpoints")
    message = re.escape(f"{killed} has not finished (no encoders.pt yet): go on with `xdc pretrain --resume --out "
                        f"{killed}`")  # fmt: skip
    with pytest.raises(UserError, match=message):
        xdc.load_encoder(killed, name="video")
    with pytest.raises(UserError, match=message):
        load_source(killed, "video")  # what xdc extract and xdc eval finetune say of it
    lone = tmp_path / "lone"  # a run's encoders copied away from its config.yaml
    lone.mkdir()
    shutil.copy(run / "encoders.pt", lone)
    with pytest.raises(UserError, match=re.escape(f"{lone / 'encoders.pt'} is named as a run's encoders, but its "
                                                  "folder is no run (no config.yaml beside it")):  # fmt: skip
        xdc.load_encoder(lone / "encoders.pt", name="video")


def test_load_encoder_is_listed_by_dir_for_a_notebooks_completion_and_imports_torch_only_when_used():
    code = ("import sys, xdc; assert 'load_encoder' in dir(xdc) and 'torch' not in sys.modules; "
            "xdc.load_encoder; assert 'torch' in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(Path(xdc.__file__).parents[1])})


def test_load_encoder_of_an_exports_program_or_card_names_what_to_give(run, tmp_path):
    # (each was "cannot read ... as a safetensors file: header too large; for the released XDC checkpoints use
    # xdc.models.load_official_xdc")
    export_run(run, tmp_path / "out", also=("pt2",))
    program, card = tmp_path / "out" / "video.pt2", tmp_path / "out" / "README.md"
    with pytest.raises(UserError, match=re.escape(f"{program} is a program of an `xdc export`, which runs without xdc "
                                                  "(torch.export.load(path).module()); xdc.load_encoder reads the "
                                                  f"encoder's weights, {program.with_suffix('.safetensors')}")):
        xdc.load_encoder(program)
    assert torch.export.load(program).module()(inputs()["video"]).shape == (2, 64)  # what the message says runs it
    with pytest.raises(UserError, match=re.escape(f"{card} is the model card of an `xdc export`: give its folder "
                                                  f"{card.parent} (and name=) or one of its .safetensors files")):
        xdc.load_encoder(card)


def test_load_encoder_of_another_file_of_a_run_names_the_run(run):
    # (it said "cannot read ... as a safetensors file: header too large; ... use load_official_xdc", which then
    # said the training checkpoint "holds no state dict")
    for given in (run / "checkpoints" / "last.pt", run / "config.yaml"):
        with pytest.raises(UserError, match=re.escape(f"{given} is a file of the run {run}: give the run's folder or "
                                                      "its encoders.pt")):  # fmt: skip
            xdc.load_encoder(given)


def test_load_official_xdc_of_a_run_or_an_export_says_what_it_is_and_how_to_load_it(run, exported):
    """A run folder was "no such file", an export's file a pickle error ("Unsupported operand 120"), and a run's
    encoders or training checkpoint "holds no state dict": none said what the path is, or what loads it."""
    from xdc.models import load_official_xdc

    out, _, _ = exported
    run_hint = f"load its encoders with xdc.load_encoder({str(run)!r}, name=...)"
    not_released = "is not a file of the released XDC weights: it is"
    cases = [(run, f"{run} {not_released} an `xdc pretrain` run folder: load its encoders with "
                   "xdc.load_encoder(path, name=...)"),
             (out, f"{out} {not_released} an `xdc export` folder: load its encoders with "
                   "xdc.load_encoder(path, name=...)"),
             (out / "video.safetensors", "it is a safetensors file: load one of `xdc export` with xdc.load_encoder"),
             (run / "encoders.pt", f"holds no state dict .*; it is a file of the run {run}: {re.escape(run_hint)}"),
             (run / "checkpoints" / "last.pt", f"holds no state dict .*; it is a file of the run {run}"),
             (run / "checkpoints",  # until 2026-12-03 "it is a folder"
              f"{run / 'checkpoints'} {not_released} a folder of the run {run}: {run_hint}")]  # fmt: skip
    for given, message in cases:
        with pytest.raises(UserError, match=message if given.suffix == ".pt" else re.escape(message)) as e:
            load_official_xdc(given)
        assert "\n" not in str(e.value)


def test_the_card_names_the_folder_all_videos_share(tmp_path):
    (tmp_path / "videos.csv").write_text("path,label\n/data/k/b/2.mp4,x\n/data/k/a/1.mp4,\n/data/k/a/c/3.mp4,y\n")
    assert _data_line(tmp_path) == "3 videos (listed in the run's videos.csv, under `/data/k`)"
    (tmp_path / "videos.csv").write_text("path,label\n/data/k/a/1.mp4,\n/data/k/a/2.mp4,\n")
    assert _data_line(tmp_path) == "2 videos (listed in the run's videos.csv, under `/data/k/a`)"
    (tmp_path / "videos.csv").write_text("path,label\n/data/k\u00e9/1.mp4,\n/data/k\u00e8/2.mp4,\n", encoding="utf-8")
    assert _data_line(tmp_path) == "2 videos (listed in the run's videos.csv, under `/data`)"  # é, è: 1 byte shared
    rows = [f"/data/k/{i % 7}/{i}.mp4" for i in range(70_000)] + ["/data/kinetics/x.mp4"]  # past one block of rows
    Manifest.from_rows([{"path": p, "status": "ok", "duration_s": "1"} for p in rows]).save(tmp_path / "videos")
    assert _data_line(tmp_path) == "70001 videos (listed in the run's videos.csv, under `/data`)"  # videos/ first


RUN_WITHOUT_XDC = """
import sys
sys.modules["xdc"] = None  # any import of this library fails: the files must run without it
import json, numpy as np, onnxruntime, torch
folder, result = sys.argv[1], {}
for name, x in np.load(folder + "/inputs.npz").items():
    session = onnxruntime.InferenceSession(f"{folder}/{name}.onnx", providers=["CPUExecutionProvider"])
    result[f"{name}.onnx"] = session.run(["features"], {"clips": x})[0]
    extra = {"xdc.json": ""}
    program = torch.export.load(f"{folder}/{name}.pt2", extra_files=extra)
    result[f"{name}.pt2"] = program.module()(torch.from_numpy(x)).detach().numpy()
    result[f"{name}.pt2 modality"] = np.array(json.loads(extra["xdc.json"])["modality"])
np.savez(folder + "/outputs.npz", **result)
"""


def test_programs_run_without_xdc_for_any_batch(run, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--also", "onnx", "pt2"]) == 0
    names = [f"{name}.{fmt}" for name in ("audio", "video") for fmt in ("onnx", "pt2", "safetensors")]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", *names]
    modes = {p.stat().st_mode for p in out.iterdir()}
    assert len(modes) == 1  # every file as the umask makes them (safetensors alone would be owner-only)
    g = torch.Generator().manual_seed(1)
    x = {"video": torch.randn(3, 3, 4, 32, 32, generator=g), "audio": torch.randn(5, 1, 40, 100, generator=g)}
    np.savez(out / "inputs.npz", **{k: v.numpy() for k, v in x.items()})  # batches of 3 and 5; exported with 2
    subprocess.run([sys.executable, "-c", RUN_WITHOUT_XDC, str(out)], check=True)
    with np.load(out / "outputs.npz") as outputs:
        for name in ("video", "audio"):
            own, _, _ = load_run_encoder(run, name)
            with torch.no_grad():
                expected = own(x[name]).numpy()
            np.testing.assert_allclose(outputs[f"{name}.onnx"], expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(outputs[f"{name}.pt2"], expected, rtol=1e-5, atol=1e-6)
            assert str(outputs[f"{name}.pt2 modality"]) == name
    meta = {p.key: p.value for p in onnx.load(out / "video.onnx").metadata_props}
    assert json.loads(meta["input_shape"]) == [3, 4, 32, 32] and meta["format"] == "xdc-encoder"
    card = (out / "README.md").read_text()
    assert 'onnxruntime.InferenceSession("video.onnx")' in card and 'torch.export.load("video.pt2")' in card
    (out / "inputs.npz").unlink()
    (out / "outputs.npz").unlink()
    assert main(["export", str(run), "--out", str(out)]) == 0  # a re-export without them leaves none behind
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "audio.safetensors", "video.safetensors"]


def test_unknown_program_format_or_missing_onnx(run, tmp_path, capsys, monkeypatch):
    with pytest.raises(UserError, match="unknown export format tflite: choose from onnx, pt2"):
        export_run(run, tmp_path / "a", also=["tflite"])
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert main(["export", str(run), "--out", str(tmp_path / "a"), "--also", "onnx"]) == 2
    assert "ONNX export needs the package(s) onnxscript: pip install 'xdc[onnx]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run), "--out", str(tmp_path / "b"), "--also", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_card_says_what_a_finetuning_evaluated():
    from xdc.export import _metric_lines

    record = {"file": "ft.json", "command": "eval finetune", "dataset": "ucf101", "data": "/d/UCF101", "mode": "fc",
              "splits": [{"encoder": "video", "top1": 0.5}], "mean_top1": 0.5}  # fmt: skip
    assert _metric_lines([record])[-1] == ("| `ft.json` | eval finetune | `ucf101 /d/UCF101, video encoder, --mode fc` "
                                            "| mean_top1 0.5 |")  # fmt: skip
