"""Encoders (R(2+1)D-18 video, ResNet-18 audio), the per-round linear head, and the released XDC weights."""

from xdc.models.encoders import AudioEncoder, VideoEncoder, build_encoder
from xdc.models.heads import LinearHead
from xdc.models.official import load_official_xdc

__all__ = ["AudioEncoder", "LinearHead", "VideoEncoder", "build_encoder", "load_official_xdc"]
