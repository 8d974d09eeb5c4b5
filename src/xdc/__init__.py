"""XDC: self-supervised audio-visual learning by cross-modal deep clustering."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str):
    # Imported on first use: `import xdc` (and so every `xdc` command) stays free of torch's import time.
    if name == "load_encoder":
        from xdc.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'xdc' has no attribute {name!r}")


def __dir__() -> list[str]:
    # a notebook's completion of `xdc.` lists what dir() gives: without this, not load_encoder, imported on first use
    return sorted({*globals(), *__all__})
