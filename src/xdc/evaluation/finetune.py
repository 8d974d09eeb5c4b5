"""``xdc eval finetune``: train a linear classifier on top of a pretrained encoder, either with the encoder
frozen (fc-only) or updating everything (full finetuning), and report multi-clip video-level test accuracy.

Every epoch visits each training clip's video once, in an order and with clip draws (start, augmentation) that
depend on (seed, epoch, position) only (:func:`xdc.clustering.sampler.shuffled_draws`), whatever the number of
loader workers. With a ``state`` folder, progress is kept there (:mod:`xdc.evaluation.resume`): a checkpoint
after every epoch and every ``finetune.checkpoint_every`` batches, then the result. The same finetuning started
again continues at the batch after the checkpoint, and ends exactly as if it had not stopped (on a CPU; on a GPU
up to the nondeterminism of its kernels).

Under torchrun (``ctx``) each rank takes its share of every batch (positions r, r + W, ... of the epoch's
sequence, ``finetune.batch_size`` / W clips) on its own device, and DDP averages the gradients, as pretraining
does; each rank's BatchNorm normalises its own share. The test clips are shared out the same way and their scores
gathered on rank 0, which alone writes the checkpoints, the log and the result."""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from xdc.clustering.sampler import shuffled_draws
from xdc.config import FinetuneConfig, config_to_dict
from xdc.data.datasets import EvalClips, TrainClips, make_loader
from xdc.data.failures import FailureLog, TooManyFailures
from xdc.data.index import number
from xdc.data.worker_deaths import Surviving
from xdc.errors import SharedError, UserError
from xdc.evaluation.adapters import Item, not_found, refuse_repeats, split_items, with_not_found
from xdc.evaluation.device import EvalDevice, pick_device
from xdc.evaluation.extract import probed_items
from xdc.evaluation.metrics import average_by_group, class_results, group_index, topk_accuracy
from xdc.evaluation.resume import SavedProgress, identity
from xdc.evaluation.sources import Source, load_source
from xdc.models.encoders import check_one_clip_trains
from xdc.progress import progress_bar
from xdc.training import checkpoint
from xdc.training.distributed import (
    FAILURE_CHECK_BATCHES,
    Dist,
    broadcast_buffers,
    failures_line,
    gather_objects,
    judge_failures,
)
from xdc.training.runlog import RunLog
from xdc.training.to_host import ToHost

MODES = ("full", "fc")
NOT_COMPUTED = ("checkpoint_every",)  # finetune.* settings of how often progress is kept: no number depends on them


def finetune(
    run: Path, encoder_name: str, items: list[Item], mode: str, cfg: FinetuneConfig, work: Path, seed: int = 0,
    workers: int | None = None, device: str = "auto", state: Path | None = None, log: RunLog | None = None,
    name: str = "finetune", settings: dict[str, Any] | None = None, ctx: Dist | None = None,
    source: Source | None = None,
) -> dict | None:  # fmt: skip
    """Train the encoder ``encoder_name`` of ``run`` (a run folder, an export or the released weights:
    xdc.evaluation.sources, with ``settings`` over its own) on the items of split 'train', test on split 'test', on
    ``device`` (xdc.evaluation.device; under torchrun the rank's own); returns the numbers and the settings (None on
    ranks other than 0). ``work``: where the items' probes are cached. ``state``: where progress is kept (None:
    nowhere). ``log``: where each batch's loss and learning rate and the test's accuracy go, under ``name``
    (TensorBoard tags ``NAME/loss``, ...). ``source``: that encoder, loaded already with ``settings`` (each split
    of ``eval finetune`` starts from the one read of the file); a copy of it is trained."""
    ctx = ctx or Dist()
    check_settings(mode, cfg, ctx)
    if source is None:
        source = load_source(run, encoder_name, settings)
        encoder = source.encoder
    else:  # the caller's stays as loaded, on its device
        encoder = copy.deepcopy(source.encoder)
    modality, run_cfg = source.modality, source.cfg
    data_cfg = run_cfg.data
    test_items = split_items(items, "test")
    train, skipped, test, test_rows, test_skipped, cut, files = _probed(items, work, modality, ctx)
    saved, made_with = None, None
    if state is not None:  # every rank reads the folder (a resume needs it on every node); rank 0 alone writes
        made = _identity(source, encoder_name, items, mode, cfg, seed, files)
        made_with = _digest(made)
        saved = SavedProgress(state, made, quiet=not ctx.main)
        if (result := saved.result()) is not None:
            if ctx.main:
                print(f"{name}: finished before with the same settings; its result is kept in {saved.result_path}")
            return {**result, "skipped": with_not_found(result["skipped"], items), "made_with": made_with} \
                if ctx.main else None
    classes = train.classes

    place = EvalDevice(ctx.device if ctx.enabled else pick_device(device), run_cfg, modality, training_clips=True)
    workers = data_cfg.workers_on(place.device.type) if workers is None else workers
    torch.manual_seed(seed)
    model = nn.Sequential(place.module(encoder), nn.Linear(encoder.feature_dim, len(classes)).to(place.device))
    trained = model if mode == "full" else model[1]
    net = trained  # what the training batches go through: DDP's wrapper under torchrun
    if ctx.enabled:
        cuda = place.device.type == "cuda"
        net = DistributedDataParallel(trained, device_ids=[place.device.index] if cuda else None)
    optimizer = torch.optim.SGD(trained.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_set = TrainClips(train, data_cfg, modalities=(modality,), raw_video=True,
                           device_crops=place.device_crops, device_logmel=place.device_logmel)  # fmt: skip
    sampler = shuffled_draws(len(train_set), seed, ctx.rank, ctx.world_size)
    per_rank = cfg.batch_size // ctx.world_size
    if mode == "full" and per_rank == 1:  # every batch one clip: refused before training, not at its first step
        check_one_clip_trains(modality, train_set.shapes()[modality])
    per_epoch = math.ceil(len(train_set) / cfg.batch_size)  # steps of every rank: a rank with a draw fewer may
    # run out of batches one step early, and takes part in the last with none (_train_step)
    steps = cfg.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cfg.schedule == "cosine" else (lambda s: 1.0)
    )  # fmt: skip
    failures = FailureLog(data_cfg.max_fail_fraction, alone=not ctx.enabled)  # under torchrun: judge_failures
    loader = make_loader(train_set, per_rank, workers, sampler=sampler, pin_memory=place.pin_memory)
    empty = torch.zeros(0, *train_set.shapes()[modality], device=place.device)  # see _train_step
    done, losses = 0, []  # batches taken; the loss of each
    # clips of each training row trained on, by this rank (on rank 0 with a resume's, every rank's before it): a file
    # with some of its clips failed is partly kept, not skipped, when it also has some here
    used = torch.zeros(len(train), dtype=torch.int64)
    if saved is not None and (kept := saved.checkpoint()) is not None:
        trained.load_state_dict(kept["trained"])
        optimizer.load_state_dict(kept["optimizer"])
        schedule.load_state_dict(kept["schedule"])
        ranks = kept["failures"]  # each rank's; with another number of ranks rank 0 carries on their count
        if len(ranks) == ctx.world_size:
            failures.load_state(ranks[ctx.rank])
        elif ctx.main:
            failures.merge(ranks)
        train_set.crashed.update(kept["crashed"])
        if ctx.main and "used" in kept:  # a checkpoint of before 2026-12-03 has none: its clips are not counted
            used += kept["used"]
        done, losses = kept["batches"], kept["losses"]
        if log is not None and "log_records" in kept:  # checkpoints before 2026-12-01 have none
            log.keep(lambda number, _: number < kept["log_records"])
        if ctx.main:
            print(f"{name}: resuming after batch {done} of {steps} from {saved.checkpoint_path}")
            checkpoint.warn_threads(kept.get("threads"), place.device)  # checkpoints before 2026-11-30: none
    elif log is not None:  # started over: an earlier start's records of this split go (kept until 2026-12-01)
        log.keep(lambda _, record: record["kind"] not in (name, f"{name}_test"))

    pending = []  # (batch number, learning rate, loss on the device, whether this rank had clips) since the last
    # keep: reading each loss would make the host wait for every step

    def keep() -> None:
        """The pending losses (the mean over every rank's clips: the sum of the ranks' shares) to the host and the
        log, then a checkpoint (after the log: a crash between the two logs those batches again, with the same
        values, rather than never). A collective under torchrun: every rank calls it after the same batches."""
        if pending:
            sums = torch.stack([share.float() for _, _, share, _ in pending])
            counts = torch.tensor([float(had) for *_, had in pending], device=sums.device)
            if ctx.enabled:
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            # a batch with clips whose loss is not finite diverged: until 2026-12-03 its NaN passed for failed clips
            # and the test stopped on NaN scores with a traceback (the same sums on every rank: all raise together)
            diverged = torch.nonzero((counts > 0) & ~sums.isfinite()).flatten().tolist()
            if diverged:
                number = pending[diverged[0]][0]
                raise SharedError(f"{name}: the loss of batch {number} is {sums[diverged[0]].item()}: the finetuning "
                                  f"diverged; run it again with a lower finetune.lr (this one's: {cfg.lr})")
            values = torch.where(counts > 0, sums, math.nan).tolist()  # NaN where every rank's clips failed
        else:
            values = []
        losses.extend([math.nan] * (done - len(losses)))  # NaN: a batch whose clips all failed
        for (number, lr, *_), value in zip(pending, values):
            losses[number - 1] = value
            if log is not None and not math.isnan(value):
                log.write(name, number, loss=value, lr=lr)
        pending.clear()
        if saved is None:
            return
        ranks, crashed = gather_objects(failures.state(), ctx), gather_objects(dict(train_set.crashed), ctx)
        every_used = gather_objects(used, ctx)
        if not ctx.main:
            return
        if log is not None:
            log.sync()
        saved.save_checkpoint({
            # fc-only: the frozen encoder, BatchNorm statistics included, is the run's (its digest is in the
            # identity): only the fc layer is kept
            "trained": trained.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "batches": done, "losses": losses, "failures": ranks, "threads": torch.get_num_threads(),
            "crashed": {path: why for rank in crashed for path, why in rank.items()},  # files that killed a worker
            "used": sum(every_used),  # every rank's, whatever the number of ranks that resumes
            "log_records": log.records if log is not None else 0,  # what is logged after it a resume logs again
        })  # fmt: skip

    def epoch_loss(epoch: int) -> float | None:
        return _mean(losses[epoch * per_epoch : (epoch + 1) * per_epoch])

    try:
        for epoch in range(done // per_epoch, cfg.epochs):
            model.train()
            if mode == "fc":
                encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too
            sampler.set_epoch(epoch)
            sampler.set_start((done - epoch * per_epoch) * per_rank)
            desc = f"{name} epoch {epoch + 1}/{cfg.epochs}"
            left = per_epoch - (done - epoch * per_epoch)
            batches = itertools.islice(itertools.chain(Surviving(loader), itertools.repeat(None)), left)
            # a resumed epoch's bar starts at the batches it did before (as pretraining's): until 2026-12-03 at 0 of
            # those left, which read as a shorter epoch
            bar = progress_bar(batches, desc=desc, initial=per_epoch - left, total=per_epoch, unit="batch",
                               leave=False, show=ctx.main)  # fmt: skip
            for batch in bar:
                done += 1
                if batch is not None:
                    failures.update(batch)
                if done % FAILURE_CHECK_BATCHES == 0:  # every rank takes the same batches
                    judge_failures(failures, ctx)
                had = batch is not None and bool(batch["index"].numel())
                if had:
                    used += torch.bincount(batch["index"], minlength=len(used))
                # a step for every batch, even one whose clips all failed (its gradient 0: momentum and weight decay
                # go on), so that one process and any number of ranks step alike, and the schedule with them
                lr = schedule.get_last_lr()[0]
                share = _train_step(net, encoder, mode, place, batch if had else None, optimizer, empty, ctx)
                pending.append((done, lr, share, had))
                schedule.step()
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done % per_epoch:
                    keep()
            judge_failures(failures, ctx, going=False)
            keep()
            if ctx.main:  # a line per epoch that stays (the batch bar goes)
                mean = epoch_loss(epoch)
                print(f"{desc}: loss " + (f"{mean:.4f}" if mean is not None else "- (every clip failed)"))
    except TooManyFailures:  # under torchrun raised on every rank at once (judge_failures): one line for all
        raise TooManyFailures(failures_line(failures, ctx)) from None
    del loader  # its persistent workers stop before the test's start

    tested = _test(model, place, test, test_rows, test_items, classes, data_cfg, cfg, workers, ctx)
    every_failure, every_used = gather_objects(failures.state(), ctx), gather_objects(used, ctx)
    if not ctx.main:
        return None
    scores, labels, names, groups, test_failures, scored = tested
    if not len(scores):  # there were test files (checked above): each failed
        path, reason = test_failures.failures[0]
        raise UserError(f"no test clip could be read ({number(len(test_failures.files), 'file')} failed; the first: "
                        f"{path}: {reason})")  # fmt: skip
    video_scores, video_labels, _ = average_by_group(scores, groups, labels)
    # per class, the videos top1 counts: each one's label as given (a class with no readable training video keeps
    # its name) and the class of its highest mean score, the lower index on a tie as topk_accuracy breaks them
    video_names = names[group_index(groups)[1]]
    by_class = class_results(video_names, np.asarray(classes)[video_scores.argmax(axis=1)])
    untrained = video_names[video_labels < 0]  # test videos of a class with no readable training video: never right
    trained_on = sum(every_used)
    kept_clips = {train.path(row): int(trained_on[row]) for row in torch.nonzero(trained_on).flatten().tolist()}
    kept_clips.update(scored)  # a file is in one split only (_check_apart)
    clips_failed = FailureLog(max_fraction=1.0)  # every rank's failed clips of each file, training and test
    clips_failed.merge([*every_failure, test_failures.state()])
    lost, partly = [], []  # until 2026-12-03 a file with some of its clips used was listed as skipped too
    for path, (count, reason) in clips_failed.files.items():
        if kept_clips.get(path):
            partly.append({"path": path, "clips_failed": count, "clips_kept": kept_clips[path], "reason": reason})
        else:
            lost.append((path, reason))
    trained_losses = [x for x in losses if not math.isnan(x)]
    result = {
        "mode": mode, "encoder": encoder_name, "device": str(place.device), "bf16": place.bf16,
        **({"crops_on": "device" if place.device_crops else "workers"} if modality == "video" else
           {"logmel_on": "device" if place.device_logmel else "workers"}),
        "ranks": ctx.world_size, "classes": len(classes), "n_train": len(train),
        "n_test": len({test_items[i].group for i in test_rows}),  # readable test videos: groups, as scored below
        "n_test_scored": len(video_labels),  # test videos (groups) with a clip read: those the accuracies count
        "top1": topk_accuracy(video_scores, video_labels, 1), "top5": topk_accuracy(video_scores, video_labels, 5),
        "clip_top1": topk_accuracy(scores, labels, 1), **by_class, "untrained": len(untrained),
        "untrained_classes": np.unique(untrained).tolist(), "first_loss": _mean(trained_losses[:1]),
        "last_loss": _mean(trained_losses[-5:]),
        "epoch_losses": [epoch_loss(e) for e in range(cfg.epochs)], "source": source.kind,
        "clip": config_to_dict(data_cfg.clip),
        "skipped": [*({"path": p, "reason": r} for p, r in [*skipped, *test_skipped, *lost]), *not_found(items)],
        "partly_kept": partly, "cut": cut,
        **({"made_with": made_with} if made_with is not None else {}),
    }  # fmt: skip
    if log is not None:
        log.write(f"{name}_test", done, top1=result["top1"], top5=result["top5"], clip_top1=result["clip_top1"])
    if saved is not None:
        saved.save_result(result)
    return result


def finetune_made_with(source: Source, encoder_name: str, items: list[Item], mode: str, cfg: FinetuneConfig,
                       work: Path, seed: int = 0, ctx: Dist | None = None) -> str:  # fmt: skip
    """The digest of what a finetuning of ``items`` with ``source`` (xdc.evaluation.sources) computes, as its
    result records it (``made_with``): its kept progress's identity, the items' files as probed included (probed
    as :func:`finetune` probes them, into ``work``). Under torchrun a collective, as the probes are."""
    *_, files = _probed(items, work, source.modality, ctx or Dist())
    return _digest(_identity(source, encoder_name, items, mode, cfg, seed, files))


def check_settings(mode: str, cfg: FinetuneConfig, ctx: Dist) -> None:
    """A UserError for a mode or batch size that cannot be finetuned with on ``ctx``'s ranks, whatever the items."""
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, not {mode!r}")
    if cfg.batch_size % ctx.world_size:  # else the ranks' shares would make another batch, and resumes drift
        raise UserError(f"finetune.batch_size ({cfg.batch_size}) must be a multiple of the {ctx.world_size} ranks")


def check_items(items: list[Item]) -> None:
    """A UserError for items that cannot be finetuned on and tested, whatever their files hold: before any probe
    (an empty list of files is not the user's mistake) and before training."""
    train_items, test_items = split_items(items, "train"), split_items(items, "test")
    if not train_items or not test_items:
        found = sorted({item.split or "none" for item in items})
        raise UserError(f"finetuning needs items in split 'train' and in split 'test' (their split column); "
                        f"the dataset's splits: {', '.join(found) or 'no items'}")  # fmt: skip
    _check_groups(test_items)  # the test averages each group's scores into one prediction
    _check_apart(train_items, test_items)
    refuse_repeats(items)  # load_dataset's items pass; a list made in Python may not


def _probed(items: list[Item], work: Path, modality: str, ctx: Dist):
    """The items of each split checked and probed (into ``work``; once, the ranks sharing out the probes, and handed
    to every rank): the train manifest and its skipped items, the test manifest, its rows' items and its skipped
    items, both splits' windows cut at their file's end, and the digest of both splits' files as probed (xdc
    extract's: a file changed in place changes it)."""
    check_items(items)
    train_items, test_items = split_items(items, "train"), split_items(items, "test")
    train, _, skipped, train_cut, train_files = probed_items(train_items, work / "train.probe.csv", modality, ctx)
    test, test_rows, test_skipped, test_cut, test_files = probed_items(test_items, work / "test.probe.csv", modality,
                                                                       ctx)  # fmt: skip
    for split, manifest, unread in (("train", train, skipped), ("test", test, test_skipped)):
        if len(manifest) == 0:  # every item skipped (a video encoder on an audio dataset): said, with why
            path, reason = unread[0]
            raise UserError(f"none of the {len(unread)} {split} items has a readable {modality} stream (the first: "
                            f"{path}: {reason})")  # fmt: skip
    if len(train.classes) < 2:  # here, where finetune_made_with probes too: before a finished one's logs go
        raise UserError(f"finetuning needs >= 2 classes among the readable training items, found {len(train.classes)}")
    return train, skipped, test, test_rows, test_skipped, [*train_cut, *test_cut], [train_files, test_files]


def _identity(source: Source, encoder_name: str, items: list[Item], mode: str, cfg: FinetuneConfig, seed: int,
              files: list[str]) -> str:  # fmt: skip
    """What kept progress is tied to: the files as probed too, so that a file changed in place (re-encoded or
    replaced under its name) starts the finetuning over rather than mix the old content's training with the new
    (until 2026-12-02 it went on). NOT_COMPUTED changes how often progress is kept, not what is computed: a resume
    may change it."""
    computed = {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_COMPUTED}
    return identity(source.weights_digest(), source.cfg, items, encoder=encoder_name, mode=mode, finetune=computed,
                    seed=seed, files=files)  # fmt: skip


def _digest(made: str) -> str:
    return hashlib.sha256(made.encode("utf-8", "surrogateescape")).hexdigest()


def _mean(values: list[float]) -> float | None:
    """The mean of the values that are not NaN, or None."""
    values = [x for x in values if not math.isnan(x)]
    return float(np.mean(values)) if values else None


def _check_groups(items: list[Item]) -> None:
    """The test averages the scores of each group's clips into one prediction: its items must share a label."""
    labels: dict[str, str] = {}
    for item in items:
        if labels.setdefault(item.group, item.label) != item.label:
            raise UserError(f"test items of group {item.group} have different labels ({labels[item.group]!r} and "
                            f"{item.label!r}), but one prediction is made per group: give each its own group "
                            "(the group column)")  # fmt: skip


def _check_apart(train: list[Item], test: list[Item]) -> None:
    """No video (group) both trained and tested on: a file in both splits (a table's mistake) would be scored as
    unseen (until 2026-12-02), as eval linear now refuses too."""
    shared = sorted({item.group for item in train} & {item.group for item in test})
    if shared:
        raise UserError(f"{len(shared)} test videos (groups) are in split 'train' too, e.g. {shared[0]}: they would be "
                        "both trained and tested on (different parts of one file: give each its own group, the group "
                        "column)")  # fmt: skip


def _train_step(net, encoder, mode, place, batch: dict | None, optimizer, empty: torch.Tensor, ctx: Dist
                ) -> torch.Tensor:  # fmt: skip
    """One SGD step on a batch, whose loss is the mean over the clips of every rank; this rank's share of it (its
    clips' losses over all ranks' clips), on the device. Without clips (``batch`` None: they all failed, or under
    DDP the epoch's draws ran out one step early on this rank) it goes through with ``empty`` inputs and a share
    of 0, and under DDP takes part in the gradient all-reduce. Each rank's loss is its share times the ranks, as
    DDP averages the gradients: the mean over the clips of all ranks, as one process takes it, however the failed
    clips fall (a mean of each rank's mean weighted a rank's clips by how few it had, until 2026-12-01)."""
    if batch is not None:
        clips, labels = place.inputs(batch), batch["label"].to(place.device, non_blocking=True)
    else:
        clips, labels = empty, torch.zeros(0, dtype=torch.long, device=place.device)
    with place.autocast():
        if mode == "fc":
            with torch.no_grad():
                features = encoder(clips)
            logits = net(features)
        else:
            logits = net(clips)
    count = torch.tensor(float(len(labels)), device=place.device)
    if ctx.enabled:
        dist.all_reduce(count)
    share = F.cross_entropy(logits.float(), labels, reduction="sum") / count.clamp(min=1.0)
    optimizer.zero_grad(set_to_none=True)
    (share * ctx.world_size).backward()
    optimizer.step()
    return share.detach()


@torch.no_grad()
def _test(model, place, test, test_rows, test_items, classes, data_cfg, cfg, workers, ctx):
    """Clip softmax scores, labels (train class index, -1 if unseen), label names and groups of every test clip
    read, in the order of the test clips, the FailureLog of the test clips that failed, and the clips scored of each
    file (path -> count); under torchrun each rank scores every W-th clip and rank 0 gets them all (the others
    None), every rank with rank 0's BatchNorm statistics: one model scores them all, whatever the number of ranks."""
    broadcast_buffers(model, ctx)
    model.eval()
    index = {c: i for i, c in enumerate(classes)}
    modality = place.modality
    dataset = EvalClips(test, data_cfg, clips=cfg.test_clips, modalities=(modality,), raw_video=True,
                        device_logmel=place.device_logmel)  # fmt: skip
    if ctx.enabled:
        dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    scores, rows, clips = ToHost(), [], []  # scores: one wait for the device per 32 batches
    failures = FailureLog(max_fraction=1.0)  # recorded, never a reason to stop: the result says what was scored
    for batch in Surviving(make_loader(dataset, cfg.batch_size, workers, pin_memory=place.pin_memory)):
        failures.update(batch)
        if batch["index"].numel() == 0:
            continue
        with place.autocast():
            logits = model(place.inputs(batch))
        scores.add(F.softmax(logits.float(), dim=1))
        rows.append(batch["index"].numpy())
        clips.append(batch["clip"].numpy())
    mine = (scores.result(torch.empty(0, len(classes))).numpy(), np.concatenate(rows or [np.zeros(0, np.int64)]),
            np.concatenate(clips or [np.zeros(0, np.int64)]))  # fmt: skip
    ranks, failed = gather_objects(mine, ctx), gather_objects(failures.state(), ctx)
    if not ctx.main:
        return None
    scores, rows, clips = (np.concatenate(parts) for parts in zip(*ranks))
    order = np.lexsort((clips, rows))
    scores, rows = scores[order], rows[order]
    items = [test_items[test_rows[row]] for row in rows]
    labels = np.array([index.get(item.label, -1) for item in items], dtype=np.int64)
    names, groups = np.array([item.label for item in items]), np.array([item.group for item in items])
    every = FailureLog(max_fraction=1.0)
    every.merge(failed)
    paths, counts = np.unique([item.path for item in items], return_counts=True)
    return scores, labels, names, groups, every, dict(zip(paths.tolist(), counts.tolist()))
