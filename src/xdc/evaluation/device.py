"""Where an evaluation runs an encoder: the device asked for (a GPU where there is one), with the run's own
device settings (train.precision, train.channels_last, train.pad_widths, train.s2d_stem: bf16, channels-last
inputs and padded middle widths on CUDA by default; docs/pretrain.md "On GPUs"), and the loader's uint8 video normalised
(finetuning's training clips also cropped, data.crops_on) and its waveforms made log-mel spectrograms (data.logmel_on)
after the copy to the device, as pretraining does."""

from __future__ import annotations

import torch
from torch import nn

from xdc.config import Config
from xdc.data.transforms import DeviceCrops, DeviceLogMel, NormalizeVideo
from xdc.errors import UserError
from xdc.models.device_form import device_form, warn_cudnn_fault
from xdc.models.encoders import LAYOUTS


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first GPU where CUDA has one, else the CPU; otherwise a device name such as cuda:1."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r}: evaluation runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: this machine has no CUDA device (torch.cuda.is_available() is false)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


class EvalDevice:
    """One encoder's device path: ``module`` moves (and lays out) the encoder, ``inputs`` a batch's clips, and
    ``autocast`` wraps the forward."""

    def __init__(self, device: torch.device, run: Config, modality: str, training_clips: bool = False):
        """``run``: the run's configuration. ``training_clips`` (finetuning): ``device_crops`` then says whether
        data.crops_on puts their scale jitter, crop and flip here (``TrainClips(device_crops=...)``). For audio,
        ``device_logmel`` says whether data.logmel_on puts the clips' log-mel here (``EvalClips`` and
        ``TrainClips(device_logmel=...)``)."""
        train, data = run.train, run.data
        self.device, self.modality, self.run = device, modality, run
        # A run's bf16 is for its GPUs: on a CPU bf16 is many times slower and oneDNN's bf16 convolutions unreliable
        # (docs/pretrain.md), so a run made with train.precision=bf16 is evaluated there in float32.
        self.bf16 = device.type == "cuda" and train.bf16_on(device.type)
        video = modality == "video"
        self.channels_last = train.channels_last_on(device.type)
        self.normalize = NormalizeVideo(device) if video else None
        crops = video and training_clips and data.crops_on_device(device.type)
        self.crops = DeviceCrops(data.clip.crop, device) if crops else None
        self.logmel = DeviceLogMel(data, device) if modality == "audio" and data.logmel_on_device(device.type) else None
        if device.type == "cuda":  # a few clip shapes (the last batch is smaller): cuDNN times each once
            torch.backends.cudnn.benchmark = True
            if video:
                warn_cudnn_fault(self.bf16)

    @property
    def device_crops(self) -> bool:
        """Whether this device crops the training clips (``TrainClips(device_crops=...)``)."""
        return self.crops is not None

    @property
    def device_logmel(self) -> bool:
        """Whether this device computes the audio clips' log-mel (``EvalClips``, ``TrainClips(device_logmel=...)``)."""
        return self.logmel is not None

    @property
    def pin_memory(self) -> bool:
        """Whether the loader should hand over page-locked batches (copied to a GPU without waiting)."""
        return self.device.type == "cuda"

    def module(self, encoder: nn.Module) -> nn.Module:
        run = self.run
        return device_form(encoder.to(self.device), self.modality, run.train, run.data.clip.crop, self.device.type)

    def inputs(self, batch: dict) -> torch.Tensor:
        """A batch's clips of this modality (uint8 video from a ``raw_video`` dataset; for training clips with
        ``video_grid``, the parts of frames, see ``device_crops``; waveforms, see ``device_logmel``, with their
        ``audio_masks`` for training clips where masks are set) ready for the encoder."""
        x = batch[self.modality].to(self.device, non_blocking=True)
        grids = batch.get("video_grid")
        if self.logmel is not None:
            x = self.logmel(x, batch.get("audio_masks"))
        elif grids is not None:
            x = self.crops(x, grids.to(self.device, non_blocking=True))
        elif self.normalize is not None:
            x = self.normalize(x)
        return x.contiguous(memory_format=LAYOUTS[self.modality]) if self.channels_last else x

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
