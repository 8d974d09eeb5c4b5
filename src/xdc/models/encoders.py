"""The two encoders of XDC: R(2+1)D-18 on video clips and ResNet-18 on log-mel spectrograms.

Both return the pooled feature (B x feature_dim, feature_dim = 8 * width) with no classifier: the clustering
reads it directly and each round trains a fresh head on top (xdc.models.heads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.video import resnet as video_resnet

from xdc.config import Config, ModelConfig
from xdc.errors import UserError


def per_conv_2plus1d(in_planes: int, out_planes: int, midplanes: int, stride: int = 1, padding: int = 1) -> nn.Module:
    """torchvision's Conv2Plus1D, but with the middle width of this conv alone, (in*out*27) // (in*9 + 3*out),
    instead of the ``midplanes`` that BasicBlock computes once per block (the two differ in each stage's first
    block: e.g. 230 and 288 in layer2, where torchvision uses 230 for both)."""
    del midplanes  # BasicBlock's shared value, replaced by this conv's own
    mid = (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)
    return video_resnet.Conv2Plus1D(in_planes, out_planes, mid, stride, padding)


class VideoEncoder(nn.Module):
    """R(2+1)D on B x 3 x T x H x W normalised clips (xdc.data.transforms.VideoTransform).

    Built from torchvision's own blocks with the attribute names of ``VideoResNet``, so at width 64 and layers
    (2, 2, 2, 2) the state dict equals ``torchvision.models.video.r2plus1d_18()``'s without ``fc.*``. Narrower
    widths scale every stage; the (2+1)D middle widths follow from torchvision's BasicBlock formula.

    ``mid_width="per_conv"`` and ``bn_eps=1e-3`` give the variant of the released XDC weights (VMZ's R(2+1)D,
    xdc.models.official): same keys, but each (2+1)D conv takes its own middle width from its in/out channels.
    """

    def __init__(
        self, width: int = 64, layers: Sequence[int] = (2, 2, 2, 2), mid_width: str = "block", bn_eps: float = 1e-5
    ):
        super().__init__()
        if mid_width not in ("block", "per_conv"):
            raise ValueError(f"mid_width must be 'block' or 'per_conv', not {mid_width!r}")
        self.conv_builder = video_resnet.Conv2Plus1D if mid_width == "block" else per_conv_2plus1d
        # torchvision's stem hard-codes 45 middle channels for 64 outputs; keep that ratio at other widths.
        mid = max(1, 45 * width // 64)
        self.stem = nn.Sequential(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        self.inplanes = width
        self.layer1 = self._make_layer(width, layers[0], stride=1)
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = 8 * width
        for m in self.modules():  # VideoResNet's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.eps = bn_eps

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )
        stage = [video_resnet.BasicBlock(self.inplanes, planes, self.conv_builder, stride, downsample)]
        stage += [video_resnet.BasicBlock(planes, planes, self.conv_builder) for _ in range(1, blocks)]
        self.inplanes = planes
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) == 1:
            check_one_clip_trains("video", x.shape[1:])
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class AudioEncoder(nn.Module):
    """ResNet-18 on B x 1 x n_mels x frames log-mel spectrograms (xdc.data.transforms.AudioTransform).

    Stem: BatchNorm on the input, then a 7x7 stride-2 conv and no max-pool. The log-mel values sit far from zero
    (log of power, floor -13.8), so the input BatchNorm centres them and zero padding stops reading as a loud edge;
    without the max-pool a 40 x 100 input still has a 3 x 7 map in layer4 instead of 2 x 4, keeping some frequency
    resolution at the cost of more compute in layer1 (20 x 50).
    """

    def __init__(self, width: int = 64, layers: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1)
        self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._make_layer(width, layers[0], stride=1)
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 8 * width
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(resnet.conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        stage = [resnet.BasicBlock(self.inplanes, planes, stride, downsample)]
        stage += [resnet.BasicBlock(planes, planes) for _ in range(1, blocks)]
        self.inplanes = planes
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) == 1:
            check_one_clip_trains("audio", x.shape[1:])
        x = self.relu(self.bn1(self.conv1(self.input_norm(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def last_stage_size(modality: str, clip: Sequence[int]) -> tuple[int, ...]:
    """The map that layer4 of the ``modality`` encoder makes of one clip of shape ``clip`` (C x T x H x W video,
    C x n_mels x frames audio): each stride-2 convolution is padded, so it halves a side rounding up; the video
    stem halves H and W, and layers 2-4 every side."""
    if modality == "video":
        frames, height, width = clip[-3:]
        return -(-frames // 8), -(-height // 16), -(-width // 16)
    return tuple(-(-side // 16) for side in clip[-2:])


# What makes layer4 larger than one value per channel, in the settings that shape each modality's clips
_LARGER_CLIPS = {
    "video": "data.clip.crop above 16 or data.clip.frames above 8",
    "audio": "data.mel.n_mels above 16 or a clip of more than 16 spectrogram frames (data.clip.audio_seconds)",
}


def check_one_clip_trains(modality: str, clip: Sequence[int]) -> None:
    """Refuse, naming the settings, a training batch (or accumulated part) of one clip of shape ``clip`` where
    layer4 of the ``modality`` encoder is one value per channel: BatchNorm cannot take batch statistics of one
    value (torch's error names no setting)."""
    size = last_stage_size(modality, clip)
    if math.prod(size) == 1:
        raise UserError(
            f"a training batch of one {modality} clip of {' x '.join(map(str, clip))} leaves the encoder's last "
            f"stage {' x '.join(map(str, size))}, one value per channel, on which BatchNorm cannot train: use "
            f"{_LARGER_CLIPS[modality]}, or at least 2 clips in every training batch and accumulated part (the "
            "batch size per rank, and an epoch size that leaves no last batch of one clip)"
        )


# Each modality's channels-last memory format: N x T x H x W x C for clips, N x H x W x C for spectrograms.
LAYOUTS = {"video": torch.channels_last_3d, "audio": torch.channels_last}


def build_encoder(modality: str, cfg: ModelConfig) -> VideoEncoder | AudioEncoder:
    """The encoder of ``modality`` ("video" or "audio") with the widths and depths of ``cfg``."""
    if isinstance(cfg, Config):  # an AttributeError of video_width otherwise
        raise TypeError("cfg must be the model settings, a ModelConfig (cfg.model of load_config's Config), not Config")
    if modality == "video":
        return VideoEncoder(cfg.video_width, cfg.video_layers, cfg.video_mid_width, cfg.video_bn_eps)
    if modality == "audio":
        return AudioEncoder(cfg.audio_width, cfg.audio_layers)
    raise ValueError(f"modality must be 'video' or 'audio', not {modality!r}")
