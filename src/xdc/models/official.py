"""The released XDC video weights (Alwassel et al. 2020) as a ready ``VideoEncoder``.

The authors published R(2+1)D-18 state dicts (r2plus1d_18_xdc_ig65m_kinetics, r2plus1d_18_xdc_ig65m_random,
r2plus1d_18_xdc_audioset, and the fully supervised r2plus1d_18_fs_kinetics / r2plus1d_18_fs_imagenet) built with
VMZ's R(2+1)D: torchvision's key names, but each (2+1)D conv has its own middle width and every BatchNorm uses
eps 1e-3, so they do not load into torchvision's r2plus1d_18. Their ``fc`` layer is meaningless (a leftover
classifier) and is ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xdc.config import ModelConfig
from xdc.errors import UserError
from xdc.models.encoders import VideoEncoder, build_encoder
from xdc.training import checkpoint

# The released network as model settings (the paper preset's widths and depths otherwise): a run with them can
# start from the weights (train.init), and an export of them rebuilds it (xdc.load_encoder).
RELEASED_MODEL = {"video_mid_width": "per_conv", "video_bn_eps": 1e-3}
_WRAPPERS = ("state_dict", "model")  # keys under which training scripts commonly nest the weights
_PREFIX = "module."  # added by DataParallel / DistributedDataParallel


def official_xdc_architecture() -> VideoEncoder:
    """R(2+1)D-18 laid out like the released weights (random initialisation)."""
    return build_encoder("video", ModelConfig(**RELEASED_MODEL))


def load_official_xdc(path: str | Path) -> VideoEncoder:
    """The released XDC (or fully supervised) R(2+1)D-18 file at ``path`` as a VideoEncoder in eval mode.

    It returns the 512-d pooled feature of B x 3 x T x H x W clips normalised like ``xdc.data.transforms``
    (RGB in [0, 1], VIDEO_MEAN / VIDEO_STD). The file may hold a bare state dict or one nested under
    "state_dict" or "model", with or without "module." prefixes. Every key must match in name and shape, except
    ``fc.*`` (ignored) and BatchNorm ``num_batches_tracked`` counters (unused in eval mode; older files lack them).
    """
    path = Path(path)
    state = _state_dict(path)
    encoder = official_xdc_architecture()
    expected = encoder.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in given.items()
             if k in expected and v.shape != expected[k].shape]  # fmt: skip
    found = {"missing keys": missing, "unexpected keys": unexpected, "wrong shapes": wrong}
    problems = [f"{what}: {_listing(keys)}" for what, keys in found.items() if keys]
    if problems:
        raise UserError(f"{path} is not an XDC R(2+1)D-18 checkpoint; " + "; ".join(problems))
    encoder.load_state_dict(given, strict=False)  # the checks above leave only num_batches_tracked to default
    return encoder.eval()


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():  # "no such file" before, of a folder that is there
        raise UserError(f"{path} is not a file of the released XDC weights: it is {_what_else(path) or 'a folder'}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        obj = checkpoint.read(path, "a PyTorch weights file")
    except UserError as e:
        raise UserError(f"{e}{_hint(path)}") from None
    if isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors, bare or under "
                        f"{' or '.join(repr(k) for k in _WRAPPERS)}){_hint(path)}")  # fmt: skip
    return {k.removeprefix(_PREFIX): v for k, v in obj.items()}


def _what_else(path: Path) -> str:
    """What ``path`` is if it is this library's own output (a run or an export, or a file of one), with how to load
    its encoders; else "". Asked only of a path that is not the released weights: a released file beside a
    config.yaml is still read as one."""
    from xdc.evaluation.sources import is_run_folder

    if path.is_dir() and is_run_folder(path):
        return "an `xdc pretrain` run folder: load its encoders with xdc.load_encoder(path, name=...)"
    if path.is_dir() and any(path.glob("*.safetensors")):
        return "an `xdc export` folder: load its encoders with xdc.load_encoder(path, name=...)"
    if path.suffix == ".safetensors":
        return "a safetensors file: load one of `xdc export` with xdc.load_encoder(path)"
    run = next((r for r in (path.parent, path.parent.parent) if is_run_folder(r)), None)
    if run is not None and path.exists():  # a folder too (checkpoints/): until 2026-12-03 just "a folder"
        kind = "folder" if path.is_dir() else "file"
        return f"a {kind} of the run {run}: load its encoders with xdc.load_encoder({str(run)!r}, name=...)"
    return ""


def _hint(path: Path) -> str:
    what = _what_else(path)
    return f"; it is {what}" if what else ""


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _listing(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
