"""Clip transforms: decoded arrays in, model-ready tensors out.

Video: uint8 T x H x W x 3 -> float C x T x H x W, normalised like the released XDC weights (or, with
``normalize=False``, the uint8 crops, to be normalised by :class:`NormalizeVideo` where the batch lands). One set
of random parameters per clip: all frames get the same crop and flip. A training transform can also leave the
geometry to the device (:meth:`VideoTransform.plan` in the loader's workers, :class:`DeviceCrops` on a batch).
Audio: float waveform -> 1 x n_mels x frames log-mel, with optional gain and SpecAugment-style masking; a
transform can also leave the log-mel (and a training one the masks) to the device (:class:`DeviceLogMel` on a
batch).
"""

from __future__ import annotations

import math
import platform

import numpy as np
import torch
import torch.nn.functional as F_nn

from xdc.config import AugmentConfig, DataConfig
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
    a clip, which loader workers pay for every training clip. Nor does it import torchvision, whose import (1.1 s
    on the 2-core CPU, half of a worker's imports) a loader worker started by spawn pays at every loader's start.
    """

    def __init__(self, cfg: DataConfig, train: bool, normalize: bool = True):
        aug = cfg.augment
        self.train, self.crop, self.flip = train, cfg.clip.crop, aug.flip
        self.sizes = list(range(aug.scale_min, aug.scale_max + 1))
        self.normalize = NormalizeVideo() if normalize else None
        self.part = self.crop + 2  # rows and columns of plan()'s parts: (crop - 1) x d + 2 at most, d <= 1

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T x C x H x W, a view: resize reads channels-last fast
        if self.train:
            h, w, top, left, flip = self._draw(*x.shape[-2:])
            x = _resize(x, h, w)  # both sides >= crop: DataConfig checks scale_min >= crop
            x = x[..., top : top + self.crop, left : left + self.crop]
            if flip:
                x = x.flip(-1)
        else:
            x = _centre_crop(_resize_short_side(x, self.sizes[0]), self.crop)
        x = x.permute(1, 0, 2, 3)  # C x T x H x W
        return self.normalize(x) if self.normalize is not None else x.contiguous()

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int, bool]:
        """A training clip's random geometry for frames of h x w: the resized size, the crop's top left corner
        in it, and whether to flip."""
        short = self.sizes[int(torch.randint(len(self.sizes), ()))]
        r = short / min(h, w)
        # The short side exactly `short` (v2 computes int(side * r), which can come out one pixel short: 125 for
        # 126 on a 360p frame, or a failed crop when scale_min equals the crop); the long side as v2 does.
        h, w = (short, max(short, int(w * r))) if h <= w else (max(short, int(h * r)), short)
        top = int(torch.randint(0, h - self.crop + 1, ())) if h > self.crop else 0
        left = int(torch.randint(0, w - self.crop + 1, ())) if w > self.crop else 0
        return h, w, top, left, bool(self.flip and torch.rand(1) < 0.5)

    def plan(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A training clip's geometry, drawn as ``__call__`` draws it, left to :class:`DeviceCrops`: the part of
        the frames that the crop samples, uint8 T x (crop + 2) x (crop + 2) x 3 (edge pixels repeated beyond the
        frame), and the sampling grid, float64 (y0, dy, x0, dx): output row i samples row y0 + i dy of that part,
        column j column x0 + j dx (dx < 0: flipped). Only for frames that the resize enlarges (short side <=
        scale_min, as data.clip.decode_short_side makes them; :attr:`DataConfig.device_crops_possible`): there
        torchvision's antialiased resize is bilinear interpolation with edge pixels repeated, which
        :class:`DeviceCrops` computes on a whole batch, and the loader's worker does no resize."""
        fh, fw = frames.shape[1:3]
        if min(fh, fw) > self.sizes[0]:
            raise ValueError(f"frames of {fh} x {fw} would be shrunk: plan() is for frames the resize enlarges")
        h, w, top, left, flip = self._draw(fh, fw)
        # torchvision's sample point of output pixel i: (i + 0.5) x in / out - 0.5, in input pixels
        dy, dx = fh / h, fw / w
        y, x = (top + 0.5) * dy - 0.5, (left + 0.5) * dx - 0.5
        if flip:  # output column j is the crop's column crop - 1 - j
            x, dx = x + (self.crop - 1) * dx, -dx
        y0, x0 = max(0, math.floor(y)), max(0, math.floor(min(x, x + (self.crop - 1) * dx)))
        size = self.part
        part = frames[:, y0 : y0 + size, x0 : x0 + size]
        if part.shape[1:3] != (size, size):  # at the frame's bottom or right edge
            part = np.pad(part, ((0, 0), (0, size - part.shape[1]), (0, size - part.shape[2]), (0, 0)), mode="edge")
        grid = torch.tensor([y - y0, dy, x - x0, dx], dtype=torch.float64)
        return torch.from_numpy(np.ascontiguousarray(part)), grid


def _resize(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Frames (... x C x H x W) resized to h x w as torchvision v2's antialiased bilinear ``resize``: uint8 frames
    as they are where the CPU has the fast uint8 kernel that torchvision picks (AVX2 or wider, or ARM), else in
    float32, rounded back."""
    if tuple(frames.shape[-2:]) == (h, w):
        return frames
    capability, machine = torch.backends.cpu.get_cpu_capability(), platform.machine()
    fast_uint8 = capability in ("AVX2", "AVX512") or machine in ("aarch64", "arm64")
    native = frames.dtype in (torch.float32, torch.float64) or (
        frames.dtype == torch.uint8 and frames.device.type == "cpu" and fast_uint8
    )
    x = frames.reshape(-1, *frames.shape[-3:])
    x = F_nn.interpolate(x if native else x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if not native:
        x = (x if frames.dtype.is_floating_point else x.round_()).to(frames.dtype)
    return x.reshape(*frames.shape[:-2], h, w)


def _resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """The short side to ``short`` and the long one to int(short x long / short side), as torchvision's."""
    fh, fw = frames.shape[-2:]
    return _resize(frames, short, int(short * fw / fh)) if fh <= fw else _resize(frames, int(short * fh / fw), short)


def _centre_crop(frames: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre crop x crop of frames at least that large, its corner placed as torchvision's."""
    top, left = (int(round((side - crop) / 2.0)) for side in frames.shape[-2:])
    return frames[..., top : top + crop, left : left + crop]


class NormalizeVideo:
    """uint8 clips (C x T x H x W, or batches of them; or float ones in [0, 255]) -> float32, scaled to [0, 1] and
    normalised with the released XDC weights' mean and std, on ``device``: the training loop sends uint8 batches (a
    quarter of the bytes through worker shared memory, pinned memory and the host-to-device copy) and normalises
    them on arrival."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(VIDEO_MEAN, device=device).view(3, 1, 1, 1)
        self.std = torch.tensor(VIDEO_STD, device=device).view(3, 1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # contiguous, whatever x's strides
        out.copy_(x)
        return out.mul_(1.0 / 255).sub_(self.mean).div_(self.std)


class DeviceCrops:
    """:meth:`VideoTransform.plan`'s parts and grids (a batch: B x T x S x S x 3 uint8, B x 4) -> the clips, float32
    B x 3 x T x crop x crop normalised as :class:`NormalizeVideo` does, on the batch's device: one bilinear
    sampling (grid_sample) for the whole batch. Rows and columns sampled outside a part take its edge pixels,
    which plan() repeated from the frame's edge."""

    def __init__(self, crop: int, device: torch.device | str = "cpu"):
        self.crop = crop
        self.normalize = NormalizeVideo(device)
        self.steps = torch.arange(crop, dtype=torch.float64, device=device)

    def __call__(self, parts: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        b, t, size = parts.shape[:3]
        grids = grids.to(parts.device, torch.float64)
        # part pixel p at grid_sample's normalised coordinate (2p + 1) / size - 1 (align_corners=False)
        ys = (2 * (grids[:, 0:1] + grids[:, 1:2] * self.steps) + 1) / size - 1  # B x crop
        xs = (2 * (grids[:, 2:3] + grids[:, 3:4] * self.steps) + 1) / size - 1
        where = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1).float()
        frames = parts.permute(0, 1, 4, 2, 3).reshape(b, t * 3, size, size).float()
        out = F_nn.grid_sample(frames, where, mode="bilinear", padding_mode="border", align_corners=False)
        return self.normalize(out.view(b, t, 3, self.crop, self.crop).transpose(1, 2))


class AudioTransform:
    """Waveform -> 1 x n_mels x frames log-mel: the training gain, the log-mel, the training masks. With
    ``logmel=False`` only the gain: 1 x samples, for :class:`DeviceLogMel` where the batch lands; a training
    transform's :meth:`plan` then also draws the clip's masks for it."""

    def __init__(self, cfg: DataConfig, train: bool, logmel: bool = True):
        self.logmel = LogMel(cfg.mel, cfg.clip.sample_rate)
        self.n_mels = cfg.mel.n_mels
        self.gain_db = cfg.augment.gain_db if train else 0.0
        self.masks = AudioMasks(cfg.augment) if train else None
        self.on_waveform = not logmel

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        x, intervals = self.plan(wave)
        if self.on_waveform:
            return x
        spectra = self.logmel(x[0])[None, None]  # 1 x 1 x n_mels x frames: a batch of one for AudioMasks
        return (self.masks.apply(spectra, intervals[None]) if self.masks else spectra)[0]

    def plan(self, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The waveform after the gain (1 x samples) and the intervals its spectrogram's masks cover (see
        :class:`AudioMasks`; None for an evaluation transform), drawn in that order from the torch generator."""
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if self.gain_db:
            x = x * 10 ** ((torch.rand(()) * 2 - 1) * self.gain_db / 20)
        intervals = self.masks.plan(self.n_mels, self.logmel.frames(x.shape[-1])) if self.masks else None
        return x.unsqueeze(0), intervals


class AudioMasks:
    """SpecAugment's masks: one band of mel bins below data.augment.freq_mask wide, then one span of frames below
    time_mask wide, each zeroed (a width of 0: none). :meth:`plan` draws a clip's from the torch generator with the
    calls and arithmetic of torchaudio's FrequencyMasking and TimeMasking, so a seeded item gets the masks those
    would give it; :meth:`apply` zeroes them in a batch, wherever it is. The loader's workers plan (from the item's
    seed) and the log-mel applies, in the workers or on the device (:class:`DeviceLogMel`): the same masks either
    way, and none drawn from the training process's generator, whose state a resumed run would not have."""

    def __init__(self, augment: AugmentConfig):
        self.widths = [(width, axis) for axis, width in enumerate((augment.freq_mask, augment.time_mask)) if width]

    def __bool__(self) -> bool:
        return bool(self.widths)

    def plan(self, n_mels: int, frames: int) -> torch.Tensor:
        """int64 masks x 2: [start, end) of each mask, in mel bins or frames."""
        sizes, intervals = (n_mels, frames), []
        for width, axis in self.widths:
            value = torch.rand(1) * width
            start = (torch.rand(1) * (sizes[axis] - value)).long()
            intervals.append(torch.cat([start, start + value.long()]))
        return torch.stack(intervals) if intervals else torch.zeros(0, 2, dtype=torch.int64)

    def apply(self, spectra: torch.Tensor, intervals: torch.Tensor) -> torch.Tensor:
        """``spectra`` (B x 1 x n_mels x frames) with the ``intervals`` (B x masks x 2, planned) zeroed."""
        intervals = intervals.to(spectra.device, non_blocking=True)
        for j, (_, axis) in enumerate(self.widths):
            positions = torch.arange(spectra.shape[2 + axis], device=spectra.device)
            inside = (positions >= intervals[:, j, :1]) & (positions < intervals[:, j, 1:])  # B x size
            spectra = spectra.masked_fill(inside[:, None, :, None] if axis == 0 else inside[:, None, None, :], 0.0)
        return spectra


class DeviceLogMel:
    """The log-mel spectrograms of a batch of waveforms where it runs (data.logmel_on=device): B x 1 x samples ->
    B x 1 x n_mels x frames; for training clips then their masks, as the workers planned them (``masks``: the
    batch's ``audio_masks``, see :class:`AudioMasks`)."""

    def __init__(self, cfg: DataConfig, device: torch.device | str):
        self.logmel = LogMel(cfg.mel, cfg.clip.sample_rate).to(device)
        self.masks = AudioMasks(cfg.augment)

    @torch.no_grad()
    def __call__(self, waves: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(waves.device.type, enabled=False):  # the FFT and the log in float32 under bf16 runs
            spectra = self.logmel(waves.float())
        return self.masks.apply(spectra, masks) if masks is not None and self.masks else spectra
