"""What --run of `xdc extract` and `xdc eval finetune` takes besides a run folder: an `xdc export` (folder or file)
and the released XDC weights; and the data.* settings given over an encoder's own (xdc.evaluation.sources)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import opens_of, tiny_run
from test_official import official_state_dict
from xdc.cli import main
from xdc.config import config_to_dict, load_config
from xdc.data.datasets import EvalClips
from xdc.evaluation.adapters import Item, write_table
from xdc.evaluation.extract import items_to_manifest
from xdc.evaluation.sources import load_source
from xdc.export import export_run, load_encoder
from xdc.models.encoders import build_encoder
from xdc.models.official import load_official_xdc
from xdc.training.distributed import Dist

# The released weights are R(2+1)D-18 at full width: clips of 2 frames of 32 x 32 keep the tests quick.
SMALL_CLIPS = ["data.clip.frames=2", "data.clip.fps=2", "data.clip.crop=32", "data.clip.decode_short_side=40",
               "data.augment.scale_min=36", "data.augment.scale_max=40"]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run, its export, a released-weights file, and a table of its videos."""
    root = tmp_path_factory.mktemp("sources")
    export_run(tiny_run(root, 12, 2, seed=2, batch=4, k=2), root / "export")
    torch.save(official_state_dict(), root / "r2plus1d_18_xdc_ig65m_kinetics.pth")
    with open(root / "data" / "labels.csv") as f:
        items = [Item(str(root / "data" / r["path"]), r["label"], "test" if i % 3 == 0 else "train")
                 for i, r in enumerate(csv.DictReader(f))]  # fmt: skip
    write_table(items, root / "table.csv")
    return {"root": root, "run": root / "run", "export": root / "export", "released": root / "r2plus1d_18_xdc_ig65m_"
            "kinetics.pth", "table": root / "table.csv"}  # fmt: skip


def _features(npz: Path) -> np.ndarray:
    return np.load(npz)["features"]


def test_an_export_gives_its_runs_features_and_finetuning(made, tmp_path):
    for name in ("video", "audio"):
        outs = {}
        for kind, path in (("run", made["run"]), ("export", made["export"]),
                           ("export", made["export"] / f"{name}.safetensors")):  # fmt: skip
            out = tmp_path / f"{name}-{path.name}.npz"
            assert main(["extract", "--run", str(path), "--encoder", name, "--data", str(made["table"]), "--out",
                         str(out), "--clips", "2"]) == 0  # fmt: skip
            assert json.loads(out.with_suffix(".json").read_text())["source"] == kind
            outs[path] = _features(out)
        first, *others = outs.values()
        for other in others:
            np.testing.assert_array_equal(first, other)
    # the export's metadata carries the run's training jitter, which finetuning draws its clips from
    assert load_source(made["export"], "video").cfg.data.augment == load_source(made["run"], "video").cfg.data.augment
    results = []
    for path in (made["run"], made["export"]):
        out = tmp_path / f"ft-{path.name}.json"
        assert main(["eval", "finetune", "--run", str(path), "--encoder", "audio", "--data", str(made["table"]),
                     "--mode", "full", "--out", str(out), "--set", "finetune.epochs=2",
                     "--set", "finetune.batch_size=4", "--set", "finetune.test_clips=1"]) == 0  # fmt: skip
        results.append(json.loads(out.read_text()))
    assert [r["source"] for r in results] == ["run", "export"]
    assert results[0]["splits"][0]["epoch_losses"] == results[1]["splits"][0]["epoch_losses"]


def test_the_encoders_kept_while_more_rounds_extend_a_run_are_a_source(made, tmp_path, capsys):
    """While ``--resume --rounds`` extends a finished run, its encoders.pt waits as encoders-N-rounds.pt: the error
    names that file, and extract and export take it (until 2026-12-01 every command refused it as "a file of the
    run"; export said "an export already")."""
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    base = ["extract", "--encoder", "audio", "--data", str(made["table"]), "--clips", "2"]
    assert main([*base, "--run", str(run / "encoders.pt"), "--out", str(tmp_path / "a.npz")]) == 0
    (run / "encoders.pt").rename(run / "encoders-1-rounds.pt")
    assert main([*base, "--run", str(run), "--out", str(tmp_path / "b.npz")]) == 2
    assert f"its encoders before them are in {run / 'encoders-1-rounds.pt'} (give that file as the run)" in \
        capsys.readouterr().err  # fmt: skip
    assert main([*base, "--run", str(run / "encoders-1-rounds.pt"), "--out", str(tmp_path / "b.npz")]) == 0
    np.testing.assert_array_equal(_features(tmp_path / "a.npz"), _features(tmp_path / "b.npz"))
    (run / "labels" / "round_001.npz").write_bytes((run / "labels" / "round_000.npz").read_bytes())  # a new round's
    assert main(["export", str(run / "encoders-1-rounds.pt"), "--out", str(tmp_path / "export")]) == 0
    assert "- rounds: 1 of 1;" in (tmp_path / "export" / "README.md").read_text()
    for name in ("video", "audio"):
        before = load_encoder(made["export"] / f"{name}.safetensors").state_dict()
        for key, value in load_encoder(tmp_path / "export" / f"{name}.safetensors").state_dict().items():
            assert torch.equal(value, before[key])


def test_an_export_keeps_its_runs_clips_per_video_and_missing_audio_policy(tmp_path):
    """Until 2026-12-01 an export left them out: `xdc extract --run EXPORT` took 10 clips per video and skipped
    files without audio where `--run RUN` took the run's."""
    from xdc.export import _write_encoder, encoder_metadata

    cfg = load_config(None, ["data.eval_clips=3", "data.missing_audio=zeros"], preset="tiny")
    encoder = build_encoder("audio", cfg.model)
    _write_encoder(tmp_path, "audio", encoder_metadata("audio", "audio", "xdc", encoder, cfg), encoder, ())
    data = load_source(tmp_path / "audio.safetensors", "audio").cfg.data
    assert (data.eval_clips, data.missing_audio) == (3, "zeros")


def test_an_export_from_before_the_jitter_was_kept_scales_to_a_quarter_more(made, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    old = tmp_path / "video.safetensors"
    with safe_open(made["export"] / "video.safetensors", framework="pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    data = json.loads(meta["data"])
    del data["augment"]
    save_file(weights, old, metadata={**meta, "data": json.dumps(data)})
    augment = load_source(old, "video").cfg.data.augment
    assert (augment.scale_min, augment.scale_max) == (36, 45)  # tiny's short side 36, then up to 1.25x


def test_the_released_weights_extract_with_the_paper_clips_and_data_settings_over_them(made, tmp_path):
    out = tmp_path / "released.npz"
    settings = [f"--set={s}" for s in SMALL_CLIPS]
    assert main(["extract", "--run", str(made["released"]), "--encoder", "video", "--data", str(made["table"]),
                 "--out", str(out), "--clips", "1", *settings]) == 0  # fmt: skip
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["source"] == "released" and summary["data"]["clip"]["frames"] == 2
    assert summary["data"]["mel"] == config_to_dict(load_config(preset="paper").data.mel)
    features = _features(out)
    assert features.shape == (12, 512)
    # the features are those of the released network on the clips those settings make, computed here by hand
    cfg = load_config(None, SMALL_CLIPS, preset="paper")
    own = load_source(made["released"], "video").cfg.data.clip
    assert own.frames == 8 and own.crop == 112  # the paper preset's, without settings
    items = [Item(str(made["root"] / "data" / "videos" / "000000.mp4"), "x")]
    manifest = items_to_manifest(items, tmp_path / "probe.csv", "video")[0]
    clip = EvalClips(manifest, cfg.data, clips=1, modalities=("video",))[0]["video"]
    assert clip.shape == (3, 2, 32, 32)
    with torch.no_grad():
        expected = load_official_xdc(made["released"])(clip[None]).numpy()
    paths = np.load(out)["path"]
    np.testing.assert_allclose(features[paths == items[0].path], expected, rtol=1e-4, atol=1e-5)


def test_finetuning_the_released_weights_on_clips_of_another_length(made, tmp_path):
    out = tmp_path / "ft.json"
    settings = [f"--set={s}" for s in [*SMALL_CLIPS, "data.clip.frames=3", "finetune.epochs=1",
                                       "finetune.batch_size=4", "finetune.test_clips=1"]]  # fmt: skip
    assert main(["eval", "finetune", "--run", str(made["released"]), "--encoder", "video", "--data",
                 str(made["table"]), "--mode", "fc", "--out", str(out), *settings]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    assert record["source"] == "released" and record["clip"]["frames"] == 3 and record["clip"]["crop"] == 32
    assert record["settings"]["data.clip.frames"] == 3
    assert "source" not in record["splits"][0] and record["splits"][0]["n_train"] == 8


def test_settings_the_encoder_decides_are_named_and_mistakes_are_one_line(made, tmp_path, capsys):
    base = ["extract", "--encoder", "video", "--data", str(made["table"]), "--clips", "1"]
    assert main([*base, "--run", str(made["run"]), "--out", str(tmp_path / "a"), "--set", "train.k=9",
                 "--set", "model.video_width=16", "--set", "data.eval_clips=2"]) == 0  # fmt: skip
    assert ("WARNING: xdc extract takes the encoder's model and train settings from --run; not used: train.k, "
            "model.video_width\n") in capsys.readouterr().err  # fmt: skip
    config = tmp_path / "settings.yaml"
    config.write_text("seed: 3\nfinetune: {epochs: 1, batch_size: 4, test_clips: 1}\ndata: {eval_clips: 1}\n")
    assert main(["eval", "finetune", "--run", str(made["run"]), "--encoder", "audio", "--data", str(made["table"]),
                 "--mode", "fc", "--config", str(config), "--out", str(tmp_path / "ft.json")]) == 0  # fmt: skip
    assert "WARNING" not in capsys.readouterr().err  # seed and finetune.* are finetuning's own
    for run, encoder, message in (
        (made["released"], "audio", "the released XDC weights are a video encoder: use --encoder video"),
        (made["run"] / "config.yaml", "video",
         f"is a file of the run {made['run']}: give the run's folder or its encoders.pt"),
        (made["run"] / "checkpoints" / "last.pt", "video",  # until 2026-12-03 read as the released weights
         f"is a file of the run {made['run']}: give the run's folder or its encoders.pt"),
        (made["root"] / "nothing", "video", "no such file or folder (a pretraining run folder, an `xdc export`"),
        (made["root"] / "data", "video", "is neither a pretraining run folder (no config.yaml or checkpoints/) nor"),
        (made["export"], "video2", "has no encoder 'video2'; it has: audio, video"),
        (made["export"] / "audio.safetensors", "video", "holds the encoder 'audio', not 'video'"),
    ):  # fmt: skip
        assert main([*base[:1], "--encoder", encoder, *base[3:], "--run", str(run), "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main([*base, "--run", str(made["run"]), "--out", str(tmp_path / "c"), "--set", "data.clip.crop=500"]) == 2
    assert "need data.clip.crop <= data.augment.scale_min" in capsys.readouterr().err


def test_data_settings_are_checked_against_the_encoders_own_not_the_defaults(made, tmp_path, capsys):
    """A tiny encoder's clips resized to 34 (its crop is 32): until 2026-12-01 refused, as below the default crop
    of 112, by extract and finetune alike."""
    base = ["--encoder", "video", "--data", str(made["table"]), "--set", "data.augment.scale_min=34"]
    for run in (made["run"], made["export"]):
        out = tmp_path / f"{run.name}.npz"
        assert main(["extract", "--run", str(run), *base, "--clips", "1", "--out", str(out)]) == 0, capsys.readouterr()
        assert json.loads(out.with_suffix(".json").read_text())["data"]["augment"]["scale_min"] == 34
    out = tmp_path / "ft.json"
    assert main(["eval", "finetune", "--run", str(made["run"]), *base, "--mode", "fc", "--out", str(out),
                 "--set", "finetune.epochs=1", "--set", "finetune.test_clips=1", "--set", "seed=4"]) == 0
    record = json.loads(out.read_text())
    assert record["settings"] == {"data.augment.scale_min": 34} and record["seed"] == 4
    assert record["config"]["epochs"] == 1
    # what the encoder's settings rule out is still one line, naming its values
    assert main(["extract", "--run", str(made["export"]), *base[:-1], "data.augment.scale_min=30", "--clips", "1",
                 "--out", str(tmp_path / "b.npz")]) == 2  # fmt: skip
    assert capsys.readouterr().err.endswith("got 32, 30, 40\n")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_pretraining_starts_from_a_run_an_export_or_the_released_weights(made, tmp_path, capsys):
    from xdc.evaluation.sources import load_run_encoder
    from xdc.training.pretrain import Pretrainer

    manifest = made["root"] / "manifest.csv"
    own = {name: _state(load_run_encoder(made["run"], name)[0]) for name in ("video", "audio")}
    tiny = ["train.batch_size=4", "train.k=2", "data.workers=0"]
    for init in (made["run"], made["export"], made["export"] / "video.safetensors"):
        cfg = load_config(None, [*tiny, "train.method=xdc", f"train.init={init}"], preset="tiny")
        with opens_of(made["run"] / "encoders.pt") as opened:
            trainer = Pretrainer(cfg, manifest, tmp_path / "a", Dist())
        assert len(opened) == (init == made["run"])  # until 2026-12-03 once, then once per encoder
        for name in ("video", "audio") if init.is_dir() else ("video",):
            assert all(torch.equal(v, own[name][k]) for k, v in trainer.encoders[name].state_dict().items()), init
        if not init.is_dir():  # the file holds the video encoder alone
            audio = trainer.encoders["audio"].state_dict()
            assert not any(torch.equal(v, own["audio"][k]) for k, v in audio.items() if k.endswith("conv1.weight"))
            assert "from random weights: audio (not in it)" in capsys.readouterr().out
    # the released weights: into a run with their model settings, the video encoder; audio starts at random
    released = ["train.method=xdc", f"train.init={made['released']}", "model.video_width=64",
                "model.video_layers=[2,2,2,2]", "model.video_mid_width=per_conv", "model.video_bn_eps=0.001"]
    trainer = Pretrainer(load_config(None, [*tiny, *released], preset="tiny"), manifest, tmp_path / "b", Dist())
    expected = load_official_xdc(made["released"]).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in trainer.encoders["video"].state_dict().items())
    assert {m.eps for m in trainer.encoders["video"].modules() if isinstance(m, torch.nn.BatchNorm3d)} == {0.001}
    assert "from random weights: audio (not in it)" in capsys.readouterr().out


def test_a_pretraining_init_that_does_not_fit_is_one_line(made, tmp_path, capsys):
    base = ["pretrain", "--data", str(made["root"] / "manifest.csv"), "--preset", "tiny", "--k", "2", "--rounds", "1",
            "--set", "train.batch_size=4", "--set", "data.workers=0"]  # fmt: skip
    for settings, message in (
        ([f"train.init={made['released']}"], "train.init " + str(made["released"]) + ": its video encoder is built "
         "otherwise than this run's; for its model settings: --set model.video_width=64 --set "
         "model.video_layers=[2,2,2,2] --set model.video_mid_width=per_conv --set model.video_bn_eps=0.001"),
        ([f"train.init={made['export'] / 'audio.safetensors'}", "train.method=sdc-video"],
         "has none of the encoders of method sdc-video, video (video); it has audio (audio)"),
        ([f"train.init={made['root'] / 'none.pth'}"], "none.pth: no such file or folder"),
        (["train.init=" + str(made["root"] / "data" / "labels.csv")], "cannot read"),
    ):  # fmt: skip
        out = tmp_path / f"run{len(message)}"
        assert main([*base, "--out", str(out), *(f"--set={s}" for s in settings)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_a_pretraining_init_that_is_not_there_is_said_before_the_manifest_is_read(made, tmp_path, capsys):
    """Until 2026-12-02, after rank 0 had read the manifest and written the run's videos (minutes at 65M)."""
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("")
    base = ["pretrain", "--data", str(made["root"] / "manifest.csv"), "--preset", "tiny", "--k", "2"]
    for init, message in ((tmp_path / "none.pth", "none.pth: no such file or folder"),
                          (unfinished, f"{unfinished} has no encoders.pt")):  # fmt: skip
        out = tmp_path / f"run-{init.name}"
        assert main([*base, "--out", str(out), "--set", f"train.init={init}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_a_run_started_from_another_keeps_where_from_and_resumes_without_it(made, tmp_path, capsys):
    import shutil

    start = tmp_path / "start"
    shutil.copytree(made["run"], start)
    out = tmp_path / "run"
    base = ["pretrain", "--data", str(made["root"] / "manifest.csv"), "--out", str(out), "--preset", "tiny", "--k", "2",
            "--set", "train.batch_size=4", "--set", "data.workers=0"]  # fmt: skip
    assert main([*base, "--rounds", "1", "--set", f"train.init={start}"]) == 0
    assert f"encoders from {start}: video, audio" in capsys.readouterr().out
    assert load_config(out / "config.yaml").train.init == str(start.resolve())
    first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "start" and first["init"] == str(start.resolve())
    shutil.rmtree(start)  # a resumed run's weights are its checkpoint's: the init is not read again
    assert main([*base, "--resume", "--rounds", "2"]) == 0
    export_run(out, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"- initial weights: `{start.resolve()}` (train.init;" in card
    from xdc.report import write_report

    write_report(out, tmp_path / "report.html")
    assert f"initial weights from {start.resolve()}" in (tmp_path / "report.html").read_text()


def test_the_released_weights_export_like_a_run_and_serve_from_there(made, tmp_path, capsys):
    out = tmp_path / "released"
    assert main(["export", str(made["released"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "video.safetensors"]
    loaded, expected = load_encoder(out / "video.safetensors"), load_official_xdc(made["released"])
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in loaded.state_dict().items())
    card = (out / "README.md").read_text()
    assert "# The released XDC video encoder `r2plus1d_18_xdc_ig65m_kinetics.pth`" in card
    assert "per-conv middle widths, BatchNorm eps 0.001), width 64 | 2, 2, 2, 2 | 3 x 8 x 112 x 112 | 512" in card
    # xdc extract from the export: the features of the file itself
    settings = [f"--set={s}" for s in SMALL_CLIPS]
    for run, npz in ((made["released"], tmp_path / "a.npz"), (out, tmp_path / "b.npz")):
        assert main(["extract", "--run", str(run), "--encoder", "video", "--data", str(made["table"]), "--out",
                     str(npz), "--clips", "1", *settings]) == 0  # fmt: skip
    np.testing.assert_array_equal(_features(tmp_path / "a.npz"), _features(tmp_path / "b.npz"))
    # and a pretraining's start: the export carries the model settings the run must share
    from xdc.training.pretrain import Pretrainer

    released = [f"train.init={out}", "model.video_width=64", "model.video_layers=[2,2,2,2]",
                "model.video_mid_width=per_conv", "model.video_bn_eps=0.001", "train.k=2", "data.workers=0"]
    trainer = Pretrainer(load_config(None, released, preset="tiny"), made["root"] / "manifest.csv", tmp_path / "r",
                         Dist())  # fmt: skip
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in trainer.encoders["video"].state_dict().items())
    capsys.readouterr()
    assert main(["export", str(out / "video.safetensors"), "--out", str(tmp_path / "again")]) == 2
    assert "is an export already: xdc export takes a run folder or the released XDC weights" in capsys.readouterr().err


def test_files_dropped_from_a_table_are_one_warning_line(made, tmp_path):
    """missing=skip drops listed files that are gone with a warning: the commands print it as their other warnings,
    not as Python's "path:line: UserWarning:" with a line of xdc's source under it."""
    table = tmp_path / "table.csv"
    rows = made["table"].read_text().splitlines()
    gone = str(made["root"] / "data" / "gone.mp4")
    table.write_text("\n".join([*rows, f"{gone},{rows[1].split(',')[1]},test"]) + "\n")
    done = subprocess.run([sys.executable, "-m", "xdc.cli", "extract", "--run", str(made["run"]), "--encoder", "audio",
                           "--data", str(table), "--option", "missing=skip", "--clips", "1", "--out",
                           str(tmp_path / "f.npz")], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"WARNING: 1 of {len(rows)} files listed in {table} not found, the first: {gone}; dropped\n" in done.stderr
    assert "UserWarning" not in done.stderr
