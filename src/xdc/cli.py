"""The ``xdc`` command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import errno
import io
import math
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from xdc import __version__
from xdc.config import (
    Config,
    given_keys,
    given_settings,
    job_ranks,
    load_config,
    setting,
    torchrun_rank,
    with_settings,
)
from xdc.data.preload import preload_fork_server
from xdc.errors import RankFailed, SharedError, UserError
from xdc.limits import fit_threads
from xdc.locks import holding

if TYPE_CHECKING:  # torch, imported by the commands that need it
    from xdc.training.distributed import Dist

T = TypeVar("T")
Lock = Callable[[], AbstractContextManager]  # the output's lock (xdc.locks), taken when the command starts
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # an OSError said as one line even where it names no file
DEVICE_HELP = ("where the encoder runs: auto (the first GPU where there is one, else the CPU), cpu, cuda or cuda:N; "
               "on CUDA in the run's train.precision and layout (bf16, channels-last by default)")
# gloo's words, in the error of every collective with a rank that has left the job (its own error, a crash, a kill),
# after the place in gloo's source: "[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]:4523.
# This is typically ...", "[...] Read error [...]: Connection reset by peer. ...", "[...] writev [...]: Broken pipe"
PEER_LEFT = re.compile(r"\[[^\]\n]*gloo[^\]\n]*\] ([^\n]*?(?:Connection closed by peer|Connection reset by peer|"
                       r"Broken pipe)[^\n]*?)(?:\. |\.?$)", re.MULTILINE)  # fmt: skip


class _Once(argparse.Action):
    """An option that takes one value (one ``what``): argparse keeps the last of several, so a second --config
    dropped the first file's settings without a word, and a second --preset the first preset (until 2026-12-02)."""

    def __init__(self, *args, what: str = "file", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.what = what

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = f"_{self.dest}_given"  # not the value: an option with a default (grid's --preset) has one
        if getattr(namespace, given, False):
            raise argparse.ArgumentError(self, f"given twice ({getattr(namespace, self.dest)}, {values}): it takes "
                                         f"one {self.what}; give the other settings with --set")  # fmt: skip
        setattr(namespace, given, True)
        setattr(namespace, self.dest, values)


def _out_path(text: str) -> Path:
    """Where a command writes: an empty one (``--out "$RUN"`` with RUN unset) is refused. Path("") is ".": until
    2026-12-02 a run trained in the current folder, and other commands wrote there or failed on it."""
    if not text:
        raise argparse.ArgumentTypeError("empty: give the path to write")
    return Path(text)


def _add_config_options(parser: argparse.ArgumentParser,
                        set_help: str = "override one setting, e.g. --set data.clip.frames=16 (repeatable)") -> None:
    parser.add_argument("--config", type=Path, action=_Once, help="YAML file of settings (see docs/config.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


RUN_HELP = ("an xdc pretrain run folder (or its encoders.pt or encoders-N-rounds.pt), an xdc export folder or "
            ".safetensors file, or a file of the released XDC weights (.pth)")  # fmt: skip
OUT_HELP = "result JSON (an existing file only if it is an earlier result of xdc eval, which it replaces)"
SETTINGS_HELP = ("a data.* setting over the encoder's own, e.g. --set data.clip.frames=32 (the paper's finetuning "
                 "clips){} (repeatable)")  # fmt: skip


def _config(args: argparse.Namespace, extra: tuple[str, ...] = ()):
    return load_config(args.config, [*extra, *args.overrides], preset=getattr(args, "preset", None))


def _as_overrides(args: argparse.Namespace, preset: str) -> tuple[str, ...]:
    """The settings of ``--config`` (as ``key=value``, in JSON, which YAML reads) and then ``--set``: for commands
    that make several runs' settings of their own over ``preset`` and apply the user's over each. Checked over that
    preset: until 2026-12-03 over the defaults, which refused a scale_min that the preset's crop allows."""
    import json

    cfg = load_config(args.config, args.overrides, preset=preset)
    return (*(f"{key}={json.dumps(setting(cfg, key))}" for key in given_keys(args.config, ())), *args.overrides)


def _no_method(args: argparse.Namespace, command: str, instead: str) -> None:
    """Refuse a train.method among the settings of a command that trains each of its methods in turn: laid over
    each run's own, it made them all that method, under the others' names in the table (until 2026-12-03)."""
    if "train.method" in given_keys(args.config, args.overrides):
        raise UserError(f"xdc {command} trains each of its methods in turn: leave train.method out of --config and "
                        f"--set{instead}")  # fmt: skip


def cmd_index(args: argparse.Namespace) -> int:
    from xdc.data.index import build_manifest
    from xdc.data.manifest import shown

    def run(ctx: Dist | None = None):
        return build_manifest(args.paths, args.out, labels=args.labels, workers=args.workers, ctx=ctx)

    summary = _on_ranks(run, lambda: holding(args.out, "index"))
    if summary is None:  # another rank than the first, under torchrun
        return 0
    for row in summary.problems:
        print(f"  unusable {shown(row['path'])}: {row['reason']}")
    if summary.unusable > len(summary.problems):
        print(f"  ... {summary.unusable - len(summary.problems)} more in {args.out}")
    print(summary.line())
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from xdc.data.manifest import shown
    from xdc.data.prepare import PrepareOptions, prepare

    options = PrepareOptions(short_side=args.short_side, gop=args.gop, fps=args.fps, sample_rate=args.sample_rate,
                             crf=args.crf, audio=args.audio)  # fmt: skip

    def run(ctx: Dist | None = None):
        return prepare(args.paths, args.out, options, labels=args.labels, workers=args.workers, ctx=ctx,
                       redo_unknown=args.redo_unknown_format)  # fmt: skip

    summary = _on_ranks(run, lambda: holding(args.out, "prepare", folder=True))
    if summary is None:  # another rank than the first: rank 0 writes and says
        return 0
    for row in summary.problems:
        print(f"  {row['status']} {shown(row['source'])}: {row['reason']}")
    if summary.skipped + summary.failed > len(summary.problems):
        print(f"  ... {summary.skipped + summary.failed - len(summary.problems)} more in {args.out / 'prepared.csv'}")
    print(summary.line())
    return 0


def _on_ranks(work: Callable[[Dist | None], T], lock: Lock) -> T:
    """``work(ctx)`` for a command that shares files out over torchrun's ranks (one per node, say: ``xdc.data.shares``)
    where torchrun started this process; ``work(None)`` otherwise, without importing torch. Under ``lock``."""
    if job_ranks() > 1:
        return _as_rank(work, gpus=False, lock=lock)
    with lock():
        return work(None)


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from xdc.data.index import number
    from xdc.data.synthetic import holds_dataset, make_synthetic

    cfg = _config(args)
    _warn_unused(args, ("synthetic.",), "xdc make-synthetic reads only synthetic.* settings")
    with holding(args.out, "make-synthetic", folder=True, choose="output folder"):
        held = holds_dataset(args.out, args.videos, args.classes, args.seed, cfg.synthetic)
        labels = make_synthetic(args.out, args.videos, args.classes, seed=args.seed, cfg=cfg.synthetic,
                                workers=args.workers)  # fmt: skip
    if held:  # until 2026-12-02 written again, byte for byte, but with new times, which xdc index re-probed
        print(f"{args.out} holds the {number(args.videos, 'clip')} of these settings and {labels} already: nothing "
              "written (remove the folder to write them again)")  # fmt: skip
    else:
        print(f"wrote {number(args.videos, 'clip')} of {number(args.classes, 'class', 'classes')} and {labels}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from xdc.methods import get_method
    from xdc.training.pretrain import RESUME_SETTINGS, pretrain

    if args.data is None and not args.resume:
        raise UserError("--data is needed: the manifest CSV written by xdc index (only --resume goes without it)")
    shortcuts = [
        f"train.{key}={value}" for key in ("method", "k", "rounds", "assign") if (value := getattr(args, key)) is not None
    ]
    cfg = _config(args, tuple(shortcuts))
    # other than their defaults: a run's config.yaml given as --config holds them all (a resume names every setting
    # it does not use)
    unread = [key for key in given_keys(args.config, args.overrides)
              if key.startswith(("finetune.", "synthetic.")) and setting(cfg, key) != setting(Config(), key)]
    if unread and not args.resume and torchrun_rank() == 0:
        print("WARNING: xdc pretrain reads no finetune.* or synthetic.* settings (xdc eval finetune and make-synthetic "
              f"take theirs); not used: {', '.join(unread)}", file=sys.stderr)  # fmt: skip
    given = given_keys(args.config, [*shortcuts, *args.overrides])
    idle = [f"{key}={setting(cfg, key)!r}" for key in given if key in get_method(cfg.train.method).unread_settings
            and setting(cfg, key) != setting(Config(), key)]  # fmt: skip
    if idle and not args.resume and torchrun_rank() == 0:  # until 2026-12-02 without a word
        print(f"WARNING: --method {cfg.train.method} does not read these settings; not used: {', '.join(idle)}",
              file=sys.stderr)
    rounds = cfg.train.rounds if args.resume and "train.rounds" in given else None  # extends or shortens the run
    taken = {key: setting(cfg, key) for key in given if key in RESUME_SETTINGS} if args.resume else None
    if args.resume and torchrun_rank() == 0:
        from xdc.presets import preset_path

        _warn_newer_data(args.data, args.out / "videos.csv")

        keys = given_keys(preset_path(args.preset), given) if args.preset else given  # the preset's, then the rest
        _warn_unused_on_resume(cfg, [key for key in keys if (key != "train.rounds" or rounds is None) and key not in
                                     taken], args.out / "config.yaml")  # fmt: skip
    main, encoders = _as_rank(
        lambda ctx: (ctx.main, pretrain(cfg, args.data, args.out, resume=args.resume, ctx=ctx, rounds=rounds,
                                        settings=taken)),  # fmt: skip
        lock=lambda: holding(args.out, "pretrain", folder=True),
    )
    if main:  # under torchrun, once, not once per rank
        print(f"encoders: {encoders}")
    return 0


def _warn_newer_data(data: Path | None, videos: Path) -> None:
    """A resumed run reads its own videos: say so where ``data`` (its --data) was written after the run's list of
    them (``videos``), e.g. a collection moved and indexed again, rather than let the user think it is used."""
    try:
        newer = data is not None and data.stat().st_mtime > videos.stat().st_mtime
    except OSError:  # no such files: pretrain says what is missing
        return
    if newer:
        print(f"WARNING: {data} was written after this run started; a resumed run reads the videos it started with "
              f"({videos}), not --data: start a new run to train on it", file=sys.stderr)


def _warn_unused_on_resume(cfg: Config, given: list[str], saved: Path) -> None:
    """A resumed run keeps the settings it started with: say which of the keys ``given`` now it does not use, rather
    than let --k 64 --resume go on with the run's own k without a word."""
    if not saved.exists():  # nothing to resume: pretrain says so
        return
    run = load_config(saved)
    unused = [f"{key}={setting(cfg, key)!r} (the run's: {setting(run, key)!r})" for key in given
              if setting(cfg, key) != setting(run, key)]  # fmt: skip
    if unused:
        print(f"WARNING: a resumed run keeps the settings it started with ({saved}); not used: {', '.join(unused)}",
              file=sys.stderr)


class _Said(Exception):
    """An error that this rank of a torchrun job said before it left the job (_as_rank); ``status``: its exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _as_rank(work: Callable[[Dist], T], gpus: bool = True, lock: Lock = nullcontext) -> T:
    """``work(ctx)`` as one rank of the torchrun job that started this process (its process group joined, and left
    after the other ranks once ``work`` is done), or in a process alone. ``gpus``: see init_distributed. Rank 0
    holds ``lock`` until every rank is done; where it is refused, every rank stops with its error, said once."""
    from xdc.training.distributed import init_distributed, leave_distributed, on_main

    with ExitStack() as held:
        ctx, interrupted = None, []
        try:
            ctx = init_distributed(gpus)
            interrupted = _noting_interrupts() if ctx.enabled else []
            on_main(lambda: held.enter_context(lock()), ctx)
            result = work(ctx)
            leave_distributed(True)  # after the others: gloo's error (below) where one has left the job instead
        except (Exception, KeyboardInterrupt) as e:
            if ctx is None or not ctx.enabled:
                raise
            # said before this rank leaves: torchrun stops a job's processes once one has ended, and the others' next
            # collective fails once this one has left: either could be before its line. An error that every rank
            # raised, rank 0 alone says, before any leaves (the others may never come where it is not; nor does a
            # Ctrl-C wait for them: a rank stuck in a collective would not come).
            together = isinstance(e, (SharedError, RankFailed))
            status = _report(e, bool(interrupted)) if ctx.main or not together else 2
            if together:  # every rank leaves after rank 0 said it: the others' lines after a traceback, not inside
                met = _meet(ctx)
                if isinstance(e, RankFailed) and not ctx.main:
                    _say(f"stopped: {e}; see its error")
                    status = 1
                elif not (met or ctx.main):  # rank 0 may have left before it said the error: said here too
                    _say(str(e))
            raise _Said(status) from e
        finally:
            leave_distributed(False)
    return result


def _meet(ctx: Dist) -> bool:
    """Wait for the other ranks (a barrier) where every rank stops with the same error; False where one left the job
    first (killed, say: gloo's error, PEER_LEFT), which ends this rank's wait without another line: it has said its
    own error, or will say it now."""
    from xdc.training.distributed import barrier

    try:
        barrier(ctx)
    except RuntimeError as e:
        if PEER_LEFT.search(str(e)) is None:
            raise
        return False
    return True


def _noting_interrupts() -> list[object]:
    """Under torchrun, note each Ctrl-C that Python ignored in a ``__del__`` (a DataLoader iterator's, joining its
    workers at an epoch's end) in the list returned, in place of its traceback: the rank goes on to its next
    collective and finds the others gone, as they stopped on the same Ctrl-C; noted, it is said there (_report).
    The SIGINT handler stays Python's own."""
    noted: list[object] = []
    hook = sys.unraisablehook

    def noting(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            noted.append(unraisable.object)
        else:
            hook(unraisable)

    sys.unraisablehook = noting
    return noted


def _report(e: Exception | KeyboardInterrupt, interrupted: bool = False) -> int:
    """Say ``e`` as main does (one line, or a bug's traceback; a RankFailed as its cause), or that this rank stopped as
    another left the job (_peer_left; a Ctrl-C, where this rank had one that Python ignored: ``interrupted``), and
    give the exit status."""
    if isinstance(e, KeyboardInterrupt):
        return _interrupted()
    left = _peer_left(e)
    if left is not None and interrupted:  # the others stopped on the Ctrl-C that this rank's __del__ ignored
        return _interrupted()
    if left is not None:  # not this rank's error but another's, which that rank said before it left
        _say(f"stopped: another rank left the job (gloo: {left}); its error, or torchrun's report of its end, says why")
        return 1
    line = _line(e.__cause__ if isinstance(e, RankFailed) else e)
    if line is None:
        sys.excepthook(type(e), e, e.__traceback__)  # under torchrun torch's, which names the rank on every line
        return 1
    _say(line)
    return 2


def _peer_left(e: BaseException) -> str | None:
    """gloo's short reason where ``e`` is the error of a collective that failed as another rank left the job (its
    peer gone: PEER_LEFT); None for any other error, and for one raised while this rank handled an error of its own,
    which would be lost in a line (its traceback says both)."""
    if not isinstance(e, RuntimeError) or (e.__cause__ or (None if e.__suppress_context__ else e.__context__)):
        return None
    found = PEER_LEFT.search(str(e))
    return found and found.group(1)


def _interrupted() -> int:
    """Say that a Ctrl-C (or a SIGTERM: _stopping_on_sigterm) stopped the command, and give the exit status, the
    shell's for that signal. torchrun passes either to every rank of its node (it starts each in a session of its
    own, out of the terminal's reach): the node's first rank alone says it."""
    if torchrun_rank("LOCAL_RANK") == 0:
        print(f"xdc: {'terminated' if _terminated else 'interrupted'}", file=sys.stderr)
    return 128 + (signal.SIGTERM if _terminated else signal.SIGINT)


_terminated: list[int] = []  # the SIGTERM that is stopping the command, once one came


@contextmanager
def _stopping_on_sigterm() -> Iterator[None]:
    """SIGTERM (a job scheduler's preemption, ``docker stop``, ``kill``, torchrun passing on its own) stops the command
    as a Ctrl-C does, through Python's SIGINT handler, held back where a Ctrl-C is (xdc.data.jobs.held_interrupts):
    the files being written are removed, locks and workers let go, TensorBoard's last records flushed, and it
    says ``xdc: terminated`` (exit status 143). Its default action killed the process where it stood, as SIGKILL
    does; and as PID 1 of a container the kernel ignores it, so the container waited for the SIGKILL."""
    if threading.current_thread() is not threading.main_thread():  # handlers are set in the main thread only
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        _terminated.clear()


def _on_sigterm(signum: int, frame) -> None:
    # a second one (torchrun's, the scheduler's again) is ignored: raised in the first one's cleanup, it would cut
    # that short; a stop that hangs ends with the SIGKILL that follows
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _terminated.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # ignored: a background job of a shell script (`xdc ... &`), nohup
        raise KeyboardInterrupt
    handler(signum, frame)  # held back (held_interrupts), it is raised even where SIGINT is ignored


def _line(e: Exception) -> str | None:
    """The one line that says ``e``: the user's mistake, or the machine's error (a folder that cannot be made, a full
    disk, a file gone from under the run); None for a bug, which its traceback says."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and (e.filename is not None or e.errno in DISK_FULL):
        # (a write to an open file, a log's, names none; the files xdc replaces say theirs: xdc.atomic)
        return f"{'' if e.filename is None else f'{e.filename}: '}{e.strerror or e}"
    return None


def _key_value(text: str) -> tuple[str, str]:
    """``--option KEY=VALUE`` as a pair; argparse names the mistake of a missing ``=``."""
    key, eq, value = text.partition("=")
    if not key or not eq:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def cmd_extract(args: argparse.Namespace) -> int:
    """``xdc extract``, in one process or as one rank of a torchrun job (the ranks share out the clips)."""
    from xdc.data.index import number
    from xdc.evaluation.adapters import load_dataset
    from xdc.evaluation.extract import cut_line, extract_features, features_path, write_summary
    from xdc.evaluation.sources import load_source
    from xdc.training.distributed import on_main

    options = _dataset_options(args)
    settings = _encoder_settings(args, "extract")

    def run(ctx: Dist) -> dict | None:
        _device_under_torchrun(args.device, ctx)
        source = load_source(args.run, args.encoder, settings)  # its modality says which files of a dataset to list
        items = load_dataset(args.dataset, args.data, split=args.split, modality=source.modality, **options)
        summary = extract_features(args.run, args.encoder, items, args.out, clips=args.clips, stride=args.stride,
                                   batch_size=args.batch_size, settings=settings, device=args.device, ctx=ctx,
                                   source=source)  # fmt: skip
        # by rank 0, still holding the lock of OUT.npz, which covers its OUT.json; a failed write stops every rank
        # with its line (they left at once, with a traceback)
        on_main(lambda: write_summary(summary), ctx)
        return summary

    summary = _as_rank(run, lock=lambda: holding(features_path(args.out), "extract"))
    if summary is None:  # another rank than the first: rank 0 writes and says
        return 0
    if summary.get("kept"):
        print(f"{summary['out']} and its .json already hold these features (the same weights, items, files and "
              f"settings): nothing to do; remove {summary['out']} to extract them again")  # fmt: skip
        return 0
    partly = summary["partly_kept"]
    print(f"{number(summary['clips'], 'clip')} of {number(summary['items'], 'item')} -> {summary['out']}; "
          f"{len(summary['skipped'])} skipped"
          + (f", {len(partly)} partly kept" if partly else ""))  # fmt: skip
    for skip in summary["skipped"][:10]:
        print(f"  skipped {skip['path']}: {skip['reason']}")
    for file in partly[:10]:  # some of its clips in the features: not skipped (until 2026-12-03 listed as such)
        print(f"  partly kept {file['path']}: {file['clips_failed']} of its clips failed, "
              f"{file['clips_kept']} kept; the last: {file['reason']}")  # fmt: skip
    if (line := cut_line(summary["cut"])) is not None:
        print(f"  {line}")
    return 0


def _dataset_options(args: argparse.Namespace) -> dict[str, str]:
    """The ``--option``s of extract and eval finetune, less the two that the command sets (until 2026-12-02 a
    traceback: "got multiple values for keyword argument 'split'")."""
    options = dict(args.option)
    if "split" in options:
        raise UserError("--option split: give the official split with --split")
    if "modality" in options:
        raise UserError("--option modality: the encoder's modality (--encoder) is the one loaded, where a dataset "
                        "has a file of each")  # fmt: skip
    return options


def _encoder_settings(args: argparse.Namespace, command: str, own: tuple[str, ...] = ()) -> dict:
    """The settings given (``--config``, ``--set``) that the command reads: ``data.*``, which change the clips that
    the encoder of ``--run`` is fed, over its own (e.g. the paper's 32-frame finetuning; checked there, as they
    relate to its other clip settings, not the defaults), and the command's ``own`` keys (prefixes). A warning
    names any other, which the encoder's own settings decide."""
    given = given_settings(args.config, args.overrides)  # first: a malformed one is its error alone, not also unused
    _warn_unused(args, ("data.", *own), f"xdc {command} takes the encoder's model and train settings from --run")
    return {key: value for key, value in given.items() if key.startswith(("data.", *own))}


def _warn_unused(args: argparse.Namespace, used: tuple[str, ...], why: str) -> None:
    """Name the settings given (``--config``, ``--set``) that the command does not read: those that start with none
    of ``used``."""
    unused = [key for key in given_keys(args.config, args.overrides) if not key.startswith(used)]
    if unused and torchrun_rank() == 0:
        print(f"WARNING: {why}; not used: {', '.join(unused)}", file=sys.stderr)


def _device_under_torchrun(device: str, ctx: Dist) -> None:
    if ctx.enabled and device != "auto":
        raise UserError("under torchrun each rank runs on its own device (its GPU, else the CPU): leave --device at "
                        "auto")


def cmd_eval(args: argparse.Namespace) -> int:
    from xdc.evaluation import commands

    if args.protocol == "finetune":
        _finetune(args)
        return 0
    cs = _c_grid(args.cs) if args.protocol in ("linear", "kfold") else None  # before the lock: a typo costs nothing
    with _result_lock(args.out, f"eval {args.protocol}"):
        if args.protocol == "linear":
            commands.eval_linear(args.features, args.test_features, args.classifier, args.out, cs)
        elif args.protocol == "kfold":
            commands.eval_kfold(args.features, args.classifier, args.out, cs, args.folds)
        else:
            commands.eval_clusters(args.run, args.out, args.labels)
    return 0


def _c_grid(text: str | None) -> list[float]:
    """``--cs`` as the probe's grid of C, ascending and each C once (the default grid where not given); a one-line
    UserError for anything but positive finite numbers (argparse's own error would add its usage line)."""
    from xdc.evaluation.commands import PROBE

    if text is None:
        return PROBE["cs"]
    how = f"--cs takes positive numbers separated by commas, e.g. 0.001,0.01,0.1; got {text!r}"
    try:
        cs = [float(value) for value in text.split(",")]
    except ValueError:  # a word, or an empty value ("", "0.1,")
        raise UserError(how) from None
    wrong = [c for c in cs if not (math.isfinite(c) and c > 0)]
    if wrong:
        raise UserError(f"{how} ({wrong[0]:g} is not a positive finite number)")
    return sorted(set(cs))


def _result_lock(out: Path | None, command: str) -> AbstractContextManager:
    """The lock of an ``xdc eval`` result file; none where it writes none (no --out)."""
    return nullcontext() if out is None else holding(out, command)


def _finetune(args: argparse.Namespace) -> None:
    """``eval finetune``, in one process or as one rank of a torchrun job (DDP, like pretraining)."""
    from xdc.evaluation import commands

    options = _dataset_options(args)
    if args.out is not None and commands.finetune_folder(args.out, args.dataset) == args.out:
        # its lock made the folder first, and the one line said "--out X.finetune is a folder" (until 2026-12-01)
        raise UserError(f"--out {args.out} is the name of the folder where eval finetune keeps its progress: give "
                        f"the result another name, e.g. {args.out.stem}.json")  # fmt: skip
    folder = commands.finetune_folder(args.out, args.dataset)
    if folder.exists() and not folder.is_dir():  # until 2026-12-03 "FOLDER/log.jsonl: Not a directory"
        raise UserError(f"{folder}, where eval finetune keeps its progress and logs, is a file: remove it, or give "
                        "another --out")  # fmt: skip
    settings = _encoder_settings(args, "eval finetune", own=("finetune.", "seed"))
    cfg = with_settings(Config(), {key: value for key, value in settings.items() if not key.startswith("data.")})
    settings = {key: value for key, value in settings.items() if key.startswith("data.")}

    def run(ctx: Dist) -> None:
        _device_under_torchrun(args.device, ctx)
        commands.eval_finetune(args.run, args.encoder, args.dataset, args.data, args.split, args.mode, cfg, args.out,
                               options, device=args.device, settings=settings, ctx=ctx)  # fmt: skip

    @contextmanager
    def lock() -> Iterator[None]:  # the result, and the folder of progress and logs that a re-run goes on from
        with _result_lock(args.out, "eval finetune"):
            with holding(folder, "eval finetune", folder=True):
                yield

    _as_rank(run, lock=lock)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from xdc.grid_benchmark import grid_benchmark

    try:
        ks = tuple(int(k) for k in args.k.split(",")) if args.k else ()
    except ValueError:
        raise UserError(f"--k takes whole numbers separated by commas, e.g. 16,64; got {args.k!r}") from None
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    if args.supervised_slot is not None and methods is not None and "supervised" not in methods:
        # until 2026-12-03 taken without a word, and recorded in results.json as if a run had used it
        raise UserError(f"--supervised-slot is the labels of the supervised baseline, which --methods "
                        f"{args.methods} leaves out: drop it, or add supervised to --methods")  # fmt: skip
    _no_method(args, "benchmark grid", " (--methods chooses them)")
    overrides = _as_overrides(args, args.preset)
    with holding(args.out, "benchmark grid", folder=True):
        given = {"methods": methods, "supervised_slot": args.supervised_slot}  # the function's defaults where not
        grid_benchmark(args.data, args.out, args.test_data, args.fsdd, preset=args.preset, ks=ks, overrides=overrides,
                       **{key: value for key, value in given.items() if value is not None})  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.run.is_file():  # a result of xdc eval: where its encoder fails (a FIFO is no file: never read)
        from xdc.evaluation.result_page import default_page, write_result_page

        with holding(args.out or default_page(args.run), "report"):
            print(f"wrote {write_result_page(args.run, args.out)}")
        return 0
    from xdc.report import check_run_folder, write_report

    if args.out is None:  # before the lock of RUN/report.html, which would make a RUN that is not there
        check_run_folder(args.run)
    with holding(args.out or args.run / "report.html", "report"):
        print(f"wrote {write_report(args.run, args.out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from xdc.atomic import is_partial
    from xdc.export import export_run, is_export

    # beside the folder, not in it: an export's folder holds its own files alone (is_export), and a new export
    # removes them all
    with holding(args.out, "export"):
        before = ({p.name for p in args.out.iterdir() if not is_partial(p)}
                  if args.out.is_dir() and any(args.out.iterdir()) and is_export(args.out) else None)  # fmt: skip
        written = export_run(args.run, args.out, metrics=args.metrics, also=args.also)
    for path in written:
        print(f"wrote {path}")
    if before is not None:  # a re-run, or another run's export into its folder: said (until 2026-12-02 it was not)
        gone = sorted(before - {path.name for path in written})
        print(f"replaced the previous export in {args.out}" + (f"; removed its {', '.join(gone)}" if gone else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xdc.demo import DEMO_SETTINGS, run_demo

    _no_method(args, "demo", "")
    overrides = _as_overrides(args, "tiny")
    # the settings of the demo's runs (but their method), checked before it writes its data: until 2026-12-03 they
    # were checked over the defaults, and a crop that the tiny preset's scale_min does not allow stopped it later
    cfg = load_config(None, [*DEMO_SETTINGS, *overrides], preset="tiny")
    with holding(args.out, "demo", folder=True):
        run_demo(args.out, cfg, videos=args.videos, overrides=overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdc", description="Cross-modal deep clustering for audio-visual learning")
    # A bug report names the version it was seen with.
    parser.add_argument("--version", action="version", version=f"xdc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="probe a video collection and write a manifest CSV")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="folders (searched recursively), CSV/text lists of files, or media files")
    p.add_argument("--out", type=_out_path, required=True, help="manifest CSV to write (re-used as a probe cache)")
    p.add_argument("--labels", type=Path, help="CSV with columns path,label")
    p.add_argument("--workers", type=int, default=None, help="parallel probes (default: the usable CPUs)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("prepare", help="transcode a collection for fast training (small frames, short GOP, 16 kHz)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="folders (searched recursively), CSV/text lists of files, or files")
    p.add_argument("--out", type=_out_path, required=True, help="output folder (outside the inputs); re-runs resume")
    p.add_argument("--short-side", type=int, default=128, help="pixels of the shorter side (default 128)")
    p.add_argument("--gop", type=int, default=16, help="most frames between keyframes (default 16)")
    p.add_argument("--fps", type=float, default=None, help="cap the frame rate (default: keep the source's)")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate, mono (default 16000)")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better (default 23)")
    p.add_argument("--audio", default="aac", help="audio codec: aac (smallest, default), flac or pcm (about 1.1x "
                   "the clips per core for 1.6-2.1x and 2.6x the bytes)")
    p.add_argument("--labels", type=Path, help="CSV with columns path,label, rewritten for the copies to OUT/labels.csv")
    p.add_argument("--workers", type=int, default=None, help="parallel transcodes (default: the usable CPUs)")
    p.add_argument("--redo-unknown-format", action="store_true", help="make again the copies of xdc before "
                   "2026-12-02, which record no format (kept otherwise, with a warning)")  # fmt: skip
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("make-synthetic", help="write the built-in synthetic audio-visual dataset")
    p.add_argument("out", type=_out_path, metavar="OUT", help="output folder: a new or empty one, or make-synthetic's "
                   "own earlier output (one holding files it did not write is refused)")
    p.add_argument("--videos", type=int, default=200, help="number of clips (default: 200)")
    p.add_argument("--classes", type=int, default=8, help="number of classes, 1 to 128 (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same files (default: 0)")
    p.add_argument("--workers", type=int, default=None, help="parallel writers (default: the usable CPUs)")
    _add_config_options(p, "a synthetic.* setting, e.g. --set synthetic.fps=8 (repeatable); it reads no others")
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser("pretrain", help="self-supervised pretraining (XDC and family); scales with torchrun")
    p.add_argument("--data", type=Path, help="manifest CSV written by xdc index (a resume uses the run's videos/)")
    p.add_argument("--out", type=_out_path, required=True, help="run folder (checkpoints, logs, encoders)")
    p.add_argument("--method", help="xdc (default), sdc-video, sdc-audio, mdc, cdc, xdc-video-video, "
                   "xdc-audio-audio, scratch, supervised")  # fmt: skip
    p.add_argument("--preset", action=_Once, what="preset", help="paper, small or tiny (input sizes and encoder "
                   "widths)")
    p.add_argument("--k", type=int, help="clusters per label set (train.k)")
    p.add_argument("--rounds", type=int, help="cluster-then-train rounds (train.rounds); with --resume, the run's "
                   "new number: more extend it, finished or not")  # fmt: skip
    p.add_argument("--assign", choices=("kmeans", "sinkhorn"), help="nearest-centroid or balanced assignment")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint, "
                   "with the settings it started with (but --rounds, train.lr, and data.workers and the others of how "
                   "it runs: docs/pretrain.md)")  # fmt: skip
    _add_config_options(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("extract", help="features of a trained encoder for every clip of a labelled dataset")
    p.add_argument("--run", type=Path, required=True, help=RUN_HELP)
    p.add_argument("--encoder", required=True, help="video or audio (or video2/audio2 of same-modality runs)")
    p.add_argument("--data", type=Path, required=True, help="dataset root, or a CSV (manifest or table)")
    p.add_argument("--dataset", default="csv", help="csv (default), ucf101, hmdb51, esc50, dcase, fsdd, grid-words")
    p.add_argument("--split", type=int, help="official split 1-3 (ucf101, hmdb51)")
    p.add_argument("--option", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="adapter option, e.g. --option slot=digit for grid-words")  # fmt: skip
    clips = p.add_mutually_exclusive_group()
    clips.add_argument("--clips", type=int, help="evenly spaced clips per item (default: data.eval_clips)")
    clips.add_argument("--stride", type=float, help="sliding window every STRIDE seconds (feature sequences)")
    p.add_argument("--out", type=_out_path, required=True, help="features .npz (a .json summary is written beside it)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per forward pass, per rank (default 32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_config_options(p, SETTINGS_HELP.format(""))
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("eval", help="evaluate features or a run: linear, kfold, finetune, clusters")
    evals = p.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for name, text in (("linear", "linear probe on the train split, video-level and per-class test accuracy"),
                       ("kfold", "cross-validated linear probe over the fold column (ESC-50) or --folds N")):
        q = evals.add_parser(name, help=text)
        q.add_argument("--features", type=Path, required=True, help="features .npz from xdc extract")
        if name == "linear":
            q.add_argument("--test-features", type=Path, help="test on these instead of the 'test' split")
        else:
            q.add_argument("--folds", type=int, metavar="N", help="deal the videos of features without folds (a "
                           "labelled set of your own) into N folds by class")  # fmt: skip
        q.add_argument("--classifier", choices=("logreg", "svm"), default="logreg",
                       help="logistic regression (default) or a linear SVM (ESC-50's protocol)")
        q.add_argument("--cs", metavar="C,C,...", help="comma-separated grid of C to choose from on validation "
                       "(default 0.01,0.1,1,10,100); widen it where the chosen C is at an end")  # fmt: skip
        q.add_argument("--out", type=_out_path, help=OUT_HELP)
        q.set_defaults(func=cmd_eval, test_features=None, folds=None)
    q = evals.add_parser("finetune",
                         help="full finetuning or fc-only on train/test splits, video-level and per-class accuracy")
    q.add_argument("--run", type=Path, required=True, help=RUN_HELP)
    q.add_argument("--encoder", required=True, help="video or audio (or video2/audio2 of same-modality runs)")
    q.add_argument("--data", type=Path, required=True, help="dataset root, or a CSV table with a split column")
    q.add_argument("--dataset", default="csv", help="csv (default), ucf101, hmdb51, esc50, dcase, fsdd, grid-words")
    q.add_argument("--split", choices=("1", "2", "3", "all"), help="official split (ucf101, hmdb51); all: mean of 1-3")
    q.add_argument("--mode", choices=("full", "fc"), default="full", help="full finetuning or frozen encoder + fc")
    q.add_argument("--option", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="adapter option, e.g. --option splits_dir=PATH for ucf101 (docs/datasets.md)")  # fmt: skip
    q.add_argument("--out", type=_out_path, help=OUT_HELP)
    q.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_config_options(q, SETTINGS_HELP.format(", or a finetune.* setting, or seed"))
    q.set_defaults(func=cmd_eval)

    q = evals.add_parser("clusters", help="NMI, ARI, purity, Hungarian accuracy of a run's clusters vs labels")
    q.add_argument("--run", type=Path, required=True, help="an xdc pretrain run folder, finished or not (its labels/)")
    q.add_argument("--labels", type=Path, help="a labels CSV (path, label), matched to the run's videos as xdc index "
                   "--labels matches; default: the labels of the manifest the run was trained from")  # fmt: skip
    q.add_argument("--out", type=_out_path, help=OUT_HELP)
    q.set_defaults(func=cmd_eval)

    p = sub.add_parser("benchmark", help="benchmarks on real data: grid")
    benchmarks = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    q = benchmarks.add_parser("grid", help="all methods on GRID videos, probes on word clips (and FSDD)")
    q.add_argument("--data", type=Path, required=True, help="a folder in the layout of GRID (videos/, clips.csv, words.csv)")
    q.add_argument("--test-data", type=Path, help="test the probes on this set (same layout) instead of a split")
    q.add_argument("--fsdd", type=Path, help="FSDD folder: also probe the audio encoders on its official split")
    q.add_argument("--out", type=_out_path, required=True, help="folder of the runs, features and results; re-runs "
                   "reuse its finished runs")
    q.add_argument("--preset", default="small", action=_Once, what="preset", help="paper, small (default) or tiny")
    q.add_argument("--k", help="comma-separated cluster counts for an XDC sweep, e.g. 16,32,64")
    q.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    q.add_argument("--supervised-slot", help="the word slot the supervised baseline trains on (default digit); "
                   "only where --methods includes supervised")
    _add_config_options(q)
    q.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("report", help="one self-contained HTML page about a pretraining run or an eval result")
    p.add_argument("run", type=Path, metavar="RUN|RESULT", help="an xdc pretrain run folder, or the --out JSON of "
                   "xdc eval linear, kfold or finetune (its confusion matrix and accuracy per class)")
    p.add_argument("--out", type=_out_path, help="HTML file to write (default: RUN/report.html, RESULT.html beside "
                   "RESULT.json); an existing file only if it is an earlier page of xdc report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="a finished run's encoders as .safetensors files with a model card")
    p.add_argument("run", type=Path, metavar="RUN", help="an xdc pretrain run folder (or its encoders-N-rounds.pt), or "
                   "a file of the released XDC weights (.pth)")
    p.add_argument("--out", type=_out_path, required=True, help="folder to write: new, empty, or a previous export")
    p.add_argument("--metrics", type=Path, action="append", default=[], metavar="FILE.json",
                   help="a result of `xdc eval ... --out` to cite in the model card (repeatable)")  # fmt: skip
    p.add_argument("--also", nargs="+", choices=("onnx", "pt2"), default=[], metavar="FORMAT",
                   help="also write each encoder as a program that runs without xdc: onnx, pt2 (torch.export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="run the built-in job on generated data (about a minute on a laptop CPU)")
    p.add_argument("--out", type=_out_path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--videos", type=int, default=128, help="synthetic videos to generate, at least 16 (default 128)")
    _add_config_options(p)
    p.set_defaults(func=cmd_demo)
    _name_own_parsers(parser)
    return parser


def _name_own_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser records itself, so that an option it does not know is said by it, with its usage."""
    parser.set_defaults(own_parser=parser)
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for child in action.choices.values():
            _name_own_parsers(child)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse leaves an unknown option of a subcommand to the top parser, whose error showed the usage of `xdc`
    (until 2026-12-03): `xdc pretrain --metod xdc` is said by `xdc pretrain`, naming the option meant."""
    import difflib

    args, extra = build_parser().parse_known_args(argv)
    if extra:
        parser = args.own_parser
        known = [s for action in parser._actions for s in action.option_strings]
        near = difflib.get_close_matches(extra[0].split("=")[0], known, n=1) if extra[0].startswith("--") else []
        hint = f" (did you mean {near[0]}?)" if near else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _one_line_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    """xdc's own warnings (files dropped, a cache given up) as the commands' other warnings print, not as Python's
    "path:line: UserWarning: ..." followed by a line of its source."""
    if category is UserWarning and f"{os.sep}xdc{os.sep}" in filename:
        return f"WARNING: {message}\n"
    return _default(message, category, filename, lineno, line)


def _say(error: str) -> None:
    """An error as one line; under torchrun, from another rank than 0, naming it (its own files, its device)."""
    rank = torchrun_rank()
    print(f"xdc: error: {f'rank {rank}: ' if rank else ''}{error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    fit_threads()
    preload_fork_server()  # before any command's first workers start the server
    warnings.formatwarning = _one_line_warning
    if isinstance(sys.stdout, io.TextIOWrapper):  # a file name that is not UTF-8, printed as its escapes (as stderr)
        sys.stdout.reconfigure(errors="backslashreplace")
    with _stopping_on_sigterm():
        try:
            return args.func(args)
        except _Said as e:
            return e.status
        except (UserError, OSError) as e:
            line = _line(e)
            if line is None:  # a bug: its traceback
                raise
            _say(line)
            return 2
        except KeyboardInterrupt:
            return _interrupted()


if __name__ == "__main__":
    sys.exit(main())
