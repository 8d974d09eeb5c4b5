"""Clip transforms: decoded arrays in, model-ready tensors out.

Video: uint8 T x H x W x 3 -> float C x T x H x W, normalised like the released XDC weights. One set of random
parameters per clip (all frames get the same crop and flip), which torchvision's v2 transforms give for a Video.
Audio: float waveform -> 1 x n_mels x frames log-mel, with optional gain and SpecAugment-style masking.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.transforms as AT
from torchvision import tv_tensors
from torchvision.transforms import v2

from xdc.config import DataConfig
from xdc.data.audio import LogMel

# Input normalisation of the released XDC R(2+1)D-18 weights (SPEC).
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)


class VideoTransform:
    def __init__(self, cfg: DataConfig, train: bool):
        aug, crop = cfg.augment, cfg.clip.crop
        if train:
            geometry = [v2.RandomShortestSize(min_size=list(range(aug.scale_min, aug.scale_max + 1))), v2.RandomCrop(crop)]
            if aug.flip:
                geometry.append(v2.RandomHorizontalFlip())
        else:
            geometry = [v2.Resize(aug.scale_min), v2.CenterCrop(crop)]
        self.pipeline = v2.Compose(
            [*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(VIDEO_MEAN, VIDEO_STD)]
        )

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        video = tv_tensors.Video(torch.from_numpy(frames).permute(0, 3, 1, 2))  # T x C x H x W
        return self.pipeline(video).permute(1, 0, 2, 3).contiguous()  # C x T x H x W


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
