"""The commands that README.md and docs/ show are ones the CLI takes: each parses with the real parser, and its
preset and --set settings load; and the Python examples of README.md and docs/ run. A renamed option, setting or
function fails here, not in a user's first copied command."""

import dataclasses
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc.cli import build_parser, main
from xdc.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^\s*|&&\s*)(?:\.venv/bin/)?xdc (.*)|-m xdc\.cli (.*)")


def documented_commands(page: Path) -> list[tuple[int, str]]:
    """(line, arguments) of each ``xdc`` command in the page's code blocks, continuation lines joined, comments
    dropped; synopses with ``...`` (a placeholder, not a value) left out, their [optional] parts taken as given."""
    commands, in_code, pending = [], False, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code, pending = not in_code, None
            continue
        if not in_code:
            continue
        if pending is not None:
            start, text = pending
            line = f"{text} {line.strip()}"
        elif match := COMMAND.search(line):
            start, line = number, match.group(1) or match.group(2)
        else:
            continue
        line = re.sub(r"\s#.*$", "", line)
        if line.endswith("\\"):
            pending = (start, line[:-1])
            continue
        pending = None
        # `xdc prepare ... && xdc index ...`: each command of the chain on its own
        first, *chained = re.split(r"\s&&\s", line)
        for part in [first, *(m.group(1) or m.group(2) for link in chained if (m := COMMAND.search(link)))]:
            if "..." not in part:
                commands.append((start, re.sub(r"\[(--[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]", r"\1", part)))
    return commands


# BENCHMARKS.md and RESULTS.md show the xdc commands that their numbers were measured with
SHOWN_IN = [*PAGES, ROOT / "BENCHMARKS.md", ROOT / "RESULTS.md"]
CASES = [(page, number, text) for page in SHOWN_IN for number, text in documented_commands(page)]


def test_the_docs_show_commands():
    assert len(CASES) >= 30  # a change to the parsing above that finds nothing would pass every case
    assert {page.name for page, _, _ in CASES} >= {"README.md", "pretrain.md", "evaluation.md", "scale.md"}
    assert any(text == "demo" for page, _, text in CASES if page.name == "README.md")  # one of the two commands


@pytest.mark.parametrize("page, number, text", CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_a_documented_command_parses_and_its_settings_load(page, number, text, capsys):
    try:
        args = build_parser().parse_args(shlex.split(text))
    except SystemExit:
        pytest.fail(f"{page.name}:{number}: xdc {text}\n{capsys.readouterr().err}")
    load_config(None, getattr(args, "overrides", []), preset=getattr(args, "preset", None))


# A setting named in a page's prose, alone in backticks: `train.k`, `data.clip.frames=16`, `finetune.*`, `seed`
# (not one inside a longer quotation, such as an error message about a mistyped key); `synthetic.json` is a file.
NAMED_SETTING = re.compile(r"`((?:data|model|train|finetune|synthetic)(?:\.[a-z_]+)+|seed)(?:\.\*|=[^`]*)?`")
FILE_SUFFIXES = (".json", ".csv", ".yaml", ".npz")


def _is_setting(key: str) -> bool:
    obj = Config()
    for part in key.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, part)
    return True


def test_every_setting_the_docs_name_in_prose_exists():
    """The commands' --set settings load (above); a setting named in a sentence or a table is checked here: a key
    renamed or removed in src/xdc/config.py fails here, not in a user's --set copied from the page."""
    named, wrong = 0, []
    for page in PAGES:
        text = page.read_text()
        for match in NAMED_SETTING.finditer(text):
            if match.group(1).endswith(FILE_SUFFIXES):
                continue
            named += 1
            if not _is_setting(match.group(1)):
                wrong.append(f"{page.name}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}")
    assert named >= 100  # the pattern still finds the pages' settings
    assert not wrong, "settings that src/xdc/config.py does not have:\n" + "\n".join(wrong)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # its 4 workers, on 2 cores
def test_the_readme_python_example_runs_as_written_and_gives_the_shapes_it_names(tmp_path, monkeypatch):
    """The README's data-layer example, unchanged, on a generated collection in a folder with its my.yaml and
    manifest.csv: its batches have the shapes its comments give and name no failed file."""
    from conftest import synthetic_manifest

    example = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert "make_loader" in example
    synthetic_manifest(tmp_path, 6, 2, seed=0)
    (tmp_path / "my.yaml").write_text("seed: 0\n")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(example, "README.md", "exec"), names)
    batch = names["batch"]
    assert batch["video"].shape == (6, 3, 8, 112, 112) and batch["video"].dtype == torch.float32
    assert batch["audio"].shape == (6, 1, 40, 100)
    assert batch["failures"] == []


def test_no_documented_result_is_named_as_the_summary_beside_its_features():
    """`xdc extract --out X.npz` writes its summary to X.json, which `xdc eval ... --features X.npz --out X.json`
    refuses to replace: the README's ESC-50 commands stopped there, at their second line (until 2026-12-01)."""
    parser = build_parser()
    for page, number, text in CASES:
        args = parser.parse_args(shlex.split(text))
        if getattr(args, "features", None) is not None and args.out is not None:
            assert args.out != args.features.with_suffix(".json"), f"{page.name}:{number}: xdc {text}"


# --- the Python examples of docs/ ------------------------------------------------------------------------------
# Each ```python block of docs/*.md runs unchanged, as a notebook cell would, in a folder that holds what it names
# at the names it gives (a tiny run and its export, a generated video, dataset layouts; the README's example is
# run above), with its free names (`features`, `round_seed`, ...) given values of the kinds its comments state.
# Afterwards the shapes, keys and files that its comments and the page promise are checked. Nothing is left out:
# the released weights are stood in for by a file of their layout (tests/test_official.py) and torchvision's
# Kinetics download by the state dict of its own r2plus1d_18 (random values, the same keys and shapes).

EXAMPLE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOC_EXAMPLES = [(f"{page.name}#{n}", page.read_text().count("\n", 0, m.start()) + 2, m.group(1))
                for page in PAGES[1:] for n, m in enumerate(EXAMPLE.finditer(page.read_text()), 1)]  # fmt: skip


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory) -> Path:
    """A finished one-round tiny XDC run (RUN/run) on 12 generated videos (RUN/data) of 3 classes."""
    from conftest import tiny_run

    return tiny_run(tmp_path_factory.mktemp("docs"), 12, 3, seed=0, batch=8, k=3)


@pytest.fixture(scope="module")
def docs_export(docs_run) -> Path:
    """The run exported with its ONNX and torch.export programs."""
    out = docs_run.parent / "export"
    assert main(["export", str(docs_run), "--out", str(out), "--also", "onnx", "pt2"]) == 0
    return out


@pytest.fixture(scope="module")
def docs_result(docs_run) -> Path:
    """`xdc eval kfold --classifier svm` of the run's audio features on the generated videos in 2 folds."""
    from xdc.evaluation.adapters import Item, write_table

    root = docs_run.parent
    labels = (root / "data" / "labels.csv").read_text().splitlines()[1:]
    write_table([Item(str(root / "data" / line.split(",")[0]), line.split(",")[1], "", fold=i % 2 + 1)
                 for i, line in enumerate(labels)], root / "table.csv")  # fmt: skip
    assert main(["extract", "--run", str(docs_run), "--encoder", "audio", "--data", str(root / "table.csv"),
                 "--clips", "1", "--out", str(root / "audio.npz")]) == 0  # fmt: skip
    out = root / "esc50-svm.json"
    assert main(["eval", "kfold", "--features", str(root / "audio.npz"), "--classifier", "svm", "--out", str(out)]) == 0
    return out


def _clustering(work, request, monkeypatch) -> dict:
    rng = np.random.default_rng(0)
    return {"features": rng.standard_normal((600, 512)).astype(np.float32), "round_seed": 3, "run_seed": 0,
            "previous_assignments": rng.integers(0, 256, 600), "epoch": 0, "round": 1}  # fmt: skip


def _clustering_check(work, names) -> None:
    z, result, stats = names["z"], names["result"], names["stats"]
    assert z.shape == (600, 256) and z.dtype == np.float32 and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    assert result.assignments.shape == (600,) and result.centroids.shape == (256, 256)
    assert result.sizes.sum() == 600 and result.loss > 0
    assert stats.k == 256 and stats.collapsed is False and 0 <= names["change"] <= 1
    keys = list(names["sampler"])  # (video index, draw seed), as TrainClips takes them
    assert len(keys) == 600 and all(0 <= index < 600 for index, _ in keys)


def _data(work, request, monkeypatch) -> dict:
    shutil.copy(request.getfixturevalue("docs_run").parent / "data" / "videos" / "000000.mp4", work / "video.mp4")
    return {}


def _data_check(work, names) -> None:
    clip = names["clip"]  # a generated video: 3 s, square 64 x 64 pictures, 16 kHz sound all through
    assert clip.video.dtype == np.uint8 and clip.video.shape == (8, 128, 128, 3)  # short side 128, the default
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (16000,)
    assert clip.video_padded == 0 and clip.audio_padded == 0
    with pytest.raises(names["DecodeError"], match="starts after the video.s end"):  # not a frozen frame
        names["read_clip"]("video.mp4", start=3.5, spec=names["ClipConfig"](frames=8, fps=8))


def _datasets(work, request, monkeypatch) -> dict:
    from test_adapters import _esc50, _grid, _ucf

    _ucf(work / "data" / "UCF-101")
    _esc50(work / "data" / "ESC-50")
    _grid(work.parent / "shared" / "data" / "grid-s1", ["bbaf2n", "bbaf9a"])
    return {}


def _datasets_check(work, names) -> None:
    from test_adapters import UCF_CLASSES

    assert len(names["items"]) == 12 and (len(names["train"]), len(names["test"])) == (6, 6)
    assert names["names"] == sorted(UCF_CLASSES)
    assert sorted(item.fold for item in names["esc10"]) == [1, 3, 5]  # the 3 ESC-10 rows of the 5
    assert [(item.label, item.end_s - item.start_s) for item in names["digits"]] == [("two", 1.0), ("nine", 1.0)]


def _evaluation(work, request, monkeypatch) -> dict:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = np.eye(4, dtype=np.float32)[y] * 2 + rng.standard_normal((60, 4)).astype(np.float32)
    videos = np.arange(60) // 2
    return {"train_x": x[videos % 3 > 0], "train_y": y[videos % 3 > 0], "train_video_ids": videos[videos % 3 > 0],
            "test_x": x[videos % 3 == 0], "test_y": y[videos % 3 == 0], "test_video_ids": videos[videos % 3 == 0],
            "x": x, "y": y, "esc50_fold": videos % 5 + 1, "recording_ids": videos, "true_labels": y,
            "predicted_labels": np.roll(y, 1), "kmeans_assignments": rng.integers(0, 4, 60), "class_labels": y}


def _evaluation_check(work, names) -> None:
    from xdc.evaluation.probe import ProbeResult

    r, out = names["r"], names["out"]
    assert all(0 <= value <= 1 for value in (r.top1, r.top5, r.clip_top1, r.val_top1)) and r.c > 0
    assert r.n_test_videos == 10 and "per_class" in r.to_dict()
    assert len(out["results"]) == 5 and all(isinstance(fold, ProbeResult) for fold in out["results"])
    assert {"mean_top1", "std_top1", "per_class", "confusion"} <= set(out)
    assert set(names["per"]) == {"per_class", "confusion"}
    assert {"nmi", "ari", "purity", "hungarian_accuracy"} <= set(names["m"])


def _export_folder(work, request, monkeypatch) -> dict:
    shutil.copytree(request.getfixturevalue("docs_export"), work / "exports" / "xdc")
    return {}


def _export_loads(work, request, monkeypatch) -> dict:
    from test_official import official_state_dict

    torch.save(official_state_dict(), work / "r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth")
    _report_run(work, request, monkeypatch)  # the run that was exported, at runs/xdc
    return _export_folder(work, request, monkeypatch)


def _export_loads_check(work, names) -> None:
    import xdc

    video, audio, official = names["video"], names["audio"], names["official"]
    assert not (video.training or audio.training or official.training)
    assert {t.device.type for m in (video, audio, official) for t in (*m.parameters(), *m.buffers())} == {"cpu"}
    with torch.no_grad():
        assert video(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 64)  # the tiny preset's width
        assert audio(torch.zeros(2, 1, 40, 100)).shape == (2, 64)
        assert official(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 512)
    exported = xdc.load_encoder(work / "exports" / "xdc" / "video.safetensors").state_dict()
    assert all(torch.equal(v, exported[k]) for k, v in video.state_dict().items())  # the run's is its export's


def _export_programs(work, request, monkeypatch) -> dict:
    _export_folder(work, request, monkeypatch)
    return {"clips": np.random.default_rng(0).standard_normal((3, 3, 4, 32, 32)).astype(np.float32)}


def _export_programs_check(work, names) -> None:
    import xdc

    onnx_features = names["session"].run(["features"], {"clips": names["clips"]})[0]
    with torch.no_grad():
        own = xdc.load_encoder(work / "exports" / "xdc" / "video.safetensors")(torch.from_numpy(names["clips"]))
    assert isinstance(names["features"], torch.Tensor) and names["features"].shape == (3, 64)
    assert np.allclose(onnx_features, own.numpy(), atol=1e-5) and torch.allclose(names["features"], own, atol=1e-6)
    with pytest.raises(Exception):  # numpy clips fail in the torch.export program
        names["video"](names["clips"])


def _export_transform_check(work, names) -> None:
    assert names["meta"]["data"]["eval_short_side"] == names["data"].augment.scale_min == 36
    clips = names["transform"](np.zeros((4, 40, 48, 3), np.uint8))
    assert clips.shape == (3, 4, 32, 32) and clips.dtype == torch.float32


def _models(work, request, monkeypatch) -> dict:
    from torchvision.models._api import WeightsEnum
    from torchvision.models.video import r2plus1d_18

    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *args, **kwargs: r2plus1d_18().state_dict())
    return {}


def _models_check(work, names) -> None:
    assert [len(getattr(names["encoder"], f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    key = "layer3.0.conv1.0.0.weight"
    assert torch.equal(names["encoder"].state_dict()[key], names["state"][key])


def _report_run(work, request, monkeypatch) -> dict:
    shutil.copytree(request.getfixturevalue("docs_run"), work / "runs" / "xdc")
    return {}


def _report_result(work, request, monkeypatch) -> dict:
    shutil.copy(request.getfixturevalue("docs_result"), work / "esc50-svm.json")
    return {}


def _report_run_check(work, names) -> None:
    assert (work / "runs" / "xdc" / "report.html").is_file()


def _report_result_check(work, names) -> None:
    assert (work / "esc50-svm.html").is_file()


# page#n (the n-th ```python block of the page): (what it needs in its folder, with its free names; what it gives)
EXAMPLES = {
    "clustering.md#1": (_clustering, _clustering_check),
    "data.md#1": (_data, _data_check),
    "datasets.md#1": (_datasets, _datasets_check),
    "evaluation.md#1": (_evaluation, _evaluation_check),
    "export.md#1": (_export_loads, _export_loads_check),
    "export.md#2": (_export_programs, _export_programs_check),
    "export.md#3": (_export_folder, _export_transform_check),
    "models.md#1": (_models, _models_check),
    "report.md#1": (_report_run, _report_run_check),
    "report.md#2": (_report_result, _report_result_check),
}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # documented, of the SVM's large Cs
@pytest.mark.parametrize("key, number, code", DOC_EXAMPLES, ids=[key for key, _, _ in DOC_EXAMPLES])
def test_a_docs_python_example_runs_as_written_and_gives_what_its_page_says(key, number, code, tmp_path,
                                                                            monkeypatch, request):  # fmt: skip
    assert len(DOC_EXAMPLES) >= 10  # the pattern still finds the pages' examples
    if key not in EXAMPLES:
        pytest.fail(f"{key} (line {number}) is a new example: give it what it needs in EXAMPLES")
    prepare, check = EXAMPLES[key]
    work = tmp_path / "work"
    work.mkdir()
    names = prepare(work, request, monkeypatch)
    monkeypatch.chdir(work)
    exec(compile("\n" * (number - 1) + code, f"docs/{key.split('#')[0]}", "exec"), names)  # the page's lines
    check(work, names)


def test_xdc_version_names_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"xdc {version('xdc')}\n"


def _anchors(page: Path) -> set[str]:
    """The fragments a link may name in ``page``: its explicit ``<a id>``s and its headings' ids as GitHub makes
    them (lower case, punctuation dropped, each space a hyphen)."""
    text = page.read_text()
    ids = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        heading = re.sub(r"<[^>]+>", "", heading).strip().lower()
        ids.add(re.sub(r"[^\w\- ]", "", heading).replace(" ", "-"))
    return ids


def test_every_link_between_the_pages_finds_its_page_and_place():
    """Until 2026-12-03 three links named a heading by its first words (#at-scale), which GitHub's ids, made of the
    whole heading, never are."""
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken, links = [], 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            links += 1
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (fragment and linked.suffix == ".md" and fragment not in _anchors(linked)):
                broken.append(f"{page.name}: {target}")
    assert links > 50 and not broken


# --- each command's --help against its page ----------------------------------------------------------------------
# The page that documents each command's options (README's tour shows commands, not all their options).
COMMAND_PAGES = {"index": "index.md", "prepare": "prepare.md", "make-synthetic": "make-synthetic.md",
                 "pretrain": "pretrain.md", "extract": "evaluation.md", "eval linear": "evaluation.md",
                 "eval kfold": "evaluation.md", "eval finetune": "evaluation.md", "eval clusters": "evaluation.md",
                 "benchmark grid": "benchmark-grid.md", "report": "report.md", "export": "export.md", "demo": "demo.md"}


def _commands(parser=None, name: str = ""):
    """(name, parser) of every command that runs (``eval linear``, not ``eval``), through the real parser."""
    import argparse

    parser = parser or build_parser()
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands and name:
        yield name, parser
    for action in subcommands:
        for child_name, child in action.choices.items():
            yield from _commands(child, f"{name} {child_name}".strip())


def _options(parser) -> list:
    return [a for a in parser._actions if a.help != "==SUPPRESS==" and "-h" not in a.option_strings]


def test_every_option_in_help_has_a_text_and_is_on_its_commands_page():
    """An option that --help lists with no text (until 2026-12-03 `--classifier` of eval linear and kfold, `--out` of
    benchmark grid), or that its command's page never names, leaves a user guessing; a new command gets a page."""
    commands = dict(_commands())
    assert set(commands) == set(COMMAND_PAGES)
    silent, undocumented = [], []
    for name, parser in commands.items():
        parser.format_help()  # a help text argparse cannot format (a bare %) fails here, not in a user's --help
        page = (ROOT / "docs" / COMMAND_PAGES[name]).read_text()
        for action in _options(parser):
            if not (action.help or "").strip():
                silent.append(f"xdc {name} {action.option_strings or action.dest}")
            for option in action.option_strings:
                if not re.search(re.escape(option) + r"(?![\w-])", page):
                    undocumented.append(f"xdc {name} {option} ({COMMAND_PAGES[name]})")
    assert not silent, "options without a help text:\n" + "\n".join(silent)
    assert not undocumented, "options their command's page does not name:\n" + "\n".join(undocumented)


def test_a_commands_usage_names_its_arguments_as_its_page_does():
    """`xdc index PATH [PATH ...]`, `xdc export RUN`: until 2026-12-03 the usage and "the following arguments are
    required" said `paths`, `out` and `run`, names the pages never use."""
    for name, parser in _commands():
        page = (ROOT / "docs" / COMMAND_PAGES[name]).read_text()
        for action in _options(parser):
            if not action.option_strings:
                shown = action.metavar or action.dest
                named = re.search(rf"\b{re.escape(shown.split('|')[0])}\b", page)
                assert shown.isupper() and named, f"xdc {name} {shown}"


def test_the_defaults_that_help_and_the_pages_state_are_the_parsers():
    """"(default 128)" in --help, and a page's option table with a default column, say the default the parser
    gives: one changed in the code alone fails here."""
    commands = dict(_commands())
    stated = 0
    for name, parser in commands.items():
        defaults = {s: a.default for a in _options(parser) for s in a.option_strings if a.default not in (None, [])}
        for action in _options(parser):
            if action.default is None:  # a setting's, named as such: "(default: data.eval_clips)"
                continue
            for match in re.finditer(r"\(default:? ([^)\s;,]+)\)", action.help or ""):
                stated += 1
                assert str(action.default) == match.group(1), f"xdc {name} {action.option_strings}: {action.help}"
        page = (ROOT / "docs" / COMMAND_PAGES[name]).read_text()
        for table in re.findall(r"^\| option \|.*?default.*?\|\n(?:\|.*\n)+", page, re.M):
            column = [c.strip() for c in table.splitlines()[0].strip("|").split("|")].index("default")
            for row in table.splitlines()[2:]:
                cells = [c.strip() for c in row.strip("|").split("|")]
                option = re.match(r"`(--[\w-]+)", cells[0])
                if option and option.group(1) in defaults and not isinstance(defaults[option.group(1)], bool):
                    stated += 1
                    assert cells[column].strip("`") == str(defaults[option.group(1)]), f"{COMMAND_PAGES[name]}: {row}"
    assert stated >= 15  # the patterns still find the stated defaults


# --- the benchmark scripts' commands ------------------------------------------------------------------------------
# `benchmarks/NAME.py ARGS` in a code block or a `span`: each re-measure command the pages show, with [optional]
# parts taken and each [a | b] alternative on its own. No heading: "### ... `benchmarks/crops.py --audio`" names
# an option, not a command.
BENCHMARK_COMMAND = re.compile(r"benchmarks/(\w+)\.py([^`#\n]*)")


def _alternatives(args: str) -> list[str]:
    choice = re.search(r"\[([^\[\]]*\|[^\[\]]*)\]", args)
    if choice:
        return [v for alt in choice.group(1).split("|") for v in _alternatives(args.replace(choice.group(0), alt, 1))]
    return [re.sub(r"\[([^\[\]]*)\]", r"\1", args)]


def documented_benchmark_commands() -> list[tuple[str, str, list[str]]]:
    """(page:line, script, arguments) of every benchmark script command in the pages."""
    found = []
    for page in SHOWN_IN:
        in_code = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
            elif in_code or not line.startswith("#"):
                for match in BENCHMARK_COMMAND.finditer(line):
                    for args in _alternatives(match.group(2)):
                        found.append((f"{page.name}:{number}", match.group(1), shlex.split(args)))
    return found


class _Parsed(Exception):
    """Raised by the script's parser once it has taken the arguments: nothing is measured."""


def test_every_benchmark_command_the_pages_show_is_taken_by_its_scripts_parser(monkeypatch, capsys):
    """Until 2026-12-03 nothing checked BENCHMARKS.md's re-measure commands: an option renamed in a script would
    fail only in the next person's re-measure, or on a lent GPU machine's few minutes. Each script's own parser
    (inside its main) takes the page's arguments, each option by its full name; the script stops there."""
    import argparse
    import runpy

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed(self)

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    commands, scripts, refused = documented_benchmark_commands(), {}, []
    for where, script, args in commands:
        if script not in scripts:
            scripts[script] = runpy.run_path(str(ROOT / "benchmarks" / f"{script}.py"), run_name=f"bench_{script}")
        monkeypatch.setattr("sys.argv", [f"{script}.py", *args])
        try:
            scripts[script]["main"]()
            refused.append(f"{where}: {script}.py ran without parsing its arguments")
        except _Parsed as parsed:
            # argparse takes a prefix of an option, which a new option of the script can make ambiguous
            parser = parsed.args[0]
            cut = [a for a in args if a.startswith("--") and a.split("=")[0] not in parser._option_string_actions]
            if cut:
                refused.append(f"{where}: {script}.py: options not written in full: {' '.join(cut)}")
        except SystemExit:
            refused.append(f"{where}: {script}.py {shlex.join(args)}\n{capsys.readouterr().err.strip()}")
    assert len(commands) >= 60 and len(scripts) >= 15  # the pattern still finds the pages' commands
    assert not refused, "\n".join(refused)
