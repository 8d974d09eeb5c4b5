"""Encoders (R(2+1)D-18 video, ResNet-18 audio) and the per-round linear head."""

from xdc.models.encoders import AudioEncoder, VideoEncoder, build_encoder
from xdc.models.heads import LinearHead

__all__ = ["AudioEncoder", "LinearHead", "VideoEncoder", "build_encoder"]
