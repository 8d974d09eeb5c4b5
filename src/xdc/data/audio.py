"""Log-mel spectrogram of the SPEC: 16 kHz, 16 ms Hann window, 10 ms hop, 40 mel bands, log."""

from __future__ import annotations

import torch
import torchaudio.transforms as T

from xdc.config import MelConfig

_FLOOR = 1e-6  # keeps log() finite on digital silence


class LogMel(torch.nn.Module):
    """Waveform (..., samples) -> log-mel (..., n_mels, frames), with exactly one frame per hop of input."""

    def __init__(self, cfg: MelConfig, sample_rate: int):
        super().__init__()
        self.hop = round(cfg.hop_ms * sample_rate / 1000)
        win = round(cfg.window_ms * sample_rate / 1000)
        if win > cfg.n_fft:
            raise ValueError(f"mel.window_ms={cfg.window_ms} is {win} samples, more than mel.n_fft={cfg.n_fft}")
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate, n_fft=cfg.n_fft, win_length=win, hop_length=self.hop,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, window_fn=torch.hann_window, power=2.0,
        )  # fmt: skip

    def frames(self, samples: int) -> int:
        return samples // self.hop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # A centred STFT yields samples // hop + 1 frames; drop the last so 1 s at a 10 ms hop is 100 frames.
        return torch.log(self.mel(wave)[..., : self.frames(wave.shape[-1])] + _FLOOR)
