"""The ``xdc eval`` commands: load features or a run, evaluate, print a table, write JSON with the settings."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xdc.config import Config, config_to_dict, load_config, settings_of
from xdc.data.manifest import Videos, decode_paths, run_videos, write_atomic
from xdc.errors import UserError
from xdc.evaluation.metrics import cluster_metrics
from xdc.evaluation.probe import ProbeResult, deal_folds, kfold_probe, linear_probe
from xdc.methods import get_method
from xdc.tables import format_table
from xdc.training.runlog import strict

if TYPE_CHECKING:  # torch, imported when finetuning starts
    from xdc.training.distributed import Dist


# recorded with every result; cs is the default grid of --cs
PROBE = {"cs": [0.01, 0.1, 1.0, 10.0, 100.0], "val_fraction": 0.2, "seed": 0}
FEATURE_ARRAYS = ("features", "label", "split", "fold", "group")  # of xdc extract's .npz, read by the probes
DAMAGED_NPZ = (zipfile.BadZipFile, zlib.error)  # what numpy lets through from an .npz that is not whole
PER_CLASS = ("per_class", "confusion")  # of a result: in the JSON, not in the printed table (one line names the worst)


def load_features(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a features file of ``xdc extract``; a one-line UserError for anything else."""
    not_features = f"{path} is not a features file of xdc extract"
    try:
        data = np.load(path, allow_pickle=False)
    except OSError as e:
        raise UserError(f"cannot read {path} as features: {e.strerror or e}") from None
    except EOFError:  # numpy's word for a file of no bytes
        raise UserError(f"cannot read {path} as features: the file is empty") from None
    except ValueError:  # not a NumPy file at all (numpy takes it for a pickle, and refuses that)
        raise UserError(f"{not_features} (not an .npz)") from None
    except DAMAGED_NPZ as e:  # an .npz cut short (a copy or an extract killed): no table of its arrays at the end
        raise UserError(f"cannot read {path} as features: {e} (a truncated or damaged .npz)") from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # a single array (.npy)
        raise UserError(f"{not_features} (one array, not an .npz of them)")
    with data:
        missing = [name for name in FEATURE_ARRAYS if name not in data.files]
        if missing:
            raise UserError(f"{not_features} (no {', '.join(missing)} in it)")
        try:
            arrays = {k: data[k] for k in data.files}
        except ValueError as e:  # e.g. an array of Python objects, which needs a pickle
            raise UserError(f"{not_features} ({e})") from None
        except (*DAMAGED_NPZ, EOFError) as e:  # an array's bytes damaged or cut short
            raise UserError(f"cannot read {path} as features: {e} (a truncated or damaged .npz)") from None
    columns = [arrays[name] for name in FEATURE_ARRAYS[1:]]
    if (arrays["features"].ndim != 2 or any(a.ndim != 1 for a in columns)
            or any(len(a) != len(arrays["features"]) for a in columns)):  # fmt: skip
        shapes = ", ".join(f"{name} {arrays[name].shape}" for name in FEATURE_ARRAYS)
        raise UserError(f"{not_features} (it needs features of clips x width and one entry per clip in the others: "
                        f"{shapes})")  # fmt: skip
    if arrays["features"].dtype.kind not in "biuf":  # text or complex numbers: no probe fits them
        raise UserError(f"{not_features} (its features are of dtype {arrays['features'].dtype}, not real numbers)")
    return arrays


def eval_linear(features: Path, test_features: Path | None, classifier: str, out: Path | None,
                cs: Sequence[float] = PROBE["cs"]) -> dict:  # fmt: skip
    """Train on the 'train' split and test on the 'test' split of ``features`` (or on all of
    ``test_features``); video-level accuracy averages the clips of each group. ``cs``: the grid of C, ascending."""
    check_out(out, features, test_features, command="eval linear")
    train = load_features(features)
    if test_features is not None:  # e.g. GRID: train on one set of speakers, test on another
        test = load_features(test_features)
        has_split = (train["split"] == "train").any()
        train_mask = train["split"] == "train" if has_split else np.ones(len(train["label"]), bool)
        test_mask = np.ones(len(test["label"]), bool)
        if not np.isin(test["label"], train["label"][train_mask]).any():  # every answer would be wrong
            raise UserError(f"no label of {test_features} is a class of {features}'s training clips: are they "
                            "features of one dataset's labels?")  # fmt: skip
        encoders = [_encoder_of(path, arrays) for path, arrays in ((features, train), (test_features, test))]
        if None not in encoders and encoders[0] != encoders[1]:  # until 2026-12-02 an accuracy of chance, unsaid
            raise UserError(f"{features} holds features of the {encoders[0][0]} encoder and {test_features} of the "
                            f"{encoders[1][0]} encoder (as the summaries of xdc extract beside them say): a probe "
                            "trained on the one cannot be tested on the other; extract both with one --encoder")
    else:
        test = train
        train_mask, test_mask = train["split"] == "train", train["split"] == "test"
        if not train_mask.any() or not test_mask.any():
            raise UserError(f"{features} has no train/test split: pass --test-features, or use `xdc eval kfold` "
                            "(with --folds N where it has no folds either)")
    # clips of --features neither trained nor tested on: split val, or none (a cell left empty), and with
    # --test-features its test split too; said, not only in the JSON (until 2026-12-02 unsaid; with --test-features
    # until 2026-12-03, and counted 0 in the JSON)
    left_out = ~train_mask & ~test_mask if test_features is None else ~train_mask
    if left_out.any():
        names = " or ".join(name or "(none)" for name in np.unique(train["split"][left_out]))
        where = "" if test_features is None else f" of {features}"
        tested = "split test" if test_features is None else f"every clip of {test_features}"
        print(f"{int(left_out.sum())} clips of split {names}{where} were left out: the probe trains on split train "
              f"(choosing C on a part of it) and tests on {tested}")  # fmt: skip
    # a video of one file both trained and tested on (listed in both splits, or --test-features naming the file
    # itself) would score what the probe saw in training; two files' group ids (a CSV's own) may name other videos
    same = test_features is None or os.path.samefile(features, test_features)
    shared = np.intersect1d(train["group"][train_mask], test["group"][test_mask]) if same else []
    if len(shared):
        where = f"{features}'s test split are in its train split too" if test_features is None else \
            f"--test-features {test_features} are training clips of {features} (the same file)"
        raise UserError(f"{len(shared)} videos (groups) of {where}, e.g. {shared[0]}: they would be both trained and "
                        "tested on")  # fmt: skip
    try:
        result = linear_probe(
            train["features"][train_mask], train["label"][train_mask], test["features"][test_mask],
            test["label"][test_mask], test_groups=test["group"][test_mask], classifier=classifier,
            train_groups=train["group"][train_mask], **{**PROBE, "cs": cs},
        )  # fmt: skip
    except ValueError as e:
        raise UserError(f"{features}" + (f" (--test-features {test_features})" if test_features else "") + f": {e}") \
            from None
    # absolute, as the run of eval clusters: export finds the features' summary from any folder
    untrained, note = _untrained(result, train["label"][train_mask], "the training clips lack")
    record = {"command": "eval linear", "features": os.path.abspath(features),
              "test_features": os.path.abspath(test_features) if test_features else "",
              **result.to_dict(), "left_out": int(left_out.sum()), "untrained": untrained,
              "probe": {"classifier": classifier, **PROBE, "cs": list(cs)}}  # fmt: skip
    notes = [*note, *_worst_classes(record["per_class"]), *_grid_end(cs, [(result, "")])]
    return _emit(record, [_numbers(result.to_dict())], out, notes)


def _grid_end(cs: Sequence[float], chosen: list[tuple[ProbeResult, str]]) -> list[str]:
    """A line where a C chosen on validation (``chosen``: the probe and where, e.g. " in fold 2") is an end of a
    grid ``cs`` (ascending) of more than one C and beat its neighbour there, as a better C may lie beyond it, with
    a grid a tenfold wider at that end. The smallest C wins ties: one that only tied the next is no such end (well
    separated features score alike at every C)."""

    def beyond(r: ProbeResult) -> bool:
        return len(cs) > 1 and (r.c == cs[-1] or (r.c == cs[0] and r.val_by_c[cs[0]] > r.val_by_c[cs[1]]))

    ends = [(r.c, where) for r, where in chosen if beyond(r)]
    if not ends:
        return []
    at_ends = {c for c, _ in ends}
    wider = [*([cs[0] / 10] if cs[0] in at_ends else []), *cs, *([cs[-1] * 10] if cs[-1] in at_ends else [])]
    at = ", ".join(f"{_c(c)}{where}" for c, where in ends)
    return [f"the C chosen on validation ({at}) is at an end of the grid --cs {','.join(map(_c, cs))}: a better C may "
            f"lie beyond it; widen the grid, e.g. --cs {','.join(map(_c, wider))}"]


def _c(c: float) -> str:
    return f"{c:.12g}"  # 1, not 1.0; 12 digits: 0.007, not the 0.007000000000000001 of a tenth of 0.07


def _untrained(result: ProbeResult, train_labels: np.ndarray, lacking: str) -> tuple[int, list[str]]:
    """The test videos of ``result`` of a class absent from ``train_labels`` (top1 counts them wrong: the probe
    cannot predict them), and a line naming their classes where there are any (until 2026-12-03 unsaid)."""
    unseen = ~np.isin(result.video_labels, train_labels)
    return int(unseen.sum()), _untrained_line(int(unseen.sum()), np.unique(result.video_labels[unseen]).tolist(),
                                              lacking)  # fmt: skip


def _untrained_line(count: int, names: list, lacking: str) -> list[str]:
    """The line naming the ``count`` test videos of classes ``names`` that the training ``lacking``, where any."""
    listed = ", ".join(map(str, names[:3])) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return [f"{count} test videos of classes {lacking} ({listed}) count as wrong"] if names else []


def _encoder_of(features: Path, arrays: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """The encoder (name, modality) that made ``arrays``, as the summary of xdc extract beside ``features`` says
    where it is theirs (the same made_with); None where there is no such summary (features made before 2026-12-02,
    or moved without it)."""
    try:
        summary = json.loads(features.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(summary, dict) and "made_with" in arrays and summary.get("made_with") == str(arrays["made_with"])
    if not ours:
        return None
    return str(summary.get("encoder")), str(summary.get("modality"))


def eval_kfold(
    features: Path, classifier: str, out: Path | None, cs: Sequence[float] = PROBE["cs"], deal: int | None = None
) -> dict:
    """Cross-validation over the features' folds, or over ``deal`` folds dealt to their videos by class
    (``deal_folds``, drawn by the probe's seed) where they have none: a labelled set of one's own."""
    if deal is not None and deal < 2:  # before the features are read
        raise UserError(f"--folds {deal}: k-fold evaluation needs two or more folds")
    check_out(out, features, command="eval kfold")
    data = load_features(features)
    own = np.unique(data["fold"][data["fold"] != 0])
    if deal is not None:
        if len(own):  # an official protocol's folds (ESC-50's) are what results are compared by
            raise UserError(f"{features} has folds of its own ({', '.join(map(str, own))}): drop --folds to use "
                            "them")  # fmt: skip
        try:
            data["fold"] = deal_folds(data["label"], data["group"], deal, PROBE["seed"])
        except ValueError as e:
            raise UserError(f"{features}: {e}") from None
    elif len(own) < 2:
        raise UserError(f"{features} has no fold column with two or more folds (e.g. ESC-50's 5 folds; 0 is none): "
                        "give --folds N to deal its videos into N folds by class")  # fmt: skip
    try:
        result = kfold_probe(
            data["features"], data["label"], data["fold"], groups=data["group"], classifier=classifier,
            **{**PROBE, "cs": cs},
        )  # fmt: skip
    except ValueError as e:
        raise UserError(f"{features}: {e}") from None
    folds, notes = [], []
    for fold, fold_result in zip(result["folds"], result["results"]):  # a rare class may lie in one fold alone
        untrained, note = _untrained(fold_result, data["label"][data["fold"] != fold], "its training clips lack")
        folds.append({"fold": fold, **fold_result.to_dict(), "untrained": untrained})
        notes += [f"fold {fold}: {line}" for line in note]
    summary = {k: result[k] for k in ("mean_top1", "std_top1", "mean_top5", "train_only", *PER_CLASS)}
    if result["train_only"]:  # a table that numbers its folds from 0 would lose one: said, not only in the JSON
        print(f"{result['train_only']} clips of fold 0 (no fold) trained in every fold and were never tested")
    rows = [*map(_numbers, folds), {"fold": "mean", "top1": summary["mean_top1"], "top5": summary["mean_top5"]}]
    record = {"command": "eval kfold", "features": os.path.abspath(features), **summary, "folds": folds,
              "probe": {"classifier": classifier, **PROBE, "cs": list(cs), **({"dealt_folds": deal} if deal else {})}}
    notes += [*_worst_classes(result["per_class"], f" over the {len(folds)} folds"),
              *_grid_end(cs, [(r, f" in fold {f}") for f, r in zip(result["folds"], result["results"])])]  # fmt: skip
    return _emit(record, rows, out, notes)


def eval_finetune(
    run: Path, encoder: str, dataset: str, data: Path, split: str | None, mode: str, cfg: Config, out: Path | None,
    options: dict, device: str = "auto", settings: dict | None = None, ctx: Dist | None = None,
) -> dict | None:  # fmt: skip
    """Finetune the encoder ``encoder`` of ``run`` (a run folder, an export or the released weights, with
    ``settings`` over its own: xdc.evaluation.sources) on one official split, or on each of 1-3 (``split='all'``)
    and report the mean. Progress, each batch's loss and the test accuracies go to a folder beside ``out``
    (``finetune_folder``): the same command run again after a crash goes on from there; once it has written its
    result, only the logs stay. Under torchrun (``ctx``) every rank trains and tests its share, and rank 0 alone
    writes and returns the record."""
    from xdc.evaluation.adapters import load_dataset
    from xdc.evaluation.device import pick_device
    from xdc.evaluation.extract import cut_line, evaluation_inputs
    from xdc.evaluation.finetune import NOT_COMPUTED, check_items, check_settings, finetune, finetune_made_with
    from xdc.evaluation.sources import load_source
    from xdc.training.distributed import Dist, same_settings
    from xdc.training.runlog import RunLog

    check_out(out, command="eval finetune")
    ctx = ctx or Dist()
    # a batch size the torchrun ranks cannot share out, and a device that is not there, refused before an earlier
    # finetuning's logs go (until 2026-12-03 after)
    check_settings(mode, cfg.finetune, ctx)
    if not ctx.enabled:
        pick_device(device)
    # read once: every split starts from it; its modality says which files of a dataset with a file of each to read
    source = load_source(run, encoder, settings)
    modality = source.modality
    splits = [1, 2, 3] if split == "all" else [int(split)] if split else [None]
    folder = finetune_folder(out, dataset)
    # what the record says besides its splits' results, but the loader workers, which change no draw (each split's
    # made_with leaves them out too; until 2026-12-03 another data.workers finetuned again)
    rest = {"dataset": dataset, "data": str(data), "mode": mode, "config": config_to_dict(cfg.finetune),
            "seed": cfg.seed, "settings": {k: v for k, v in (settings or {}).items() if k != "data.workers"}}

    # each split's items, read and checked before anything is written: a mistake in --data, --split or --option, or
    # a table without the splits, left a folder of empty logs (until 2026-12-03)
    items_of = {number: load_dataset(dataset, data, split=number, modality=modality, **options) for number in splits}
    for items in items_of.values():
        check_items(items)
    # every rank with rank 0's weights, items and settings, or none: until 2026-12-03 a node started with another
    # finetune.lr, seed or data.clip.frames trained on apart from the others without a word
    same_settings({"--encoder": encoder, "--mode": mode, "--dataset": dataset, "--split": split, "--option": options,
                   **{k: v for k, v in settings_of(cfg).items() if k.startswith("finetune.") or k == "seed"},
                   **evaluation_inputs(source, [item for items in items_of.values() for item in items])}, ctx)

    # each split's made_with, as finetune records it: its items probed (into the folder's probe/, which finetune
    # reuses), so that what the probes refuse (no readable item in a split, training items of one class) is refused
    # before an earlier finetuning's logs go (until 2026-12-03 after, where --out held no result to compare with)
    digests = [finetune_made_with(source, encoder, items_of[number], mode, cfg.finetune, folder / "probe",
                                  seed=cfg.seed, ctx=ctx) for number in splits]  # fmt: skip

    def made_now(earlier: dict) -> str:
        """The made_with of this command, with the finetune.* settings that change no number as the record
        ``earlier`` has them: a result made with another checkpoint_every is kept (until 2026-12-03 finetuned
        again, from the start: its checkpoints are gone), and says the one it was made with."""
        kept = earlier.get("config") if isinstance(earlier.get("config"), dict) else {}
        config = {**rest["config"], **{key: kept[key] for key in NOT_COMPUTED if key in kept}}
        return _made_with(digests, {**rest, "config": config})

    # decided before anything is written (the logs of a finished run stay): a result in --out made with all the
    # same is left as it is (until 2026-12-02 finetuned again and written again)
    if (earlier := _finished(out, made_now, ctx)) is not None:
        if not ctx.main:
            return None
        same = f"{out} already holds these results (the same weights, items, files and settings)"
        skipped = _kept_skipped(earlier.get("skipped", []), items_of)
        if skipped == earlier.get("skipped", []):
            print(f"{same}: nothing to do; remove {out} to run again")
            return earlier
        # its list of the files not found as the lists name them now, as a new result's (until 2026-12-03 kept as
        # it was: one written before then listed none); the logs stay as they are
        earlier = {**earlier, "skipped": skipped}
        _write(earlier, out)
        print(f"{same}: nothing finetuned; its list of the files not found (skipped) brought up to date; remove "
              f"{out} to run again")  # fmt: skip
        return earlier
    states = [folder / (f"split{number}" if number else "train-test") for number in splits]
    if ctx.main and not any(state.exists() for state in states):  # nothing to go on with: earlier logs go
        shutil.rmtree(folder / "tb", ignore_errors=True)
        (folder / "log.jsonl").unlink(missing_ok=True)
    log = RunLog(folder, enabled=ctx.main)
    rows, skipped, partly, cut, made = [], [], [], [], []
    for number, state in zip(splits, states):
        items = items_of[number]
        work = folder / "probe"  # the files' probes, for a later run with this --out (until 2026-12-01 in a
        # hidden folder beside --out, named by dataset kind alone)
        result = finetune(run, encoder, items, mode, cfg.finetune, work, seed=cfg.seed, device=device, state=state,
                          log=log, name=state.name, settings=settings, ctx=ctx, source=source)  # fmt: skip
        if not ctx.main:
            continue
        rows.append({"split": number or "-", **{k: v for k, v in result.items() if k not in _ONCE}})
        made.append(result)
        skipped += [{"split": number or "-", **skip} for skip in result["skipped"]]
        where = f"split {number}: " if split == "all" else ""  # a file of every split's lists is said in each (until
        # 2026-12-03 in lines alike)
        for skip in result["skipped"][:5]:
            print(f"{where}skipped {skip['path']}: {skip['reason']}")
        if len(result["skipped"]) > 5:
            print(f"{where}... and {len(result['skipped']) - 5} more skipped (the JSON lists them all)")
        # some of its clips trained on or scored: not skipped (until 2026-12-03 listed as such, and so in a split's
        # result kept from before then, which has no partly_kept)
        files = result.get("partly_kept", [])
        partly += [{"split": number or "-", **file} for file in files]
        for file in files[:5]:
            print(f"{where}partly kept {file['path']}: {file['clips_failed']} of its clips failed, "
                  f"{file['clips_kept']} kept; the last: {file['reason']}")  # fmt: skip
        if len(files) > 5:
            print(f"{where}... and {len(files) - 5} more partly kept (the JSON lists them all)")
        windows = result.get("cut", [])  # a split's result kept from before 2026-12-02 has none
        cut += [{"split": number or "-", **window} for window in windows]
        if (line := cut_line(windows)) is not None:
            print(f"{where}{line}")
    log.close()
    if not ctx.main:
        return None
    record = {"command": "eval finetune", "run": os.path.abspath(run), "source": result["source"], "clip": result["clip"],
              "settings": settings or {}, "dataset": dataset, "data": str(data), "options": options, "mode": mode,
              "splits": rows, "mean_top1": float(np.mean([r["top1"] for r in rows])),
              "config": config_to_dict(cfg.finetune),
              "seed": cfg.seed, "log": str(folder), "skipped": skipped, "partly_kept": partly, "cut": cut,
              "made_with": _made_with([r["made_with"] for r in made], rest)}  # fmt: skip
    table = [{k: v for k, v in _numbers(row).items() if k != "epoch_losses"} for row in rows]  # the JSON has them
    table += [{"split": "mean", "top1": record["mean_top1"]}] if len(rows) > 1 else []
    notes = []
    for row in rows:  # a split's result kept from before 2026-12-03 has no untrained_classes; before 2026-12-02 no
        # per_class
        untrained = _untrained_line(row.get("untrained", 0), row.get("untrained_classes", []),
                                    "no readable training video has")  # fmt: skip
        notes += [f"split {row['split']}: {line}" for line in untrained] if split == "all" else untrained
        notes += _worst_classes(row["per_class"], f" of split {row['split']}" if split == "all" else "") \
            if row.get("per_class") else []
    emitted = _emit(record, table, out, notes)
    for state in states:  # the result is out: the checkpoints and kept results have served
        shutil.rmtree(state, ignore_errors=True)
    return emitted


_ONCE = ("skipped", "partly_kept", "cut", "source", "clip", "made_with")  # of a split's result: not in its row
# (listed apart, or the same for all, or in the record's made_with)


def _kept_skipped(skipped: list[dict], items_of: dict) -> list[dict]:
    """The ``skipped`` of a kept record of eval finetune with each split's files not found as its items
    (``items_of``, by split number) now say, in the order a new record lists them."""
    from xdc.evaluation.adapters import with_not_found

    kept = []
    for number, items in items_of.items():
        split = number or "-"
        own = [{k: v for k, v in skip.items() if k != "split"} for skip in skipped if skip.get("split") == split]
        kept += [{"split": split, **skip} for skip in with_not_found(own, items)]
    return kept


def _made_with(splits: list[str], rest: dict) -> str:
    """The digest of what made a record of eval finetune: each split's (``made_with`` of
    xdc.evaluation.finetune: weights, items, files as probed, settings) and the rest the record says."""
    made = json.dumps({"splits": splits, **rest}, sort_keys=True, default=str)
    return hashlib.sha256(made.encode("utf-8", "surrogateescape")).hexdigest()


def _finished(out: Path | None, made_now: Callable[[dict], str], ctx: Dist) -> dict | None:
    """The record in ``out`` of an eval finetune whose made_with is ``made_now(record)``'s, else None (a record of
    before 2026-12-02 records none: finetuned again once). Rank 0 reads ``out`` and hands it to every rank."""
    from xdc.training.distributed import broadcast_object, on_main

    def read() -> dict | None:
        try:
            saved = json.loads(out.read_text(encoding="utf-8", errors="surrogateescape"))
        except Exception:  # missing, empty or unreadable: finetuned as before
            return None
        ours = isinstance(saved, dict) and saved.get("command") == "eval finetune" and "made_with" in saved
        return saved if ours else None

    earlier = broadcast_object(on_main(read, ctx), ctx) if out is not None else None
    return earlier if earlier is not None and earlier["made_with"] == made_now(earlier) else None


def finetune_folder(out: Path | None, dataset: str) -> Path:
    """Where ``eval finetune`` keeps its progress and logs: OUT's name with ``.finetune`` for its extension (beside
    ``--out``), else ``.finetune-DATASET`` in the working folder."""
    return out.with_name(f"{out.stem}.finetune") if out is not None else Path(f".finetune-{dataset}")


def run_label_ids(run: Path, labels: Path | None = None) -> np.ndarray:
    """The label of each video of a run (the rows of its label files) as class ids, -1 when none: its manifest's,
    or those that the labels CSV ``labels`` gives its videos' paths (matched as ``xdc index --labels`` matches)."""
    return _label_ids(_run_videos(run), labels)[0]


def _run_videos(run: Path) -> Videos:
    if not run.is_dir():  # until 2026-12-03 "has no videos.csv", as if a folder were there
        said = "is a file, not a folder" if run.exists() else "does not exist"
        raise UserError(f"{run} {said}: give an `xdc pretrain` run folder")
    videos = run_videos(run)
    if videos is None:
        raise UserError(f"{run} has no videos.csv: is it an `xdc pretrain` run folder?")
    return videos


def _label_ids(videos: Videos, labels: Path | None) -> tuple[np.ndarray, tuple[int, list[str]]]:
    """The class ids of ``run_label_ids``, and how many rows of ``labels`` named none of the videos, with the first
    few as written (``LabelIndex.unmatched``; none without ``labels``)."""
    if labels is None:
        return videos.labels, (0, [])
    from xdc.data.index import LabelIndex, match_labels  # PyAV with it: not for the other commands

    index = LabelIndex.from_csv(labels)  # kept: it tells the rows that matched no video
    names = match_labels([decode_paths(path) for path in videos.paths], index)
    codes: dict[str, int] = {}
    ids = np.array([codes.setdefault(name, len(codes)) if name else -1 for name in names], dtype=np.int32)
    return ids, index.unmatched()


def _supervised(run: Path) -> bool:
    """Whether ``run`` trained on its manifest's labels, as its config.yaml says; a config this xdc cannot read
    (settings of a later version) says nothing, and its labels are scored as they were before 2026-12-01."""
    try:
        return get_method(load_config(run / "config.yaml").train.method).supervised
    except (OSError, UserError):
        return False


def eval_clusters(run: Path, out: Path | None, labels: Path | None = None) -> dict:
    """NMI, ARI, purity and Hungarian accuracy of every round's clusters against the labels of the run's manifest,
    or of the labels CSV ``labels`` (for a run pretrained without them)."""
    check_out(out, command="eval clusters")
    videos = _run_videos(run)  # a folder that is no run is an error here
    if _supervised(run):
        raise UserError(f"{run} is a supervised run: its labels/ hold the manifest's labels it trained on, not "
                        "clusters (their scores against those labels would be 1)")  # fmt: skip
    # by round number, not name (round_1000 sorts before round_101); a foreign round_x.npz is not a round
    rounds = sorted((int(path.stem[6:]), path) for path in (run / "labels").glob("round_*.npz")
                    if path.stem[6:].isdigit())  # fmt: skip
    if not rounds:  # before asking for labels: they would not help
        raise UserError(f"{run} has no cluster assignments (labels/round_*.npz): no round has finished, or its "
                        "method clusters nothing")  # fmt: skip
    # after the refusals above: a labels CSV of 65M rows takes minutes to match (until 2026-12-03 it came first)
    label_ids, (unmatched, unmatched_paths) = _label_ids(videos, labels)
    has_label = label_ids >= 0
    labelled = int(has_label.sum())
    if not labelled:
        if labels is None:
            raise UserError(f"the manifest of {run} has no labels to compare the clusters with: give a labels CSV "
                            "with --labels")  # fmt: skip
        raise UserError(f"no row of {labels} names one of the {len(label_ids)} videos of {run} (by its path, its "
                        "path relative to the labels file or to the videos' folder, or a basename or stem that "
                        "one video alone has)")  # fmt: skip
    rows, unreadable = [], []
    for number, path in rounds:
        try:
            with np.load(path) as arrays:
                sets = {name: arrays[name] for name in arrays.files}
        except Exception as e:  # a truncated or foreign file (a run killed while writing it, before 2026-12-01)
            unreadable.append(f"labels/{path.name}: {type(e).__name__}: {e}".splitlines()[0])
            print(f"skipped {unreadable[-1]}", file=sys.stderr)
            continue
        for name, assigned in sets.items():
            if assigned.shape != label_ids.shape:  # another run's file, or a videos.csv edited since
                unreadable.append(f"labels/{path.name}: {name} assigns {len(assigned)} videos, the run has "
                                  f"{len(label_ids)} (videos.csv)")  # fmt: skip
                print(f"skipped {unreadable[-1]}", file=sys.stderr)
                continue
            if assigned.dtype.kind not in "biu":  # cluster_metrics' ValueError: a traceback here
                unreadable.append(f"labels/{path.name}: {name} holds {assigned.dtype} values, not cluster ids")
                print(f"skipped {unreadable[-1]}", file=sys.stderr)
                continue
            if not (assigned[has_label] >= 0).any():  # cluster_metrics' ValueError: a traceback until 2026-12-03
                unreadable.append(f"labels/{path.name}: {name} gives a cluster to none of the {labelled} labelled "
                                  "videos (their clips gave no features in that round)")  # fmt: skip
                print(f"skipped {unreadable[-1]}", file=sys.stderr)
                continue
            rows.append({"round": number, "label_set": name, **cluster_metrics(assigned, label_ids)})
    if not rows:
        raise UserError(f"no cluster assignments of {run} can be read (labels/round_*.npz)"
                        + "".join(f"; {entry}" for entry in unreadable[:1]))
    said = f"{labelled} of {len(label_ids)} videos labelled"
    if labels is not None:  # and its rows that named no video of the run, as xdc index says them (until 2026-12-03
        # unsaid: a typo in a row showed only as a video fewer labelled)
        from xdc.data.index import unmatched_text  # imported with the matching

        said += f" by {labels}" + unmatched_text(unmatched, unmatched_paths)
    print(said)
    record = {"command": "eval clusters", "run": os.path.abspath(run), "labels": None if labels is None else str(labels),
              "labelled": labelled, "videos": len(label_ids), "unmatched": unmatched,
              "unmatched_paths": unmatched_paths, "rounds": rows, "unreadable": unreadable}  # fmt: skip
    unclustered = labelled - min(row["n"] for row in rows)  # until 2026-12-03 only n told of them
    notes = [f"up to {unclustered} of the {labelled} labelled videos have no cluster in a round (their clips gave no "
             "features in it) and are left out of its scores (n)"] if unclustered else []  # fmt: skip
    return _emit(record, rows, out, notes)


def check_out(out: Path | None, *features: Path | None, command: str | None = None) -> None:
    """Before any work: an ``--out`` the result cannot be written to, named. An existing file is replaced only when
    it is an earlier result of ``command`` (any ``xdc eval``'s where None) or empty (a features file or a run's file
    given there by mistake is kept, and so is another protocol's result, a finetuning's hours say)."""
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a folder; give the path of a .json file")
    if out is not None and out.exists() and not is_result(out):
        for given in filter(None, features):  # --features, and --test-features (until 2026-12-02 "remove it")
            if out.resolve() == given.resolve():
                raise UserError(f"--out {out} is the features file {given} that this command reads: give the result "
                                f"a .json path, e.g. {out.stem}-result.json")  # fmt: skip
            if out.resolve() == given.with_suffix(".json").resolve():
                # the natural name next to X.npz; "remove it" would lose what xdc export reads of the features' source
                raise UserError(f"--out {out} is the summary that xdc extract wrote beside {given}, which xdc "
                                f"export reads: give the result another name, e.g. {out.stem}-result.json")  # fmt: skip
        raise UserError(f"--out {out} exists and is not a result of xdc eval: give a new path (or remove it)")
    theirs = None if out is None or command is None or not out.exists() else result_command(out)
    if theirs and theirs != command:  # until 2026-12-03 replaced: a kfold result by a linear one, say
        raise UserError(f"--out {out} holds a result of xdc {theirs}, which this xdc {command} would replace: give "
                        "it another path (or remove the file)")  # fmt: skip


_RESULT_START = re.compile(rb'\s*\{\s*"command":\s*"(eval [^"]*)"')  # how every result of _emit begins


def is_result(path: Path) -> bool:
    """Whether ``path`` is a result file of ``xdc eval ... --out`` or an empty file (``mktemp``'s)."""
    return result_command(path) is not None


def result_command(path: Path) -> str | None:
    """The command ("eval kfold") of the result file ``path``, "" for an empty file (``mktemp``'s), None for any
    other: told by its start alone, so that a big file given by mistake is not read whole. Only a regular file is
    opened: a pipe or FIFO would wait for a writer (``--out >(cat)`` hung)."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            start = f.read(4096)
    except OSError:
        return None
    if not start:
        return ""
    found = _RESULT_START.match(start)
    return None if found is None else found.group(1).decode("utf-8", "replace")


def _numbers(row: dict) -> dict:
    """A result's row for the printed table: without its per-class results (nor the count of untrained test videos,
    said in a line of its own)."""
    return {k: v for k, v in row.items() if k not in (*PER_CLASS, "untrained", "untrained_classes")}


def _worst_classes(per_class: dict, where: str = "") -> list[str]:
    """A line naming the 3 classes of the lowest top-1 (ties in the classes' order), or none where every class's
    test videos were right."""
    wrong = sorted((item for item in per_class.items() if item[1]["top1"] < 1), key=lambda item: item[1]["top1"])
    scores = [f"{name} {c['top1']:.2f} ({round(c['top1'] * c['n'])}/{c['n']})" for name, c in wrong[:3]]
    return [f"worst classes{where}: " + ", ".join(scores)] if scores else []


# A list of integers, one to a line as json.dumps(indent=2) writes it: a confusion matrix's row goes on one line
# (a JSON string holds no raw line break, so none is changed)
_INTEGERS = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")


def _emit(record: dict, rows: list[dict], out: Path | None, notes: Sequence[str] = ()) -> dict:
    print(format_table(rows))
    for line in notes:
        print(line)
    if out is not None:
        _write(record, out)
        print(f"wrote {out}")
    return record


def _write(record: dict, out: Path) -> None:
    """``record`` as JSON that strict readers (jq, JavaScript) take: null for a NaN or infinity (``strict``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = _INTEGERS.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]",
                         json.dumps(strict(record), indent=2, default=str))  # fmt: skip
    write_atomic(out, lambda f: f.write(text))
