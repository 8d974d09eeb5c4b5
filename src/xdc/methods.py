"""The XDC family as data: which features are clustered, and which label set trains which head of which encoder.

One training loop (xdc.training.pretrain) serves every method; a method only names
- its encoders (name -> modality; same-modality XDC has two encoders of one modality, initialised differently),
- its label sets (name -> the encoders whose features are concatenated and clustered, or the manifest's labels),
- its heads (encoder, label set): a fresh linear layer on that encoder, trained with cross-entropy on that set.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdc.errors import UserError

MANIFEST_LABELS = "labels"  # a label set that comes from the manifest instead of clustering
CLUSTERING_SETTINGS = tuple(f"train.{key}" for key in (
    "k", "assign", "pca_dim", "kmeans_iters", "cluster_on", "collapse_fraction", "extract_cache"))
TRAINING_SETTINGS = tuple(f"train.{key}" for key in (
    "rounds", "epochs", "epoch_size", "batch_size", "accumulate", "lr", "momentum", "weight_decay", "recluster",
    "holdout_fraction", "plateau_delta", "checkpoint_every"))


@dataclass(frozen=True)
class Method:
    name: str
    encoders: dict[str, str]  # encoder name -> modality ("video" | "audio")
    label_sets: dict[str, tuple[str, ...]]  # label set -> encoders clustered together ((): manifest labels)
    heads: tuple[tuple[str, str], ...]  # (encoder, label set) pairs
    description: str

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in ("video", "audio") if m in self.encoders.values())

    @property
    def trains(self) -> bool:
        return bool(self.heads)

    @property
    def supervised(self) -> bool:
        return MANIFEST_LABELS in self.label_sets

    @property
    def clustered(self) -> list[str]:
        """The encoders whose features some label set clusters (each round extracts those), sorted."""
        return sorted({e for encoders in self.label_sets.values() for e in encoders})

    @property
    def unread_settings(self) -> tuple[str, ...]:
        """The train.* settings this method's runs do not read: those of clustering where it clusters nothing, and
        those of training too where it trains nothing."""
        unread = () if self.clusters else CLUSTERING_SETTINGS
        return unread if self.trains else unread + TRAINING_SETTINGS

    @property
    def clusters(self) -> bool:
        """Trains on pseudo-labels from clustering (not the manifest's labels, and not "no training")."""
        return self.trains and not self.supervised


_AV = {"video": "video", "audio": "audio"}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sdc-video", {"video": "video"}, {"video": ("video",)}, (("video", "video"),),
               "single-modality DeepCluster on video"),
        Method("sdc-audio", {"audio": "audio"}, {"audio": ("audio",)}, (("audio", "audio"),),
               "single-modality DeepCluster on audio"),
        Method("mdc", _AV, {"video": ("video",), "audio": ("audio",)},
               (("video", "video"), ("video", "audio"), ("audio", "audio"), ("audio", "video")),
               "multi-head: each encoder predicts both modalities' clusters"),
        Method("cdc", _AV, {"joint": ("video", "audio")}, (("video", "joint"), ("audio", "joint")),
               "both encoders predict the clusters of the concatenated features"),
        Method("xdc", _AV, {"video": ("video",), "audio": ("audio",)}, (("video", "audio"), ("audio", "video")),
               "cross-modal: video learns the audio clusters, audio the video clusters"),
        Method("xdc-video-video", {"video": "video", "video2": "video"}, {"video": ("video",), "video2": ("video2",)},
               (("video", "video2"), ("video2", "video")), "same-modality XDC ablation: two video encoders"),
        Method("xdc-audio-audio", {"audio": "audio", "audio2": "audio"}, {"audio": ("audio",), "audio2": ("audio2",)},
               (("audio", "audio2"), ("audio2", "audio")), "same-modality XDC ablation: two audio encoders"),
        Method("scratch", _AV, {}, (), "no pretraining: random weights, the lower bound"),
        Method("supervised", _AV, {MANIFEST_LABELS: ()}, (("video", MANIFEST_LABELS), ("audio", MANIFEST_LABELS)),
               "cross-entropy on the manifest's labels, the upper bound"),
    )
}  # fmt: skip


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
