"""Clip transforms: decoded arrays in, model-ready tensors out.

Video: uint8 T x H x W x 3 -> float C x T x H x W, normalised like the released XDC weights (or, with
``normalize=False``, the uint8 crops, to be normalised by :class:`NormalizeVideo` where the batch lands). One set
of random parameters per clip: all frames get the same crop and flip.
Audio: float waveform -> 1 x n_mels x frames log-mel, with optional gain and SpecAugment-style masking.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.transforms as AT
from torchvision.transforms.v2 import functional as F

from xdc.config import DataConfig
from xdc.data.audio import LogMel

# Input normalisation of the released XDC R(2+1)D-18 weights (SPEC).
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)


class VideoTransform:
    """Training: scale jitter (a random short side in [scale_min, scale_max]), a random crop and a random flip;
    evaluation: the short side to scale_min and a centre crop. Then float in [0, 1], normalised, C x T x H x W.

    The parameters, drawn from torch's global RNG, and the arithmetic are those of torchvision's v2 pipeline
    (RandomShortestSize, RandomCrop, RandomHorizontalFlip, ToDtype, Normalize; tests/test_transforms.py compares
    them; one rounding fix, below), but on plain tensors: the v2 classes' tv_tensor wrapping doubled the cost of
    a clip, which loader workers pay for every training clip.
    """

    def __init__(self, cfg: DataConfig, train: bool, normalize: bool = True):
        aug = cfg.augment
        self.train, self.crop, self.flip = train, cfg.clip.crop, aug.flip
        self.sizes = list(range(aug.scale_min, aug.scale_max + 1))
        self.normalize = NormalizeVideo() if normalize else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T x C x H x W, a view: resize reads channels-last fast
        if self.train:
            x = self._random_geometry(x)
        else:
            x = F.center_crop(F.resize(x, [self.sizes[0]], antialias=True), [self.crop])
        x = x.permute(1, 0, 2, 3)  # C x T x H x W
        return self.normalize(x) if self.normalize is not None else x.contiguous()

    def _random_geometry(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        short = self.sizes[int(torch.randint(len(self.sizes), ()))]
        r = short / min(h, w)
        # The short side exactly `short` (v2 computes int(side * r), which can come out one pixel short: 125 for
        # 126 on a 360p frame, or a failed crop when scale_min equals the crop); the long side as v2 does.
        h, w = (short, max(short, int(w * r))) if h <= w else (max(short, int(h * r)), short)
        x = F.resize(x, [h, w], antialias=True)  # both sides >= crop: DataConfig checks scale_min >= crop
        top = int(torch.randint(0, h - self.crop + 1, ())) if h > self.crop else 0
        left = int(torch.randint(0, w - self.crop + 1, ())) if w > self.crop else 0
        x = x[..., top : top + self.crop, left : left + self.crop]
        if self.flip and torch.rand(1) < 0.5:
            x = x.flip(-1)
        return x


class NormalizeVideo:
    """uint8 clips (C x T x H x W, or batches of them) -> float32, scaled to [0, 1] and normalised with the
    released XDC weights' mean and std, on ``device``: the training loop sends uint8 batches (a quarter of the bytes through
    worker shared memory, pinned memory and the host-to-device copy) and normalises them on arrival."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(VIDEO_MEAN, device=device).view(3, 1, 1, 1)
        self.std = torch.tensor(VIDEO_STD, device=device).view(3, 1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # contiguous, whatever x's strides
        out.copy_(x)
        return out.mul_(1.0 / 255).sub_(self.mean).div_(self.std)


class AudioTransform:
    def __init__(self, cfg: DataConfig, train: bool):
        self.logmel = LogMel(cfg.mel, cfg.clip.sample_rate)
        aug = cfg.augment
        self.gain_db = aug.gain_db if train else 0.0
        masks = []
        if train and aug.freq_mask:
            masks.append(AT.FrequencyMasking(aug.freq_mask))
        if train and aug.time_mask:
            masks.append(AT.TimeMasking(aug.time_mask))
        self.masks = torch.nn.Sequential(*masks)

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if self.gain_db:
            x = x * 10 ** ((torch.rand(()) * 2 - 1) * self.gain_db / 20)
        return self.masks(self.logmel(x).unsqueeze(0))  # 1 x n_mels x frames
