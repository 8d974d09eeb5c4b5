"""``xdc eval finetune``: train a linear classifier on top of a pretrained encoder, either with the encoder
frozen (fc-only) or updating everything (full finetuning), and report multi-clip video-level test accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xdc.config import FinetuneConfig
from xdc.data.datasets import EvalClips, TrainClips, make_loader
from xdc.data.failures import FailureLog
from xdc.data.worker_deaths import Surviving
from xdc.errors import UserError
from xdc.evaluation.adapters import Item, split_items
from xdc.evaluation.device import EvalDevice, pick_device
from xdc.evaluation.extract import items_to_manifest, load_run_encoder
from xdc.evaluation.metrics import average_by_group, topk_accuracy
from xdc.progress import progress_bar
from xdc.training.to_host import ToHost

MODES = ("full", "fc")


def finetune(
    run: Path, encoder_name: str, items: list[Item], mode: str, cfg: FinetuneConfig, work: Path, seed: int = 0,
    workers: int | None = None, device: str = "auto",
) -> dict:  # fmt: skip
    """Train on the items of split 'train', test on split 'test', on ``device`` (xdc.evaluation.device); returns
    the numbers and the settings."""
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, not {mode!r}")
    encoder, modality, run_cfg = load_run_encoder(run, encoder_name)
    data_cfg = run_cfg.data
    train_items, test_items = split_items(items, "train"), split_items(items, "test")
    train, _, skipped = items_to_manifest(train_items, work / "train.probe.csv", modality)
    test, test_rows, test_skipped = items_to_manifest(test_items, work / "test.probe.csv", modality)
    classes = train.classes
    if len(classes) < 2 or len(test) == 0:
        raise UserError(f"finetuning needs >= 2 classes in 'train' and a 'test' split ({len(classes)}, {len(test)})")

    place = EvalDevice(pick_device(device), run_cfg, modality, training_clips=True)
    workers = data_cfg.workers_on(place.device.type) if workers is None else workers
    torch.manual_seed(seed)
    model = nn.Sequential(place.module(encoder), nn.Linear(encoder.feature_dim, len(classes)).to(place.device))
    trained = model if mode == "full" else model[1]
    optimizer = torch.optim.SGD(trained.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_set = TrainClips(train, data_cfg, modalities=(modality,), raw_video=True,
                           device_crops=place.device_crops, device_logmel=place.device_logmel)  # fmt: skip
    steps = cfg.epochs * math.ceil(len(train_set) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cfg.schedule == "cosine" else (lambda s: 1.0)
    )  # fmt: skip
    failures = FailureLog(data_cfg.max_fail_fraction)
    losses = []  # on the device: reading each loss would make the host wait for every step
    for epoch in range(cfg.epochs):
        model.train()
        if mode == "fc":
            encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too
        loader = make_loader(train_set, cfg.batch_size, workers, shuffle=True, seed=seed * 1000 + epoch,
                             pin_memory=place.pin_memory)  # fmt: skip
        for batch in progress_bar(Surviving(loader), desc=f"finetune epoch {epoch}", unit="batch", leave=False):
            failures.update(batch)
            if batch["index"].numel() == 0:
                continue
            clips = place.inputs(batch[modality], batch.get("video_grid"), train=True)
            labels = batch["label"].to(place.device, non_blocking=True)
            with place.autocast():
                if mode == "fc":
                    with torch.no_grad():
                        features = encoder(clips)
                    logits = model[1](features)
                else:
                    logits = model(clips)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
    losses = torch.stack(losses).tolist() if losses else []

    scores, labels, groups = _test(model, place, test, test_rows, test_items, classes, data_cfg, cfg, workers)
    video_scores, video_labels, _ = average_by_group(scores, groups, labels)
    return {
        "mode": mode, "encoder": encoder_name, "device": str(place.device), "bf16": place.bf16,
        **({"crops_on": "device" if place.device_crops else "workers"} if modality == "video" else
           {"logmel_on": "device" if place.device_logmel else "workers"}),
        "classes": len(classes), "n_train": len(train), "n_test": len(test),
        "top1": topk_accuracy(video_scores, video_labels, 1), "top5": topk_accuracy(video_scores, video_labels, 5),
        "clip_top1": topk_accuracy(scores, labels, 1), "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-5:])) if losses else None,
        "skipped": [{"path": p, "reason": r} for p, r in [*skipped, *test_skipped, *failures.failures]],
    }  # fmt: skip


@torch.no_grad()
def _test(model, place, test, test_rows, test_items, classes, data_cfg, cfg, workers):
    """Clip softmax scores, labels (train class index, -1 if unseen) and groups of every test clip."""
    model.eval()
    index = {c: i for i, c in enumerate(classes)}
    modality = place.modality
    dataset = EvalClips(test, data_cfg, clips=cfg.test_clips, modalities=(modality,), raw_video=True,
                        device_logmel=place.device_logmel)  # fmt: skip
    scores, labels, groups = ToHost(), [], []  # scores: one wait for the device per 32 batches
    for batch in Surviving(make_loader(dataset, cfg.batch_size, workers, pin_memory=place.pin_memory)):
        if batch["index"].numel() == 0:
            continue
        with place.autocast():
            logits = model(place.inputs(batch[modality]))
        scores.add(F.softmax(logits.float(), dim=1))
        for row in batch["index"].tolist():
            item = test_items[test_rows[row]]
            labels.append(index.get(item.label, -1))
            groups.append(item.group)
    return scores.result(torch.empty(0, len(classes))).numpy(), np.array(labels), np.array(groups)
