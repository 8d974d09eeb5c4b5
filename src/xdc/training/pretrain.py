"""``xdc pretrain``: deep-clustering rounds for every method of the XDC family.

A round, as numbered steps:
  1. extract  - features of every usable video (one fixed clip, eval mode, no augmentation), sharded over ranks
                and gathered in dataset order;
  2. cluster  - per label set of the method: PCA-whiten + L2, k-means (or balanced Sinkhorn) with a new seed, on
                rank 0; labels broadcast; NMI against the previous round and cluster-size statistics logged;
  3. heads    - a fresh linear head per (encoder, label set) with its own optimizer;
  4. train    - epochs of clips drawn uniformly over clusters, cross-entropy against the pseudo-labels, until
                `train.epochs` or (recluster=plateau) until the held-back loss stops improving;
  5. save     - an atomic checkpoint that resumes exactly (also every `train.checkpoint_every` steps).
Which features are clustered and which labels train which head is the method's table (xdc.methods).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from tqdm import tqdm

from xdc.clustering.features import preprocess_features
from xdc.clustering.kmeans import kmeans
from xdc.clustering.metrics import cluster_stats, nmi
from xdc.clustering.sampler import ClusterBalancedSampler
from xdc.clustering.sinkhorn import balanced_assign
from xdc.config import Config, config_to_dict, load_config
from xdc.data.datasets import EvalClips, TrainClips, make_loader
from xdc.data.failures import FailureLog
from xdc.data.manifest import Manifest
from xdc.errors import UserError
from xdc.methods import MANIFEST_LABELS, Method, get_method
from xdc.models.encoders import build_encoder
from xdc.models.heads import LinearHead
from xdc.training import checkpoint
from xdc.training.distributed import Dist, barrier, broadcast_labels, gather_rows
from xdc.training.runlog import RunLog


@dataclass
class Progress:
    """Where a run is; with the weights, optimizers and labels, it is everything a resume needs."""

    round: int = 0
    epoch: int = 0  # epoch within the round
    step: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_holdout: float = math.inf
    bad_epochs: int = 0
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # this round's label sets (empty: not clustered)
    previous: dict[str, np.ndarray] = field(default_factory=dict)  # last round's, for NMI


class EncodersWithHeads(nn.Module):
    """Encoders plus this round's heads, as one module so that DDP sees every parameter."""

    def __init__(self, encoders: nn.ModuleDict, method: Method, feature_dims: dict[str, int], sizes: dict[str, int]):
        super().__init__()
        self.encoders = encoders
        self.method = method
        self.heads = nn.ModuleDict(
            {_key(e, s): LinearHead(feature_dims[e], sizes[s]) for e, s in method.heads}
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        used = {e for e, _ in self.method.heads}
        features = {e: self.encoders[e](inputs[self.method.encoders[e]]) for e in used}
        return {_key(e, s): self.heads[_key(e, s)](features[e]) for e, s in self.method.heads}


def _key(encoder: str, label_set: str) -> str:
    return f"{encoder}__{label_set}"


class Pretrainer:
    def __init__(self, cfg: Config, manifest_path: Path, out: Path, ctx: Dist):
        self.cfg, self.out, self.ctx = cfg, out, ctx
        self.method = get_method(cfg.train.method)
        manifest = Manifest.load(manifest_path)
        modalities = self.method.modalities
        self.train_set = TrainClips(manifest, cfg.data, modalities=modalities)
        self.eval_set = EvalClips(manifest, cfg.data, clips=1, modalities=modalities)
        self.videos = self.train_set.manifest  # after the missing-audio policy: the index space of the run
        if len(self.videos) < cfg.train.k and not self.method.supervised and self.method.trains:
            raise UserError(f"{len(self.videos)} usable videos is fewer than train.k={cfg.train.k} clusters")
        if self.method.supervised and (self.videos.labels < 0).all():
            raise UserError(f"method supervised needs labels in the manifest ({manifest_path} has none)")

        if ctx.main:  # the run's index space: labels/round_*.npz row i is this file's row i
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "videos.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label"])
                for i in range(len(self.videos)):
                    label = self.videos.labels[i]
                    writer.writerow([self.videos.path(i), self.videos.classes[label] if label >= 0 else ""])

        torch.manual_seed(cfg.seed)
        self.encoders = nn.ModuleDict(
            {name: build_encoder(modality, cfg.model) for name, modality in self.method.encoders.items()}
        ).to(ctx.device)
        self.feature_dims = {name: enc.feature_dim for name, enc in self.encoders.items()}
        self.optimizer = self._sgd(self.encoders.parameters())
        self.holdout = self._holdout_mask()
        self.progress = Progress()
        self.model: EncodersWithHeads | None = None
        self.head_optimizer: torch.optim.Optimizer | None = None
        self.failures = FailureLog(cfg.data.max_fail_fraction)
        self.log = RunLog(out, enabled=ctx.main)

    # --- the run ------------------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg.train
        rounds = 1 if self.method.supervised else cfg.rounds
        if not self.method.trains:
            self._finish()
            return
        while self.progress.round < rounds:
            p = self.progress
            times = {}
            if not p.labels:
                t = time.perf_counter()
                features = self._extract()
                times["extract_s"] = time.perf_counter() - t
                t = time.perf_counter()
                p.labels = self._cluster(features)
                times["cluster_s"] = time.perf_counter() - t
                self._new_heads()
                self._save()
            t = time.perf_counter()
            epochs = cfg.epochs * (cfg.rounds if self.method.supervised else 1)
            while p.epoch < epochs:
                self._train_epoch()
                p.epoch, p.step = p.epoch + 1, 0
                if cfg.recluster == "plateau" and self._plateaued():
                    break
                self._save()
            times["train_s"] = time.perf_counter() - t
            self.log.write("round", p.round, **times)
            self._end_round()
        self._finish()

    def _end_round(self) -> None:
        p = self.progress
        if self.ctx.main:
            labels_dir = self.out / "labels"
            labels_dir.mkdir(exist_ok=True)
            np.savez(labels_dir / f"round_{p.round:03d}.npz", **p.labels)
        p.previous = p.labels
        p.labels = {}
        p.round, p.epoch, p.step = p.round + 1, 0, 0
        p.best_holdout, p.bad_epochs = math.inf, 0
        self.model = self.head_optimizer = None
        self._save()

    def _finish(self) -> None:
        if self.ctx.main:
            checkpoint.save_atomic(
                {"method": self.method.name, "encoders": {n: e.state_dict() for n, e in self.encoders.items()},
                 "modalities": dict(self.method.encoders), "config": config_to_dict(self.cfg)},
                self.out / "encoders.pt",
            )  # fmt: skip
            if self.failures.failures:
                self.failures.save(self.out / "skipped.csv")
        self.log.close()

    # --- 1. extract ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def _extract(self) -> dict[str, torch.Tensor]:
        clustered = sorted({e for encoders in self.method.label_sets.values() for e in encoders})
        if not clustered:
            return {}
        self.encoders.eval()
        shard = Subset(self.eval_set, range(self.ctx.rank, len(self.eval_set), self.ctx.world_size))
        loader = make_loader(shard, self._batch_per_rank(), self.cfg.data.workers)
        rows: dict[str, list] = {e: [] for e in clustered}
        indices = []
        for batch in tqdm(loader, desc=f"round {self.progress.round}: extract", disable=not self.ctx.main,
                          leave=False):  # fmt: skip
            self.failures.update(batch)
            if batch["index"].numel() == 0:
                continue
            indices.append(batch["index"])
            for e in clustered:
                modality = self.method.encoders[e]
                rows[e].append(self.encoders[e](batch[modality].to(self.ctx.device)).float().cpu())
        self.encoders.train()
        index = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
        return {
            e: gather_rows(torch.cat(r) if r else torch.empty(0, self.feature_dims[e]), index, len(self.videos), self.ctx)
            for e, r in rows.items()
        }

    # --- 2. cluster ---------------------------------------------------------------------------------------

    def _cluster(self, features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        labels = {}
        for i, (name, encoders) in enumerate(self.method.label_sets.items()):
            if name == MANIFEST_LABELS:
                labels[name] = self.videos.labels.copy()
                continue
            assigned = self._cluster_one(name, encoders, features, seed_offset=i) if self.ctx.main else None
            labels[name] = broadcast_labels(assigned, self.ctx)
        return labels

    def _cluster_one(self, name: str, encoders: tuple[str, ...], features: dict, seed_offset: int) -> np.ndarray:
        cfg, p = self.cfg.train, self.progress
        x = torch.cat([features[e] for e in encoders], dim=1).numpy()
        valid = ~np.isnan(x).any(axis=1)
        if valid.sum() < cfg.k:
            raise UserError(f"only {valid.sum()} videos gave features, fewer than train.k={cfg.k}")
        x = preprocess_features(np.ascontiguousarray(x[valid], dtype=np.float32), dim=cfg.pca_dim)
        assign = balanced_assign if cfg.assign == "sinkhorn" else kmeans
        result = assign(x, cfg.k, seed=self.cluster_seed(seed_offset), iters=cfg.kmeans_iters)
        labels = np.full(len(valid), -1, dtype=np.int64)
        labels[valid] = result.assignments
        stats = cluster_stats(result.assignments, cfg.k, collapse_fraction=cfg.collapse_fraction)
        record = {f"{name}/{k}": v for k, v in stats.to_dict().items() if isinstance(v, (int, float))}
        if name in p.previous:
            both = (labels >= 0) & (p.previous[name] >= 0)
            record[f"{name}/nmi_previous"] = nmi(labels[both], p.previous[name][both])
        record[f"{name}/kmeans_loss"] = float(result.loss)
        self.log.write("cluster", p.round, **record)
        if stats.collapsed:
            print(
                f"WARNING: clustering collapse in round {p.round}, label set {name!r}: one cluster holds "
                f"{stats.largest_fraction:.0%} of the clips ({stats.non_empty} of {cfg.k} clusters non-empty). "
                "Consider train.assign=sinkhorn, a smaller train.k, or a lower train.lr.",
                file=sys.stderr,
            )
        return labels

    def cluster_seed(self, label_set_number: int) -> int:
        """A new k-means seed every round (DeepCluster), reproducible from the run's seed."""
        return (self.cfg.seed * 1_000_003 + self.progress.round * 101 + label_set_number) % (2**31)

    # --- 3. heads -----------------------------------------------------------------------------------------

    def _new_heads(self) -> None:
        torch.manual_seed(self.cfg.seed * 7919 + self.progress.round)  # heads differ per round, reproducibly
        sizes = {name: self._classes(name) for name in self.method.label_sets}
        model = EncodersWithHeads(self.encoders, self.method, self.feature_dims, sizes).to(self.ctx.device)
        self.model = model
        self.head_optimizer = self._sgd(model.heads.parameters())

    def _classes(self, label_set: str) -> int:
        return len(self.videos.classes) if label_set == MANIFEST_LABELS else self.cfg.train.k

    def _sgd(self, params) -> torch.optim.Optimizer:
        t = self.cfg.train
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    # --- 4. train -----------------------------------------------------------------------------------------

    def _sampler(self) -> ClusterBalancedSampler:
        p = self.progress
        sets = sorted({s for _, s in self.method.heads})
        label_sets = [np.where(self.holdout, -1, p.labels[s]) for s in sets]
        sampler = ClusterBalancedSampler(
            label_sets, self.cfg.train.epoch_size or len(self.videos), seed=self.cfg.seed,
            rank=self.ctx.rank, world_size=self.ctx.world_size,
        )  # fmt: skip
        sampler.set_epoch(p.epoch, round=p.round)
        sampler.set_start(p.step * self._batch_per_rank())
        return sampler

    def _train_epoch(self) -> None:
        p, cfg = self.progress, self.cfg.train
        model = DistributedDataParallel(self.model) if self.ctx.enabled else self.model
        model.train()
        loader = make_loader(self.train_set, self._batch_per_rank(), self.cfg.data.workers, sampler=self._sampler())
        bar = tqdm(loader, desc=f"round {p.round} epoch {p.epoch}", disable=not self.ctx.main, leave=False)
        t, clips = time.perf_counter(), 0
        for batch in bar:
            self.failures.update(batch)
            loss, accuracy = self._step(model, batch)
            p.step += 1
            p.global_step += 1
            clips += batch["index"].numel()
            if p.global_step % cfg.log_every == 0:
                rate = clips * self.ctx.world_size / (time.perf_counter() - t)
                self.log.write("step", p.global_step, round=p.round, epoch=p.epoch, loss=loss, clips_per_s=rate,
                               **accuracy)  # fmt: skip
                bar.set_postfix(loss=f"{loss:.3f}")
            if cfg.checkpoint_every and p.global_step % cfg.checkpoint_every == 0:
                self._save()

    def head_targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pseudo-labels each head is trained on for these videos: the routing of the method's table."""
        return {_key(e, s): torch.from_numpy(self.progress.labels[s])[index] for e, s in self.method.heads}

    def _step(self, model, batch: dict) -> tuple[float, dict]:
        self.optimizer.zero_grad(set_to_none=True)
        self.head_optimizer.zero_grad(set_to_none=True)
        index = batch["index"]
        if index.numel() == 0:
            # Every clip of this batch failed. Under DDP the other ranks still wait for this rank's gradients:
            # contribute zeros rather than skipping the step.
            sum(p.sum() * 0.0 for p in self.model.parameters()).backward()
            return 0.0, {}
        parts = [torch.arange(i, len(index), self.cfg.train.accumulate) for i in range(self.cfg.train.accumulate)]
        parts = [part for part in parts if len(part)]
        total, correct = 0.0, {}
        for part in parts:
            inputs = {m: batch[m][part].to(self.ctx.device, non_blocking=True) for m in self.method.modalities}
            logits = model(inputs)
            targets = self.head_targets(index[part])
            losses = []
            for key, y in targets.items():
                y = y.to(self.ctx.device)
                losses.append(F.cross_entropy(logits[key], y, ignore_index=-1))
                correct[key] = correct.get(key, 0.0) + (logits[key].argmax(1) == y).sum().item()
            loss = torch.stack(losses).mean() / len(parts)
            loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.head_optimizer.step()
        return total, {f"acc/{key}": c / len(index) for key, c in correct.items()}

    # --- recluster on plateau ----------------------------------------------------------------------------

    def _holdout_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.videos), dtype=bool)
        if self.cfg.train.recluster == "plateau":
            rng = np.random.default_rng([self.cfg.seed, 17])
            n = max(1, round(self.cfg.train.holdout_fraction * len(self.videos)))
            mask[rng.choice(len(self.videos), n, replace=False)] = True
        return mask

    @torch.no_grad()
    def _plateaued(self) -> bool:
        """Loss of the current heads on the held-back videos' pseudo-labels; True when it stopped improving."""
        p = self.progress
        self.model.eval()
        held = np.flatnonzero(self.holdout)
        shard = Subset(self.eval_set, held[self.ctx.rank :: self.ctx.world_size].tolist())
        total = torch.zeros(2, device=self.ctx.device)  # summed loss, labelled clips
        for batch in make_loader(shard, self._batch_per_rank(), self.cfg.data.workers):
            if batch["index"].numel() == 0:
                continue
            logits = self.model({m: batch[m].to(self.ctx.device) for m in self.method.modalities})
            for e, s in self.method.heads:
                y = torch.from_numpy(p.labels[s])[batch["index"]].to(self.ctx.device)
                total[0] += F.cross_entropy(logits[_key(e, s)], y, ignore_index=-1, reduction="sum")
                total[1] += (y >= 0).sum()
        self.model.train()
        if self.ctx.enabled:
            torch.distributed.all_reduce(total)
        loss = (total[0] / total[1].clamp(min=1)).item()
        self.log.write("holdout", p.global_step, round=p.round, epoch=p.epoch, loss=loss)
        if loss < p.best_holdout * (1 - self.cfg.train.plateau_delta):
            p.best_holdout, p.bad_epochs = loss, 0
            return False
        p.bad_epochs += 1
        return True

    # --- 5. save / resume ---------------------------------------------------------------------------------

    def _batch_per_rank(self) -> int:
        return max(1, self.cfg.train.batch_size // self.ctx.world_size)

    def _save(self) -> None:
        if not self.ctx.main:
            return
        p = self.progress
        state = {
            "method": self.method.name,
            "encoders": self.encoders.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "heads": self.model.heads.state_dict() if self.model is not None else None,
            "head_optimizer": self.head_optimizer.state_dict() if self.head_optimizer is not None else None,
            "progress": {k: getattr(p, k) for k in ("round", "epoch", "step", "global_step", "best_holdout", "bad_epochs")},
            "labels": {k: torch.from_numpy(v) for k, v in p.labels.items()},
            "previous": {k: torch.from_numpy(v) for k, v in p.previous.items()},
            "torch_rng": torch.get_rng_state(),
        }
        checkpoint.save_atomic(state, self.out / "checkpoints" / "last.pt")

    def resume(self) -> None:
        path = self.out / "checkpoints" / "last.pt"
        state = checkpoint.load(path)
        if state["method"] != self.method.name:
            raise UserError(f"{path} is a {state['method']} run, not {self.method.name}")
        self.encoders.load_state_dict(state["encoders"])
        self.optimizer.load_state_dict(state["optimizer"])
        p = self.progress
        for k, v in state["progress"].items():
            setattr(p, k, v)
        p.labels = {k: v.numpy() for k, v in state["labels"].items()}
        p.previous = {k: v.numpy() for k, v in state["previous"].items()}
        if state["heads"] is not None:
            self._new_heads()
            self.model.heads.load_state_dict(state["heads"])
            self.head_optimizer.load_state_dict(state["head_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        barrier(self.ctx)


def pretrain(cfg: Config, manifest: Path, out: Path, resume: bool, ctx: Dist) -> Path:
    """Run (or resume) a pretraining run in ``out``; returns the path of the final encoders."""
    out = Path(out)
    last = out / "checkpoints" / "last.pt"
    if resume:
        if not last.exists():
            raise UserError(f"nothing to resume in {out} (no checkpoints/last.pt)")
        cfg = load_config(out / "config.yaml")  # a resumed run keeps the configuration it started with
    elif last.exists() or (out / "encoders.pt").exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    barrier(ctx)
    trainer = Pretrainer(cfg, manifest, out, ctx)
    if resume:
        trainer.resume()
    trainer.run()
    return out / "encoders.pt"

