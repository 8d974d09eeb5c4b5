"""XDC: self-supervised audio-visual learning by cross-modal deep clustering."""

__version__ = "0.1.0"
