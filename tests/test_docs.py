"""The commands that README.md and docs/ show are ones the CLI takes: each parses with the real parser, and its
preset and --set settings load; and the README's Python example runs. A renamed option, setting or function fails
here, not in a user's first copied command."""

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch

from xdc.cli import build_parser
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
        if "..." not in line:
            commands.append((start, re.sub(r"\[(--[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]", r"\1", line)))
    return commands


CASES = [(page, number, text) for page in PAGES for number, text in documented_commands(page)]


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
