"""Named config files (paper, small, tiny) that set the input sizes and model widths together."""

from __future__ import annotations

from pathlib import Path

from xdc.errors import UserError

PRESETS = ("paper", "small", "tiny")


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``, to pass to ``xdc.config.load_config``."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return Path(__file__).with_name(f"{name}.yaml")
