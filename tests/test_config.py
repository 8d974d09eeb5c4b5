import dataclasses
import re

import pytest

from xdc.cli import build_parser, main
from xdc.config import ClipConfig, MelConfig, given_keys, load_config
from xdc.errors import UserError


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ndata:\n  clip: {frames: 16, fps: 16}\n  missing_audio: zeros\n")
    cfg = load_config(path, ["data.clip.fps=8", "data.clip.audio_seconds=2", "data.augment.flip=false"])
    assert cfg.seed == 3 and cfg.data.clip.frames == 16 and cfg.data.clip.fps == 8.0
    assert cfg.data.clip.seconds == 2.0 and cfg.data.clip.audio_span == 2.0
    assert cfg.data.missing_audio == "zeros" and cfg.data.augment.flip is False
    assert load_config().data.clip.audio_span == 1.0  # default: audio spans the video clip
    # YAML 1.1 reads 1e-5 (no dot) as text: a number setting takes it as the number it writes
    path.write_text("train:\n  weight_decay: 1e-5\n")
    cfg = load_config(path, ["train.lr=2E-3", "model.video_bn_eps=1e-3"])
    assert (cfg.train.weight_decay, cfg.train.lr, cfg.model.video_bn_eps) == (1e-5, 2e-3, 1e-3)


def test_a_number_with_a_leading_zero_or_a_colon_is_refused_alike_in_a_file_and_a_set(tmp_path):
    """YAML 1.1 reads 010 as octal (8) and 1:30 in base 60 (90): data.clip.frames: 010 trained on 8 frames,
    unsaid, until 2026-12-03. A text setting takes such a value as written, in a file now too."""
    path = tmp_path / "c.yaml"
    for typed, key in (("010", "data.clip.frames"), ("-010", "data.clip.frames"), ("00", "train.k"),
                       ("1:30", "data.clip.frames"), ("010", "train.lr"), ("1:30.5", "train.lr")):
        *sections, leaf = key.split(".")
        path.write_text("".join(f"{section}: {{" for section in sections) + f"{leaf}: {typed}" + "}" * len(sections))
        for settings in ((path, []), (None, [f"{key}={typed}"])):
            with pytest.raises(UserError, match=rf"^{key}: {typed} is not a plain decimal number \(YAML 1.1 reads a "
                                                r"leading zero as octal, 010 as 8, and 1:30 as base 60, 90\): write it "
                                                r"without the leading zero or colon$"):  # fmt: skip
                load_config(*settings)
    cfg = load_config(None, ["data.clip.frames=0x10", "train.k=1_000", "train.lr=010.5"])  # no octal reading
    assert (cfg.data.clip.frames, cfg.train.k, cfg.train.lr) == (16, 1000, 10.5)
    path.write_text("train:\n  init: 001\n")
    assert load_config(path).train.init == "001"  # the folder 1 until 2026-12-03


def test_a_text_setting_takes_an_override_as_typed():
    """YAML reads 001 as the number 1 and 2026-11-30 as a date: train.init=001 named the folder 1 until 2026-12-01,
    and a folder named by its date was refused. null and an empty value still mean none."""
    for typed in ("001", "2026-11-30", "1.10", "0x1F", "12:30"):
        assert load_config(None, [f"train.init={typed}"]).train.init == typed
    assert load_config(None, ["train.init=null"]).train.init is None
    assert load_config(None, ["train.init="]).train.init is None
    assert load_config(None, ["train.init='007'"]).train.init == "007"
    for empty in ("''", '" "'):  # the current folder was read as the weights (until 2026-12-03)
        with pytest.raises(UserError, match=r"^train.init is empty: give the path of the weights to start from, or "
                                            r"null for random ones$"):  # fmt: skip
            load_config(None, [f"train.init={empty}"])
    with pytest.raises(UserError, match=r"train.init must be a string, not \['a'\]"):
        load_config(None, ["train.init=[a]"])
    cfg = load_config(None, ["train.compile=yes", "data.workers=3"])  # settings not of text alone: as YAML reads them
    assert cfg.train.compile is True and cfg.data.workers == 3



def test_a_key_of_another_section_or_a_preset_in_a_config_names_where_it_goes(tmp_path):
    """`rounds:` at the top of a YAML file, or `preset: small`, was refused naming the top's keys alone (until
    2026-12-03): the setting meant, or --preset, is named."""
    path = tmp_path / "my.yaml"
    path.write_text("rounds: 2\n")
    with pytest.raises(UserError, match=r"unknown setting 'rounds'; .* \(did you mean train\.rounds\?\)$"):
        load_config(path)
    with pytest.raises(UserError, match=r"\(did you mean train\.lr or finetune\.lr\?\)$"):
        load_config(None, ["lr=0.1"])
    with pytest.raises(UserError, match=r"'data.frames'; .* \(did you mean data\.clip\.frames\?\)$"):
        load_config(None, ["data.frames=16"])
    path.write_text("preset: small\n")
    with pytest.raises(UserError, match=r"'preset'; .* \(a preset is chosen with the command's --preset, not in "):
        load_config(path)
    with pytest.raises(UserError, match=r"unknown setting 'trian.k'; .* \(did you mean train\.k\?\)$"):
        load_config(None, ["trian.k=3"])
    with pytest.raises(UserError, match=r"unknown setting 'colour'; valid keys here: seed, data, model, train, "
                                        r"finetune, synthetic$"):  # fmt: skip
        load_config(None, ["colour=red"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.clip.frame=3", "unknown setting 'data.clip.frame'; valid keys here: frames"),
        ("data.clip.frames=abc", "must be an integer"),
        ("data.clip.frames=2.5", "must be an integer"),
        ("data.augment.flip=yes please", "must be true or false"),
        ("data.missing_audio=drop", "must be 'skip' or 'zeros'"),
        ("data.read_timeout_s=-1", "data.read_timeout_s must be >= 0"),
        ("data.clip=3", "is a section"),
        ("frames", "key=value"),
        ("train.lr=nan", "train.lr must be a finite number, not 'nan'"),
        # YAML's infinity and NaN passed the range checks (until 2026-12-01)
        ("train.lr=.inf", r"train.lr must be a finite number, not inf$"),
        ("data.clip.fps=.nan", r"data.clip.fps must be a finite number, not nan$"),
        ("train.k=[3", r"override 'train.k=\[3': the value is not valid YAML \(expected ',' or '\]', but got "
                       r"'<stream end>' at line 1, column 3\)$"),
        ("train.k=@x", "found character '@' that cannot start any token at line 1, column 1"),
        # values out of range: before, a traceback later (log_every, weight_decay, epoch_size), a crash of faiss
        # (pca_dim), or a run that trained nothing (accumulate)
        ("train.log_every=0", r"train.log_every must be at least 1, not 0$"),
        ("train.pca_dim=0", r"train.pca_dim must be at least 1, not 0$"),
        ("train.accumulate=0", r"train.accumulate must be at least 1, not 0$"),
        ("train.weight_decay=-1", r"train.weight_decay must be at least 0, not -1.0$"),
        ("train.lr=-0.1", r"train.lr must be at least 0, not -0.1$"),
        ("train.momentum=1", r"train.momentum must be at least 0 and below 1, not 1.0$"),
        ("train.k=1", r"train.k must be at least 2, not 1$"),
        ("data.clip.frames=0", r"data.clip.frames must be at least 1, not 0$"),
        ("data.clip.audio_seconds=0", r"data.clip.audio_seconds must be above 0, not 0.0$"),
        ("data.mel.f_max=0", r"data.mel.f_max must be above data.mel.f_min \(0.0\), not 0.0$"),
        ("data.max_fail_fraction=1.5", r"data.max_fail_fraction must be between 0 and 1, not 1.5$"),
        # log-mel settings out of reach in samples: a traceback of torch or torchaudio in the run (until 2026-12-02)
        ("data.mel.n_fft=128", r"data.mel.window_ms=16 is 256 samples at data.clip.sample_rate=16000: it must be from "
                               r"1 to data.mel.n_fft=128 samples$"),
        ("data.mel.hop_ms=0.01", r"data.mel.hop_ms=0.01 is 0 samples at data.clip.sample_rate=16000: it must be at "
                                 r"least one sample$"),
        ("data.mel.f_min=9000", r"data.mel.f_min must be below half data.clip.sample_rate \(8000 Hz, the top of the "
                                r"mel bands where data.mel.f_max is null\), not 9000.0$"),
        ("data.mel.f_max=9000", r"data.mel.f_max must be at most half data.clip.sample_rate \(8000 Hz\), not 9000.0$"),
        ("data.clip.audio_seconds=0.001", r"a clip's audio \(0.001 s, 16 samples at data.clip.sample_rate=16000\) must "
                                          r"be longer than half data.mel.n_fft \(128 samples\) and at least a hop"),
        ("finetune.test_clips=0", r"finetune.test_clips must be at least 1, not 0$"),
        ("train.compile=fast", r"train.compile must be true, false or a mode \(default, reduce-overhead, .*'fast'$"),
        # a negative seed stopped recluster=plateau runs, a large one every run, with a traceback
        ("seed=-1", r"seed must be a whole number from 0 to 4294967295, not -1$"),
        ("seed=10000000000000000", r"seed must be a whole number from 0 to 4294967295, not 10000000000000000$"),
    ],
)
def test_bad_overrides_are_user_errors(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_overrides_given_as_one_string_are_refused_with_the_list_to_give():
    # a string was taken character by character: "override 'd' is not of the form key=value"
    with pytest.raises(TypeError, match=re.escape("a list of 'key=value' strings, e.g. ['data.clip.frames=8']")):
        load_config(None, "data.clip.frames=8")


def test_the_shortest_audio_that_the_log_mel_settings_allow_makes_a_spectrogram():
    import torch

    from xdc.data.audio import LogMel

    clip = load_config(None, ["data.clip.audio_seconds=0.01"]).data  # 160 samples: one hop, above half n_fft
    mel = LogMel(clip.mel, clip.clip.sample_rate)(torch.zeros(160))
    assert mel.shape == (40, 1) and torch.isfinite(mel).all()
    with pytest.raises(UserError, match="must be longer than half data.mel.n_fft"):
        load_config(None, ["data.clip.audio_seconds=0.008"])  # 128 samples: torch's reflect padding needs more


def test_mel_bands_without_a_frequency_bin_are_refused_as_torchaudio_makes_them():
    """A band between two bins of the STFT was a constant row of every spectrogram: torchaudio warned once, and the
    run trained on it (until 2026-12-03), e.g. at 64 bands, common elsewhere, with the default n_fft of 256."""
    import warnings

    from xdc.data.audio import LogMel

    with pytest.raises(UserError, match=r"^data.mel.n_mels=64 bands from 0 to 8000 Hz leave 1 of them without a "
                                        r"frequency bin of data.mel.n_fft=256 at data.clip.sample_rate=16000 \(62.5 Hz "
                                        r"apart\): use fewer bands, a wider range or a larger n_fft$"):  # fmt: skip
        load_config(None, ["data.mel.n_mels=64"])
    refused = 0
    for rate, n_fft, n_mels, f_min, f_max in [(r, n, m, lo, hi) for r in (8000, 11025, 16000) for n in (128, 512)
                                              for m in (40, 64, 128) for lo, hi in ((0, None), (300, 3000))]:
        mel = MelConfig(n_mels=n_mels, window_ms=1000 * n_fft / rate, n_fft=n_fft, f_min=f_min, f_max=f_max)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchaudio's, at the empty bands this test looks for
            bands = LogMel(mel, rate).mel.mel_scale.fb.amax(0)
        try:
            load_config(None, [f"data.clip.sample_rate={rate}"], mapping={"data": {"mel": dataclasses.asdict(mel)}})
        except UserError as e:
            refused += 1
            said = int(re.search(r"leave (\d+) of them", str(e))[1])
            # a bin on the range's end is outside its band, which float32 rounding can leave a weight of 1e-5
            assert (bands == 0).sum() <= said <= (bands < 1e-4).sum()
        else:
            assert (bands > 0).all()
    assert 0 < refused < 36


@pytest.mark.parametrize("value, mode", [("false", None), ("true", "default"), ("reduce-overhead", "reduce-overhead")])
def test_compile_is_off_on_or_a_mode(value, mode):
    assert load_config(None, [f"train.compile={value}"]).train.compile_mode() == mode


def test_bad_yaml_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("data: {clip: [\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(UserError, match="not valid YAML: expected the node content, but found .* at line 2, "
                                        "column 1$"):  # one line: where, not PyYAML's drawing
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_a_section_left_empty_in_a_config_sets_nothing(tmp_path):
    """`train:` with its keys commented out is null in YAML: until 2026-12-03 refused as a value given to the
    section. The keys given are the file's others alone (what the commands that take some settings name)."""
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  # k: 3\ndata:\n  clip:\n  mel: {n_mels: 20}\nseed: 2\n")
    cfg = load_config(path)
    assert (cfg.train, cfg.data.clip, cfg.data.mel.n_mels, cfg.seed) == (load_config().train, ClipConfig(), 20, 2)
    assert given_keys(path, ["train.k=5"]) == ["data.mel.n_mels", "seed", "train.k"]
    path.write_text("train: 3\n")
    with pytest.raises(UserError, match="'train' is a section"):
        load_config(path)


def test_a_key_given_twice_in_a_config_is_refused(tmp_path):
    """PyYAML keeps a repeated key's last value: a second train: section dropped the first one's k (until 2026-12-02,
    without a word). A merge key's values that the mapping sets again are YAML's overrides, not repeats."""
    (tmp_path / "twice.yaml").write_text("train:\n  k: 5\ndata:\n  retries: 1\ntrain:\n  lr: 0.02\n")
    with pytest.raises(UserError, match=r"^config .*twice.yaml is not valid YAML: 'train' is given twice \(first at "
                                        r"line 1\) at line 5, column 1$"):  # fmt: skip
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "nested.yaml").write_text("train:\n  lr: 0.01\n  lr: 0.02\n")
    with pytest.raises(UserError, match=r"'lr' is given twice \(first at line 2\) at line 3, column 3$"):
        load_config(tmp_path / "nested.yaml")
    with pytest.raises(UserError, match="'a' is given twice"):
        load_config(None, ["data.clip.crop_box={a: 1, a: 2}"])
    # a dotted key, as --set writes it, and the same key in its section: YAML sees two keys (until 2026-12-03 the
    # later one's value was taken without a word)
    (tmp_path / "dotted.yaml").write_text("train.k: 3\ndata: {retries: 1}\ntrain:\n  k: 5\n")
    with pytest.raises(UserError, match=r"^config .*dotted.yaml gives train.k twice: as a dotted key and in its "
                                        r"section; give it once$"):  # fmt: skip
        load_config(tmp_path / "dotted.yaml")
    (tmp_path / "dotted.yaml").write_text("train.k: 3\ntrain:\n  lr: 0.5\n")
    assert (load_config(tmp_path / "dotted.yaml").train.k, load_config(tmp_path / "dotted.yaml").train.lr) == (3, 0.5)
    (tmp_path / "merge.yaml").write_text("train:\n  <<: {k: 3, lr: 0.02}\n  k: 5\n")
    assert (load_config(tmp_path / "merge.yaml").train.k, load_config(tmp_path / "merge.yaml").train.lr) == (5, 0.02)


def test_a_config_that_is_not_utf8_is_named_in_one_line(tmp_path):
    """A Latin-1 editor's accent or PowerShell's UTF-16: said so (until 2026-12-01: UnicodeDecodeError); UTF-8
    with the BOM that Windows tools write is read."""
    (tmp_path / "latin1.yaml").write_bytes("# réglages\ntrain:\n  k: 4\n".encode("latin-1"))
    (tmp_path / "utf16.yaml").write_bytes("train:\n  k: 4\n".encode("utf-16"))
    (tmp_path / "bom.yaml").write_bytes("# réglages\ntrain:\n  k: 4\n".encode("utf-8-sig"))
    with pytest.raises(UserError, match=r"^config .*latin1.yaml is not UTF-8 text \(byte 0xe9 on line 1\): save it "
                                        r"as UTF-8$"):  # fmt: skip
        load_config(tmp_path / "latin1.yaml")
    with pytest.raises(UserError, match=r"^config .*utf16.yaml is not UTF-8 text \(a binary file, or text in UTF-16: "
                                        r"save it as UTF-8\)$"):  # fmt: skip
        load_config(tmp_path / "utf16.yaml")
    assert load_config(tmp_path / "bom.yaml").train.k == 4
    (tmp_path / "bom-latin1.yaml").write_bytes(b"\xef\xbb\xbftrain:\n  k: 4\n# r\xe9glages\n")
    with pytest.raises(UserError, match=r"\(byte 0xe9 on line 3\)"):  # counted past the BOM
        load_config(tmp_path / "bom-latin1.yaml")


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    code = main(["make-synthetic", str(tmp_path / "x"), "--videos", "1", "--set", "synthetic.fps=fast"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("xdc: error: synthetic.fps must be") and err.count("\n") == 1


@pytest.mark.parametrize("command", [["extract", "--run", "r", "--encoder", "video", "--data", "d", "--out", "f.npz"],
                                     ["eval", "finetune", "--run", "r", "--encoder", "video", "--data", "d"]])
@pytest.mark.parametrize("setting", ["train.k", "train.k=abc"])
def test_a_malformed_setting_that_the_command_does_not_read_is_said_once(tmp_path, capsys, monkeypatch, command,
                                                                         setting):
    """Until 2026-12-03 xdc extract and eval finetune warned first that it was not used, then refused it."""
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--set", setting]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("command", [["pretrain", "--out", "run"], ["make-synthetic", "out"],
                                     ["extract", "--run", "r", "--encoder", "video", "--data", "d", "--out", "f.npz"]])
def test_a_second_config_file_is_refused_not_put_in_place_of_the_first(tmp_path, capsys, command):
    """argparse keeps the last of an option given twice: --config base.yaml --config exp.yaml read exp.yaml alone,
    and base.yaml's settings were dropped without a word (until 2026-12-02)."""
    base, exp = tmp_path / "base.yaml", tmp_path / "exp.yaml"
    with pytest.raises(SystemExit) as stop:
        main([*command, "--config", str(base), "--config", str(exp)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument --config: given twice ({base}, {exp}): it takes one "
                                            "file; give the other settings with --set\n")  # fmt: skip


@pytest.mark.parametrize("command", [["pretrain", "--out", "run"], ["benchmark", "grid", "--data", "d", "--out", "o"]])
def test_a_second_preset_is_refused_not_put_in_place_of_the_first(capsys, command):
    """Until 2026-12-02 the last --preset was taken and the first dropped without a word; one given once is taken,
    where it has a default too (benchmark grid's small)."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--preset", "small", "--preset", "paper"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith("error: argument --preset: given twice (small, paper): it takes one "
                                            "preset; give the other settings with --set\n")  # fmt: skip
    assert build_parser().parse_args([*command, "--preset", "paper"]).preset == "paper"


@pytest.mark.parametrize("command, said", [(["pretrain", "--out", "r", "--metod", "xdc"], "xdc pretrain: error: "
                                              "unrecognized arguments: --metod xdc (did you mean --method?)"),
                                             (["eval", "kfold", "--features", "f.npz", "--clasifier=svm"],
                                              "xdc eval kfold: error: unrecognized arguments: --clasifier=svm (did you "
                                              "mean --classifier?)"),
                                             (["report", "r", "x.json"], "xdc report: error: unrecognized arguments: "
                                              "x.json")])  # fmt: skip
def test_an_unknown_option_is_said_by_its_command_with_the_one_meant(capsys, command, said):
    """argparse left a subcommand's unknown option to the top parser: the usage of `xdc` alone and no hint (until
    2026-12-03)."""
    with pytest.raises(SystemExit) as stop:
        main(command)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.endswith(said + "\n")
    assert err.startswith(f"usage: xdc {' '.join(command[:2 if command[0] == 'eval' else 1])} [-h]")


@pytest.mark.parametrize("command", [["pretrain", "--data", "m.csv", "--out"], ["index", "videos", "--out"],
                                     ["make-synthetic"], ["export", "run", "--out"]])
def test_an_empty_out_is_refused_not_taken_as_the_current_folder(tmp_path, capsys, monkeypatch, command):
    """Path("") is ".": until 2026-12-02 ``--out "$RUN"`` with RUN unset trained a run in the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([*command, ""])
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(": error: argument " + ("OUT" if command == ["make-synthetic"] else "--out")
                                            + ": empty: give the path to write\n")
    assert not any(tmp_path.iterdir())


def test_logmel_on_is_validated_and_auto_means_the_device_on_cuda():
    with pytest.raises(UserError, match="data.logmel_on must be auto, workers or device"):
        load_config(None, ["data.logmel_on=gpu"])
    auto = load_config(None, [], preset="tiny").data
    assert (auto.logmel_on_device("cuda"), auto.logmel_on_device("cpu")) == (True, False)
    assert not load_config(None, ["data.logmel_on=workers"]).data.logmel_on_device("cuda")
    assert load_config(None, ["data.logmel_on=device"]).data.logmel_on_device("cpu")


def test_crops_on_is_validated_and_auto_means_the_device_on_cuda_where_the_resize_enlarges():
    with pytest.raises(UserError, match="data.crops_on must be auto, workers or device"):
        load_config(None, ["data.crops_on=gpu"])
    # the tiny preset decodes at a short side of 40 and may resize to 36: a shrink, which needs antialiasing
    with pytest.raises(UserError, match="data.crops_on=device needs"):
        load_config(None, ["data.crops_on=device"], preset="tiny")
    assert not load_config(None, [], preset="tiny").data.crops_on_device("cuda")
    for preset in ("paper", "small"):  # decoded at scale_min: every resize enlarges
        data = load_config(None, [], preset=preset).data
        assert (data.crops_on_device("cuda"), data.crops_on_device("cpu")) == (True, False)
    assert not load_config(None, ["data.crops_on=workers"], preset="paper").data.crops_on_device("cuda")
    assert load_config(None, ["data.crops_on=device"], preset="paper").data.crops_on_device("cpu")
    assert not load_config(None, ["data.clip.decode_short_side=0"], preset="paper").data.crops_on_device("cuda")


def test_a_config_file_reaches_every_run_of_the_demo_and_the_grid_benchmark(tmp_path):
    """They make each run's settings themselves: a --config file's settings come to them as --set ones, before
    the --set ones given (which win)."""
    from xdc.cli import _as_overrides, build_parser

    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  k: 5\n  lr: 1e-3\ndata:\n  clip: {frames: 6}\n")
    for command in (["demo"], ["benchmark", "grid", "--data", "x", "--out", "y"]):
        args = build_parser().parse_args([*command, "--config", str(path), "--set", "train.k=7"])
        overrides = _as_overrides(args, getattr(args, "preset", "tiny"))
        assert overrides == ("train.k=7", "train.lr=0.001", "data.clip.frames=6", "train.k=7")
        cfg = load_config(None, overrides, preset="tiny")
        assert (cfg.train.k, cfg.train.lr, cfg.data.clip.frames) == (7, 0.001, 6)


@pytest.mark.parametrize("command, instead", [(["demo", "--videos", "0"], ""),
                                             (["benchmark", "grid", "--data", "d"], " (--methods chooses them)")])
def test_the_demo_and_the_grid_benchmark_refuse_a_method_setting(tmp_path, capsys, command, instead):
    """Laid over each run's own method, it made every run that method, under the others' names (until 2026-12-03):
    a run's config.yaml, which names its method, given as --config did so too."""
    out = ["--out", str(tmp_path / "out")]
    (tmp_path / "run.yaml").write_text("train:\n  method: mdc\n  k: 8\n")
    for given in (["--set", "train.method=xdc"], ["--config", str(tmp_path / "run.yaml")]):
        assert main([*command, *out, *given]) == 2
        assert capsys.readouterr().err == (f"xdc: error: xdc {' '.join(command[:2 - (command[0] == 'demo')])} trains "
                                           "each of its methods in turn: leave train.method out of --config and --set"
                                           f"{instead}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, scale_min, said, scales",
                         [(["demo", "--videos", "0"], 34, "--videos must be at least 16", "36, 40"),
                          (["benchmark", "grid", "--data", "d"], 60, "does not have the GRID", "64, 72")])
def test_the_demo_and_the_grid_benchmark_check_settings_over_their_own_preset(tmp_path, capsys, command, scale_min,
                                                                              said, scales):
    """Until 2026-12-03 they were checked over the defaults: a scale_min that their preset's crop allows (tiny: 32,
    small: 56) was refused, and a crop above their preset's scale_min was taken, to stop later (the demo once it
    had written its data). Each is said before any work here: the command's own check, or the settings' line."""
    out = ["--out", str(tmp_path / "out")]
    assert main([*command, *out, "--set", f"data.augment.scale_min={scale_min}"]) == 2
    assert said in capsys.readouterr().err
    assert main([*command, *out, "--set", "data.clip.crop=66"]) == 2
    assert capsys.readouterr().err == ("xdc: error: need data.clip.crop <= data.augment.scale_min <= data.augment."
                                       "scale_max (frames are resized to a short side in [scale_min, scale_max], "
                                       f"then cropped), got 66, {scales}\n")
    assert not (tmp_path / "out").exists()
