"""Dataset adapters: public evaluation datasets, in their official on-disk layouts, as one standard labelled table.

``load_dataset(kind, root, split, modality, **options)`` returns sorted ``Item``s (absolute path, label, split, fold,
time window, averaging group); ``write_table``/``read_table`` store them as CSV. Adapters read only names and lists,
never media, so they are fast and testable on placeholder files. Audio-only files (wav, flac, ...) are ordinary
items. Layouts, options and split semantics: docs/datasets.md.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import math
import os
import posixpath
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from xdc.config import torchrun_rank
from xdc.data.index import MEDIA_EXTENSIONS
from xdc.data.manifest import open_paths_file, open_text
from xdc.errors import UserError

SPLITS = ("train", "test", "val", "")
COLUMNS = ("path", "label", "split", "fold", "start_s", "end_s", "group")
MISSING = ("error", "skip")
MODALITIES = ("video", "audio")
DCASE2013 = {"scenes_stereo": "train", "scenes_stereo_testset": "test"}  # development and test set: their splits


@dataclass(frozen=True, order=True)
class Item:
    """One labelled example. ``end_s == 0`` means "to the end of the file"; ``group`` defaults to ``path``."""

    path: str  # absolute, symbolic links resolved (as in the manifest of ``xdc index``)
    label: str
    split: str = ""  # "train", "test", "val", or "" when the dataset states none
    fold: int = 0  # cross-validation fold (ESC-50: 1..5); 0 when none
    start_s: float = 0.0
    end_s: float = 0.0
    group: str = ""  # the id predictions are averaged over (the video or recording)

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.path)


class Items(list):
    """The items ``load_dataset`` gives, a list, with ``missing``: the files its lists name that are not there and
    option ``missing="skip"`` dropped (absolute, sorted), so that a result can record them as left out."""

    def __init__(self, items: Iterable[Item] = (), missing: Iterable[str] = ()) -> None:
        super().__init__(items)
        self.missing = sorted(missing)


def load_dataset(
    kind: str, root: str | Path, split: int | None = None, modality: str | None = None, **options: object
) -> Items:
    """The items of dataset ``kind`` stored at ``root`` (for ``csv``: the CSV file), sorted, as ``Items`` (their
    ``missing``: the listed files not found, where option ``missing="skip"`` dropped them).

    ``split`` is the official split number of the datasets that have them (UCF101, HMDB51: 1, 2 or 3); the
    other kinds refuse it. ``modality`` ("video" or "audio") is that of the encoder the items are for: where the
    dataset gives each example a file per modality (TAU Urban Audio-Visual Scenes), the items name that one's; the
    others ignore it. Every mistake in the layout or the options is a ``UserError`` with one line.
    """
    adapter = ADAPTERS.get(kind)
    if adapter is None:
        raise UserError(f"unknown dataset kind {kind!r}; kinds: {', '.join(ADAPTERS)}")
    if modality not in (*MODALITIES, None):
        raise UserError(f"modality must be 'video' or 'audio', got {modality!r}")
    params = list(inspect.signature(adapter).parameters)[1:]
    allowed = [p for p in params if p not in ("split", "modality")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for {kind}; options: {', '.join(allowed) or 'none'}")
    defaults = {name: p.default for name, p in inspect.signature(adapter).parameters.items()}
    options = {key: _option(kind, key, value, defaults[key]) for key, value in options.items()}
    root = Path(root)
    if not root.exists():
        raise UserError(f"{kind}: {root} not found")
    if kind != "csv" and not root.is_dir():
        raise UserError(f"{kind}: {root} is not a folder (the dataset's root folder)")
    if "split" in params:
        options["split"] = split
    elif split is not None:
        raise UserError(f"{kind} has no numbered official splits; leave split out (items carry their split or fold)")
    if "modality" in params:
        options["modality"] = modality
    items = adapter(root, **options)
    if not items:
        raise UserError(f"{kind}: no items found in {root}")
    return Items(sorted(items), items.missing if isinstance(items, Items) else ())


def load_ucf101(
    root: Path, split: int | None, splits_dir: str | Path | None = None, missing: str = "error"
) -> list[Item]:
    """UCF101: class folders of videos + ``ucfTrainTestlist/`` (classInd.txt, trainlist0N.txt, testlist0N.txt)."""
    n = _split_number(split, "ucf101")
    lists = _splits_folder(root, splits_dir, "ucfTrainTestlist")
    names = _ucf_classes(lists / "classInd.txt")
    known = set(names.values())
    listed = []
    train = lists / f"trainlist0{n}.txt"
    for line, fields in _read_lines(train):
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) not in names:
            raise UserError(f"{train} line {line}: expected 'Class/video.avi <index in classInd.txt>', "
                            f"got {' '.join(fields)!r}")  # fmt: skip
        label = names[int(fields[1])]
        if _class_folder(fields[0]) != label:
            raise UserError(f"{train} line {line}: class {fields[1]} is {label} in classInd.txt, "
                            f"but the video is not in {label}/")  # fmt: skip
        listed.append((f"{train} line {line}", Item(_abs(root / fields[0]), label, "train")))
    test = lists / f"testlist0{n}.txt"
    for line, fields in _read_lines(test):
        label = _class_folder(fields[0])
        if len(fields) != 1 or label not in known:
            raise UserError(f"{test} line {line}: expected 'Class/video.avi' with a class of classInd.txt, "
                            f"got {' '.join(fields)!r}")  # fmt: skip
        listed.append((f"{test} line {line}", Item(_abs(root / fields[0]), label, "test")))
    return _drop_missing(_once(listed), missing, f"{train.name} and {test.name} of {lists}", root)


def load_hmdb51(
    root: Path, split: int | None, splits_dir: str | Path | None = None, missing: str = "error"
) -> list[Item]:
    """HMDB51: class folders of videos + ``testTrainMulti_7030_splits/<class>_test_split<N>.txt`` (1 train, 2 test)."""
    n = _split_number(split, "hmdb51")
    lists = _splits_folder(root, splits_dir, "testTrainMulti_7030_splits")
    suffix = f"_test_split{n}.txt"
    files = sorted(f for f in lists.glob(f"*{suffix}") if not f.name.startswith("."))  # ._x: macOS metadata
    if not files:
        raise UserError(f"{lists}: no <class>{suffix} split files")
    listed = []
    for file in files:
        label = file.name[: -len(suffix)]  # class names contain underscores (brush_hair): cut the known suffix
        for line, fields in _read_lines(file):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise UserError(f"{file} line {line}: expected '<video>.avi <0|1|2>', got {' '.join(fields)!r}")
            if fields[1] != "0":  # 0: in neither split
                split = "train" if fields[1] == "1" else "test"
                listed.append((f"{file} line {line}", Item(_abs(root / label / fields[0]), label, split)))
    packed = sorted({item.label for _, item in listed
                     if not (root / item.label).is_dir() and (root / f"{item.label}.rar").is_file()})  # fmt: skip
    if packed:  # hmdb51_org.rar holds one .rar per class: every file of those would be missing
        raise UserError(f"{root}: {len(packed)} class(es) still packed in their .rar, e.g. {packed[0]}.rar: unpack "
                        f"each there (unrar x {packed[0]}.rar gives {packed[0]}/)")  # fmt: skip
    return _drop_missing(_once(listed), missing, f"the *{suffix} files of {lists}", root)


def load_esc50(root: Path, esc10: bool = False, missing: str = "error") -> list[Item]:
    """ESC-50: ``audio/*.wav`` + ``meta/esc50.csv``; label = category, fold = the official fold (1..5)."""
    meta = _dataset_file(root, Path("meta", "esc50.csv"), "esc50")
    listed = []
    for line, row in _read_csv(meta, ("filename", "fold", "category") + (("esc10",) if esc10 else ())):
        where = f"{meta} line {line}"
        if esc10 and not _boolean(row["esc10"], f"{where}: esc10"):
            continue
        fold = _number(int, row["fold"], "fold", where)
        if fold < 1 or not row["filename"] or not row["category"]:
            raise UserError(f"{where}: needs a filename, a category and a fold of 1 or more")
        listed.append((where, Item(_abs(root / "audio" / row["filename"]), row["category"], fold=fold)))
    return _drop_missing(_once(listed), missing, str(meta), root)


def load_dcase(root: Path, modality: str | None = None, missing: str = "error") -> list[Item]:
    """DCASE acoustic scenes: a TUT/TAU archive (``audio/`` + ``evaluation_setup/`` lists; TAU Urban Audio-Visual
    Scenes with ``video/`` too, its items the files of ``modality``), the DCASE2013 folders (``scenes_stereo/``,
    ``scenes_stereo_testset/``, or one of them as ``root``), or ``<class>/<file>`` folders; with ``train/`` and
    ``test/`` (and optional ``val/``), named in any case (``Train/``), as splits."""
    if missing not in MISSING:  # the folder layouts list nothing that could be missing, but a typo is still one
        raise UserError(f"option missing must be 'error' or 'skip', got {missing!r}")
    if (root / "evaluation_setup").is_dir():  # TUT and TAU archives: all files in audio/, their splits in lists
        return _dcase_setup(root, missing, modality)
    here = root.absolute()  # "." has a name here
    if here.name in DCASE2013 and any(_is_media(p.name) and p.is_file() for p in here.iterdir()):
        return _dcase2013(here.parent, [here])  # one DCASE2013 folder given itself (until 2026-12-02: no items)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if any(p.name in DCASE2013 for p in folders):  # as classes, every file would be of class scenes_stereo
        return _dcase2013(root, folders)
    for folder in folders:  # root one level too high: the archive would be one class, named after it
        inner = [name for name in ("evaluation_setup", *DCASE2013) if (folder / name).is_dir()]
        if inner:
            raise UserError(f"{folder}/ is a DCASE archive (it holds {inner[0]}/), not a class folder: give it as the "
                            "dataset's root (--data)")  # fmt: skip
    splits = _split_folders(root, folders)
    if not splits:
        return _one_spelling(root, _once(_class_folders(root, "")))
    for folder in folders:  # media in another folder (validation/, a class) would be left out unsaid
        if folder not in splits.values() and _holds_media(folder):
            raise UserError(f"{folder}/ holds media beside the split folders, but is none of train/, val/, test/ "
                            "(in any case): rename it or move it out")  # fmt: skip
    listed = [pair for split, folder in splits.items() for pair in _class_folders(folder, split)]
    return _one_spelling(root, _once(listed))


def load_fsdd(root: Path) -> list[Item]:
    """FSDD: ``recordings/{digit}_{speaker}_{index}.wav`` (or in ``root``); index 0-4 is test, 5-49 train."""
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    listed = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".wav" or path.name.startswith("."):  # hidden: metadata (macOS ._x.wav)
            continue
        match = re.fullmatch(r"(\d)_([^_]+)_(\d+)\.wav", path.name, flags=re.IGNORECASE)
        if match is None:
            raise UserError(f"{path}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
        listed.append((str(path), Item(_abs(path), match[1], "test" if int(match[3]) < 5 else "train")))
    inner = [] if listed else [p for p in sorted(root.iterdir()) if (p / "recordings").is_dir()]
    if inner:  # root one level too high: the folder the repository was cloned into is in it
        raise UserError(f"fsdd: no recordings in {root}, but {inner[0]} holds recordings/: give that folder as the "
                        "dataset's root (--data)")  # fmt: skip
    return _once(listed)


def load_grid_words(
    root: Path,
    slot: str | None = None,
    window_s: float = 1.0,
    duration_s: float = 3.0,
    split_by: str = "sentence",
    missing: str = "error",
) -> list[Item]:
    """GRID word clips: one item per ``words.csv`` row of ``slot``, a ``window_s`` window centred on the word."""
    words = _dataset_file(root, Path("words.csv"), "grid-words")
    rows = _read_csv(words, ("path", "slot", "word", "start_s", "end_s"))
    slots = list(dict.fromkeys(row["slot"] for _, row in rows))
    if slot not in slots:
        given = "needs --option slot=NAME" if slot is None else f"has no slot {slot!r}"
        raise UserError(f"grid-words {given}; the slots of {words}: {', '.join(slots)}")
    if not (window_s > 0 and duration_s > 0):
        raise UserError(f"grid-words: window_s and duration_s must be positive, got {window_s} and {duration_s}")
    if split_by not in ("sentence", "none"):
        raise UserError(f"grid-words: split_by must be 'sentence' or 'none', got {split_by!r}")
    listed = []
    for line, row in rows:
        if row["slot"] != slot:
            continue
        where = f"{words} line {line}"
        start, end = (_number(float, row[c], c, where) for c in ("start_s", "end_s"))
        if not 0 <= start <= end or not row["word"]:
            raise UserError(f"{where}: needs a word and 0 <= start_s <= end_s")
        path = _abs(root / row["path"])
        # the stem as listed, not the resolved path's: a link's target may be named otherwise (git-annex, DVC)
        split = _sentence_split(row["path"]) if split_by == "sentence" else ""
        window = _window((start + end) / 2, window_s, duration_s)
        listed.append((where, Item(path, row["word"], split, 0, *window, group=f"{path}#{slot}")))
    return _drop_missing(_once(listed), missing, str(words), root)


def load_csv(root: Path, missing: str = "error") -> list[Item]:
    """A CSV with columns path,label and optional split, fold, start_s, end_s, group; paths relative to it."""
    if root.is_dir():
        raise UserError(f"csv: {root} is a folder; give the CSV file")
    base = root.resolve().parent
    rows = _read_csv(root, ("path", "label"))
    listed = [(f"{root} line {line}", _row_item(row, _abs(base / row["path"]), f"{root} line {line}"))
              for line, row in rows]  # fmt: skip
    return _drop_missing(_once(listed, repeats=str(root)), missing, str(root))


ADAPTERS: dict[str, Callable[..., list[Item]]] = {
    "ucf101": load_ucf101,
    "hmdb51": load_hmdb51,
    "esc50": load_esc50,
    "dcase": load_dcase,
    "fsdd": load_fsdd,
    "grid-words": load_grid_words,
    "csv": load_csv,
}


def write_table(items: Iterable[Item], path: str | Path) -> None:
    """Write the standard table (``COLUMNS``); ``read_table`` gives back the same items."""
    try:
        with open_text(path, "w") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(astuple(item) for item in items)  # str(float) round-trips exactly
    except OSError as e:
        raise UserError(f"cannot write table {path}: {e.strerror or e}") from None


def read_table(path: str | Path) -> list[Item]:
    """Read a table written by ``write_table`` (every column present, absolute paths), in its row order."""
    items = []
    for line, row in _read_csv(Path(path), COLUMNS, strip=False):
        where = f"{path} line {line}"
        if not os.path.isabs(row["path"]):
            raise UserError(f"{where}: path {row['path']!r} is not absolute (a hand-written CSV loads as kind 'csv')")
        items.append(_row_item(row, row["path"], where))
    return items


def split_items(items: Iterable[Item], split: str) -> list[Item]:
    """The items of one split ("" selects items without one)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; splits: train, test, val, or '' for none")
    return [item for item in items if item.split == split]


NOT_FOUND = "not found (listed, and dropped by option missing='skip')"  # the reason not_found gives


def not_found(items: list[Item]) -> list[dict[str, str]]:
    """The files that ``items``, where they are ``load_dataset``'s, left out as not found (option
    ``missing="skip"``), as a result's ``skipped`` lists a file (path and reason): until 2026-12-03 a warning alone
    said so, and the results understated what was left out."""
    missing = items.missing if isinstance(items, Items) else []
    return [{"path": path, "reason": NOT_FOUND} for path in missing]


def with_not_found(skipped: list[dict], items: list[Item]) -> list[dict]:
    """``skipped`` of a result kept from an earlier run, with not_found(items) for its own such entries: what the
    lists name and is not there now, as a new result would list (one written before 2026-12-03 listed none; a
    kept result listed them as they were, until 2026-12-03). A file read and failed stays as it was."""
    return [*(skip for skip in skipped if skip.get("reason") != NOT_FOUND), *not_found(items)]


def classes(items: Iterable[Item]) -> list[str]:
    """The sorted distinct labels: a label's index in this list is its class index."""
    return sorted({item.label for item in items})


# --- helpers -----------------------------------------------------------------------------------------------


def _abs(path: Path) -> str:
    return os.path.realpath(path)


def _split_number(split: int | None, kind: str) -> int:
    if split is None:  # until 2026-12-02 "got None", where the command's option is what is missing
        raise UserError(f"{kind} needs split 1, 2 or 3 (its official train/test splits): give one with --split "
                        "(eval finetune: or --split all)")  # fmt: skip
    if split not in (1, 2, 3):
        raise UserError(f"{kind} needs split 1, 2 or 3 (its official train/test splits), got {split!r}")
    return int(split)


def _splits_folder(root: Path, splits_dir: str | Path | None, name: str) -> Path:
    """The folder of the split lists: ``splits_dir``, else ``name`` in ``root`` or beside it, where the official
    archive unpacks when it is unpacked next to the videos' (until 2026-12-03 only in ``root``)."""
    folder = Path(splits_dir) if splits_dir is not None else root / name
    if splits_dir is None and not folder.is_dir() and (root.absolute().parent / name).is_dir():
        folder = root.absolute().parent / name
    if not folder.is_dir():
        raise UserError(f"split folder {folder} not found (option splits_dir gives its location)")
    return folder


def _ucf_classes(path: Path) -> dict[int, str]:
    """The class of each index. An index or a class given twice is refused here, where the mistake is: each line of
    the lists was checked against one of the two, and failed naming the video's folder instead."""
    names: dict[int, str] = {}
    index_line: dict[int, int] = {}
    class_line: dict[str, int] = {}
    for line, fields in _read_lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise UserError(f"{path} line {line}: expected '<index> <class>', got {' '.join(fields)!r}")
        index, name = int(fields[0]), fields[1]
        if index in index_line:
            raise UserError(f"{path} line {line}: index {index} is {name} here and {names[index]} on line "
                            f"{index_line[index]}: one index per class")  # fmt: skip
        if name in class_line:
            raise UserError(f"{path} line {line}: class {name} has index {index} here and another on line "
                            f"{class_line[name]}: one index per class")  # fmt: skip
        names[index], index_line[index], class_line[name] = name, line, line
    return names


def _class_folder(relative: str) -> str:
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else ""


def _class_folders(folder: Path, split: str) -> list[tuple[str, Item]]:
    """Media files anywhere under each ``folder/<class>/``, labelled with the class folder's name (with the path
    each was found at)."""
    listed = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        walked = set()  # real folders: a link back up (a loop) is not walked again, nor its files counted again
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            if os.path.realpath(dirpath) in walked:
                dirnames[:] = []
                continue
            walked.add(os.path.realpath(dirpath))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if _is_media(name):
                    found = Path(dirpath) / name
                    listed.append((str(found), Item(_abs(found), class_dir.name, split)))
    return listed


def _split_folders(root: Path, folders: list[Path]) -> dict[str, Path]:
    """The split folders among ``folders``, by name in any case: a case-insensitive file system (macOS) found
    ``Train/`` as ``train/`` already; on others it was a class (until 2026-12-02)."""
    splits: dict[str, Path] = {}
    for folder in folders:
        split = folder.name.lower()
        if split in ("train", "val", "test"):
            if split in splits:
                raise UserError(f"{root}: {splits[split].name}/ and {folder.name}/ are both split {split}: keep one")
            splits[split] = folder
    if splits and not {"train", "test"} <= set(splits):  # a lone train/ is a layout mistake more likely than a class
        raise UserError(f"{root}: has {'/, '.join(p.name for p in splits.values())}/ but split folders need both "
                        "train/ and test/ (in any case)")  # fmt: skip
    return {split: splits[split] for split in ("train", "val", "test") if split in splits}


def _one_spelling(root: Path, items: list[Item]) -> list[Item]:
    """``items``, whose class folders must not differ only in case: ``train/Bus/`` and ``test/bus/`` would be two
    classes, the test's never trained on; ``Bus/`` and ``bus/`` side by side are one folder on macOS."""
    spellings: dict[str, str] = {}
    for item in items:
        if spellings.setdefault(item.label.casefold(), item.label) != item.label:
            raise UserError(f"{root}: class folders {spellings[item.label.casefold()]}/ and {item.label}/ differ only "
                            "in case: name them alike (one class) or apart")  # fmt: skip
    return items


def _dcase2013(root: Path, folders: list[Path]) -> list[Item]:
    """The DCASE2013 scene folders ``scenes_stereo/`` (development) and ``scenes_stereo_testset/`` (test) of
    ``<scene><number>.wav`` files: split train and test when both are there, else none (no folds are official)."""
    sets = {folder: DCASE2013[folder.name] for folder in folders if folder.name in DCASE2013}
    for folder in folders:  # another folder's media would be left out unsaid
        if folder not in sets and _holds_media(folder):
            raise UserError(f"{folder}/ holds media beside the DCASE2013 folders {', '.join(DCASE2013)}: "
                            "move it out")  # fmt: skip
    listed = []
    for folder, split in sets.items():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):  # macOS metadata (._bus01.wav)
                continue
            if path.is_dir():
                if _holds_media(path):
                    raise UserError(f"{path}/ holds media, but DCASE2013's {folder.name}/ has its files directly "
                                    "in it: move them up or out")  # fmt: skip
                continue
            if not _is_media(path.name):  # a readme
                continue
            match = re.fullmatch(r"([a-z]+)(\d+)\.wav", path.name, flags=re.IGNORECASE)
            if match is None:
                raise UserError(f"{path}: not a DCASE2013 scene file name (<scene><number>.wav, e.g. bus01.wav)")
            listed.append((str(path), Item(_abs(path), match[1].lower(), split if len(sets) == 2 else "")))
    return _once(listed)


def _dcase_setup(root: Path, missing: str, modality: str | None) -> list[Item]:
    """A TUT/TAU archive by its ``evaluation_setup/fold<k>_{train,evaluate}`` lists: one fold (TAU 2018 on) is a
    train/test split, several (TUT 2016, 2017) k-fold cross-validation, each file's fold the evaluate list it is in.
    ``meta.txt``/``meta.csv`` only check the labels. Lists with a file of each modality a line (TAU Urban
    Audio-Visual Scenes 2021) give the files of ``modality``."""
    setup = root / "evaluation_setup"
    lists: dict[tuple[int, str], Path] = {}
    for path in sorted(setup.iterdir()):
        match = re.fullmatch(r"fold(\d+)_(train|evaluate|test)\.(txt|csv)", path.name)
        if match:
            key = (int(match[1]), match[2])
            if key in lists:
                raise UserError(f"{setup}: {lists[key].name} and {path.name} are both the {match[2]} list of fold "
                                f"{key[0]}: keep one")  # fmt: skip
            lists[key] = path
    folds = sorted(fold for fold, role in lists if role == "evaluate")
    if not folds or folds != list(range(1, len(folds) + 1)) or any((fold, "train") not in lists for fold in folds):
        found = ", ".join(sorted(path.name for path in lists.values())) or "none"
        raise UserError(f"{setup}: needs fold<k>_train and fold<k>_evaluate lists (.txt or .csv) for folds 1, 2, ... "
                        f"(a development set's; found: {found}): an evaluation set's archive has no labelled lists: "
                        "write its labels as a CSV (path,label) for kind csv")  # fmt: skip
    labels: dict[str, tuple[str, str]] = {}  # file as listed -> its label and where that was first read
    columns: dict[Path, str] = {}  # list -> the column of its files
    evaluate = {fold: _labelled_list(lists[(fold, "evaluate")], labels, modality, columns) for fold in folds}
    train = {fold: _labelled_list(lists[(fold, "train")], labels, modality, columns) for fold in folds}
    for meta in (root / "meta.txt", root / "meta.csv"):
        if meta.is_file():
            _labelled_list(meta, labels, modality, columns)
    if len(folds) == 1:
        items = _once([(where, Item(_abs(root / name), label, split))
                       for split, rows in (("train", train[1]), ("test", evaluate[1]))
                       for where, name, label in rows])  # fmt: skip
    else:
        items = _once([(where, Item(_abs(root / name), label, fold=fold))
                       for fold, rows in evaluate.items() for where, name, label in rows])  # fmt: skip
        _check_folds(evaluate, train, lists)
    return _drop_missing(items, missing, f"the fold lists of {setup}", root)


Listed = list[tuple[str, str, str]]  # (where, file as listed, label) of a DCASE list


def _check_folds(evaluate: dict[int, Listed], train: dict[int, Listed], lists: dict[tuple[int, str], Path]) -> None:
    """Each fold's train list must be the other folds' evaluate lists: k-fold over the ``fold`` column trains on
    exactly those, and a file trained and tested on in one fold would inflate its accuracy."""
    tested = {name: fold for fold, rows in evaluate.items() for _, name, _ in rows}
    for fold, rows in train.items():
        names = set()
        for where, name, _ in rows:
            names.add(name)
            if name not in tested or tested[name] == fold:
                what = "in no fold's evaluate list" if name not in tested else f"in fold {fold}'s evaluate list too"
                raise UserError(f"{where}: {name} is {what}, so fold {fold} would not train on it as listed "
                                "(kind dcase trains each fold on the other folds' evaluate lists)")  # fmt: skip
        left = sorted(name for name, other in tested.items() if other != fold and name not in names)
        if left:
            raise UserError(f"{lists[(fold, 'train')]}: leaves out {len(left)} file(s) of the other folds' evaluate "
                            f"lists, the first: {left[0]} (kind dcase trains each fold on all of them)")  # fmt: skip


AV_COLUMNS = ("filename_audio", "filename_video")  # TAU Urban Audio-Visual Scenes 2021: a file of each modality


def _labelled_list(
    path: Path, labels: dict[str, tuple[str, str]], modality: str | None, columns: dict[Path, str]
) -> list[tuple[str, str, str]]:
    """(where, file as listed, scene label) of a tab-separated list of DCASE files: with a header naming
    ``filename`` and ``scene_label`` (TAU), or ``filename_audio``, ``filename_video`` and ``scene_label`` (TAU
    audio-visual: the files of ``modality``), or without, file then label (TUT). Each file's label must agree with
    the one ``labels`` holds from the lists read before, and the lists (``columns``: each one's column of files)
    must all be audio-visual or none: the lists of one archive would give files of two modalities."""
    lines = [(n, line, line.split("\t") if "\t" in line else line.split()) for n, line in _text_lines(path)]
    file_at, label_at, rows, column = 0, 1, lines, "filename"
    if lines and lines[0][2][0].strip().lower() in ("filename", *AV_COLUMNS):
        header = [c.strip().lower() for c in lines[0][2]]
        if any(c in header for c in AV_COLUMNS):
            if modality is None:
                raise UserError(f"{path} lists a file of each modality ({', '.join(AV_COLUMNS)}): give "
                                "modality='audio' or 'video' to say which the items are (xdc extract and eval "
                                "finetune give their encoder's)")  # fmt: skip
            column = f"filename_{modality}"
        for needed in (column, "scene_label"):
            if needed not in header:
                raise UserError(f"{path} line {lines[0][0]}: missing column {needed} (found: {', '.join(header)})")
        file_at, label_at, rows = header.index(column), header.index("scene_label"), lines[1:]
    for other, its in columns.items():
        if (its in AV_COLUMNS) != (column in AV_COLUMNS):
            av, plain = (other, path) if its in AV_COLUMNS else (path, other)
            raise UserError(f"{av} lists a file of each modality ({', '.join(AV_COLUMNS)}) but {plain} one file a "
                            "line: the lists of one archive are alike")  # fmt: skip
    columns[path] = column
    out = []
    for n, line, fields in rows:
        where = f"{path} line {n}"
        name, label = (fields[i].strip() if i < len(fields) else "" for i in (file_at, label_at))
        if not label or not _is_media(Path(name).name):
            if column in AV_COLUMNS:
                raise UserError(f"{where}: expected a media file under {column} and a scene_label, got {line!r}")
            raise UserError(f"{where}: expected '<audio file><TAB><scene label>', got {line!r}")
        name = posixpath.normpath(name)
        first = labels.setdefault(name, (label, where))
        if first[0] != label:
            raise UserError(f"{name} is {first[0]!r} in {first[1]} but {label!r} in {where}: one label per file")
        out.append((where, name, label))
    return out


def _holds_media(folder: Path) -> bool:
    return any(_is_media(name) for _, _, names in os.walk(folder) for name in names)


def _is_media(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in MEDIA_EXTENSIONS


def _sentence_split(path: str) -> str:
    """About 20% test, by a stable hash of the file stem: the GRID sentence id, the same for every speaker."""
    digest = hashlib.sha1(Path(path).stem.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 5 == 0 else "train"


def _window(centre: float, width: float, duration: float) -> tuple[float, float]:
    """A ``width`` window centred on ``centre``, slid (not cut) to lie in [0, duration]: all windows equal."""
    width = min(width, duration)
    start = min(max(centre - width / 2, 0.0), duration - width)
    return round(start, 6), round(start + width, 6)


def _row_item(row: dict[str, str], path: str, where: str) -> Item:
    """An item from a table row; the optional columns may be absent or empty."""
    split, fold, start_s, end_s = (row.get(c, "") for c in ("split", "fold", "start_s", "end_s"))
    if not row["path"] or not row["label"]:
        raise UserError(f"{where}: empty path or label")
    if split not in SPLITS:
        raise UserError(f"{where}: split {split!r} is not train, test, val or empty")
    item = Item(
        path,
        row["label"],
        split,
        _number(int, fold, "fold", where) if fold else 0,
        _number(float, start_s, "start_s", where) if start_s else 0.0,
        _number(float, end_s, "end_s", where) if end_s else 0.0,
        row.get("group", ""),
    )
    if item.fold < 0 or item.start_s < 0 or (item.end_s and item.end_s <= item.start_s):
        raise UserError(f"{where}: needs fold >= 0, start_s >= 0 and end_s 0 (whole file) or after start_s")
    return item


def _number(kind: type[int] | type[float], text: str, column: str, where: str) -> int | float:
    try:
        value = kind(text)
        if not math.isfinite(value):  # float("nan") parses, but is no time
            raise ValueError
        return value
    except ValueError:
        raise UserError(f"{where}: {column} {text!r} is not a{'n integer' if kind is int else ' number'}") from None


def _option(kind: str, key: str, value: object, default: object) -> object:
    """An option as the adapter takes it: text (``--option KEY=VALUE``) becomes the type of the option's default,
    so that ``esc10=False`` is false and ``window_s=0.5`` a number."""
    if not isinstance(value, str):
        return value
    where = f"{kind} option {key}"
    if isinstance(default, bool):
        return _boolean(value, where)
    if isinstance(default, float):
        return _number(float, value, "value", where)
    return value


def _boolean(text: str, where: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise UserError(f"{where}: {text!r} is not True or False")
    return text.lower() in ("true", "1")


def _once(listed: list[tuple[str, Item]], repeats: str | None = None) -> list[Item]:
    """The items of ``listed`` (where each was found, the item), refusing a part of a file listed twice, in one
    split or two: it would be trained on or scored twice (until 2026-12-02 it was). With ``repeats`` (kind csv:
    the CSV, a table or a manifest that may hold a file twice, as a pretraining manifest may) a row the same as an
    earlier one but for where it is (label, split, fold and group alike) is left out with one warning naming
    ``repeats``; the two must still agree. A listed file that ``xdc prepare`` copied is its copy here already, so
    that the copy listed as well is found."""
    listed = list(zip([where for where, _ in listed], _prepared_copies([item for _, item in listed])))
    kept, left_out = _first_of_each(listed, same_too=repeats is not None)
    if left_out:  # until 2026-12-02 refused, as a repeat with other values still is
        where, at = left_out[0]
        _warn(f"{repeats}: {len(left_out)} row(s) repeating an earlier one (the same part of a file, label, split, "
              f"fold and group) left out, e.g. {where} (as {at})")  # fmt: skip
    return kept


def refuse_repeats(items: list[Item]) -> None:
    """A part of a file that ``items`` hold twice is a UserError naming both, by their positions in the list, as
    ``load_dataset`` refuses one in a dataset's lists: ``extract_features`` and ``finetune`` take items from Python
    too (a ``read_table``'s, two datasets' joined), and until 2026-12-02 they embedded, trained on or scored such a
    file twice, in both splits where it was in both."""
    _first_of_each([(f"item {i}", item) for i, item in enumerate(items)], same_too=False)


def _first_of_each(listed: list[tuple[str, Item]], same_too: bool) -> tuple[list[Item], list[tuple[str, str]]]:
    """The first item of each part of a file in ``listed`` (where each was found, the item), and (where, where the
    first was) of each later one. A later one is a UserError naming both, unless ``same_too`` and it is the same
    as the first (label, split, fold and group alike)."""
    first: dict[tuple[str, float, float], tuple[str, Item]] = {}
    kept, left_out = [], []
    for where, item in listed:
        key = (item.path, item.start_s, item.end_s)
        if key not in first:
            first[key] = where, item
            kept.append(item)
            continue
        at, earlier = first[key]
        span = ""
        if item.start_s or item.end_s:
            span = f" from {item.start_s:g} s to " + (f"{item.end_s:g} s" if item.end_s else "its end")
        differ = [f"{name} {getattr(earlier, name)!r} and {getattr(item, name)!r}"
                  for name in ("label", "split", "fold", "group") if getattr(earlier, name) != getattr(item, name)]
        if not same_too:
            raise UserError(f"{item.path}{span} appears twice: {at} and {where} (keep one)")
        if differ:
            raise UserError(f"{item.path}{span} is listed twice with {', '.join(differ)}: {at} and {where} (keep the "
                            "row with the right one)")  # fmt: skip
        left_out.append((where, at))
    return kept, left_out


def _drop_missing(items: list[Item], missing: str, source: str, root: Path | None = None) -> Items:
    """Listed files absent on disk: one error naming how many and the first few, or (``missing="skip"``) dropped,
    and named in the ``missing`` of the items returned. None there is an error either way, saying where they are
    when a folder of ``root`` holds them (``root`` given one level too high)."""
    if missing not in MISSING:
        raise UserError(f"option missing must be 'error' or 'skip', got {missing!r}")
    paths = list(dict.fromkeys(item.path for item in items))
    absent = [p for p in paths if not os.path.isfile(p)]
    if not absent:
        return Items(items)
    # a few, so that one class's folder gone shows from scattered files
    first = f"the first: {absent[0]}" if len(absent) == 1 else f"the first {len(absent[:3])}: {', '.join(absent[:3])}"
    text = f"{len(absent)} of {len(paths)} files listed in {source} not found, {first}"
    spelling = _spelling_hint(absent[0])
    if len(absent) == len(paths):  # a wrong root rather than files lost: skipping them all would leave no items
        raise UserError(f"{text}{spelling or ': ' + _root_hint(root, [absent[0], absent[-1]])}")
    text += spelling
    if missing == "error":
        raise UserError(f"{text} (option missing='skip' drops them)")
    _warn(f"{text}; dropped")
    gone = set(absent)
    return Items((item for item in items if item.path not in gone), absent)


def _root_hint(root: Path | None, paths: list[str]) -> str:
    """What to do when no listed file is there: the folder that holds them (the first and last of ``paths``, not
    one class's folder unpacked into a folder of its name), in ``root`` (the unzip folder given for the dataset's
    own) or above it, else check the root."""
    if root is None:  # kind csv
        return "relative paths are read from the CSV's folder"
    relative = [os.path.relpath(path, os.path.realpath(root)) for path in paths]
    question = f"is {root} the dataset's root folder (--data)?"
    if any(name.startswith("..") for name in relative):  # a list naming files outside root
        return question
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in [*folders, root.absolute().parent]:  # given one level too high, or too low (ucfTrainTestlist/)
        if all(os.path.isfile(folder / name) for name in relative):
            return f"they are in {folder}: give that folder as the dataset's root (--data)"
    top = relative[0].split(os.sep)[0]
    if os.sep in relative[0] and not (root / top).exists():  # TAU's video/, a separate download, say
        return f"{root / top}/ is not there: {question[:-1]}, with all its parts in it?"
    return question


def _spelling_hint(path: str) -> str:
    """Where the first part of ``path`` not there is there spelled otherwise, in case or Unicode form (a name
    copied from macOS is decomposed: é as e and an accent), which Linux takes for another name: say so."""
    parts = Path(path).parts
    for depth in range(1, len(parts)):
        folder, name = Path(*parts[:depth]), parts[depth]
        if not (folder / name).exists():
            key = unicodedata.normalize("NFC", name).casefold()
            try:
                alike = [other for other in sorted(os.listdir(folder))
                         if unicodedata.normalize("NFC", other).casefold() == key]  # fmt: skip
            except OSError:
                return ""
            if alike:  # ascii(): the Unicode forms look alike printed
                return (f"; {folder} holds {ascii(alike[0])}, which differs from the listed {ascii(name)} only in case "
                        "or Unicode form: rename one")  # fmt: skip
            return ""
    return ""


def _dataset_file(root: Path, relative: Path, kind: str) -> Path:
    """``root / relative``, a file the dataset must hold; where it is not, the error says where it is instead: in a
    folder of ``root`` (the unzip folder given) or beside ``root`` (one of the dataset's folders given)."""
    path = root / relative
    if path.is_file():
        return path
    here = root.absolute()
    found = [p for p in sorted(here.iterdir()) if p.is_dir() and (p / relative).is_file()]
    found += [here.parent] if (here.parent / relative).is_file() else []
    where = f": it is in {found[0]}, give that folder as the dataset's root (--data)" if found else ""
    raise UserError(f"{kind}: {path} not found{where}")


def _warn(text: str) -> None:
    """A warning about the items, at the caller of load_dataset (from an adapter's helper), said once: under
    torchrun every rank loads them, and rank 0 alone says so, as the commands' other warnings (until 2026-12-02
    each rank did)."""
    if torchrun_rank() == 0:
        warnings.warn(text, stacklevel=5)


def _prepared_copies(items: list[Item]) -> list[Item]:
    """Each item whose file is absent but whose copy by ``xdc prepare`` is in its place (``a.avi`` -> ``a.avi.mp4``,
    where ``a.mp4`` was another source's name, else ``a.mp4``) takes the copy: a dataset prepared for fast loading
    is read with its own split lists. Only a media file's name (``.avi``, ``.wav``, ...) stands for ``a.mp4``: a
    typo such as ``a.mp4x`` is a missing file, not ``a.mp4`` (until 2026-12-03 it was read from it, unsaid)."""
    copies: dict[str, str | None] = {}

    def copy(path: str) -> str | None:
        if path not in copies:
            copies[path] = None
            if not path.lower().endswith(".mp4") and not os.path.isfile(path):
                names = [path + ".mp4"]
                if _is_media(Path(path).name):
                    names.append(str(Path(path).with_suffix(".mp4")))
                for name in names:
                    if os.path.isfile(name):
                        copies[path] = _abs(Path(name))
                        break
        return copies[path]

    def moved(item: Item) -> Item:
        to = copy(item.path)
        if to is None:
            return item
        return replace(item, path=to, group=to if item.group == item.path else item.group)

    return [moved(item) for item in items]


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of the non-blank lines of a split list."""
    return [(n, line.split()) for n, line in _text_lines(path)]


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line without its end) of the non-blank lines of a text file: a BOM skipped, names not in UTF-8
    read as the bytes they are (as a file system of Latin-1 names holds them), a list saved as UTF-16 refused saying
    so (until 2026-12-03 these two were a codec's error)."""
    try:
        with open_paths_file(path, "list") as f:
            return [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1) if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _read_csv(path: Path, required: Iterable[str], strip: bool = True) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header holding the ``required`` columns; absent cells read as ""."""
    try:
        with open_paths_file(path, "CSV") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() if strip else c for c in reader.fieldnames or []]
            absent = [c for c in required if c not in columns]
            if absent:
                found = ", ".join(columns) or "no header"
                raise UserError(f"{path}: missing column(s) {', '.join(absent)} (found: {found})")
            reader.fieldnames = columns
            rows = []
            for row in reader:  # line_num after each row: its last line (a quoted cell may span lines)
                cells = {k: v or "" for k, v in row.items() if k is not None}  # None: cells past the header
                rows.append((reader.line_num, {k: v.strip() for k, v in cells.items()} if strip else cells))
            return rows
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (OSError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
