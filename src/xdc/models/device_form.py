"""An encoder in the form its device runs fastest, with the same parameters and state dict: channels-last weights
(train.channels_last), the video encoder's middle widths padded (train.pad_widths, xdc.models.padding) and its stem
over pixel blocks (train.s2d_stem, xdc.models.stem). Pretraining and evaluation both call it, so an encoder runs
in one form wherever the run's settings send it."""

from __future__ import annotations

from torch import nn

from xdc.config import TrainConfig
from xdc.models.encoders import LAYOUTS
from xdc.models.padding import pad_middle_widths
from xdc.models.stem import space_to_depth_stem


def device_form(encoder: nn.Module, modality: str, train: TrainConfig, crop: int, device_type: str) -> nn.Module:
    """``encoder`` (already on its device), changed in place for a device of ``device_type`` ("cuda", "cpu") as
    ``train`` says; ``crop`` is the video clips' side, which the stem over pixel blocks is built for."""
    if train.channels_last_on(device_type):  # weights in the layout of the clips
        encoder.to(memory_format=LAYOUTS[modality])
    if modality == "video" and (widths := train.pad_widths_on(device_type)):
        pad_middle_widths(encoder, widths)
    if modality == "video" and train.s2d_stem:
        space_to_depth_stem(encoder, (crop, crop))
    return encoder
