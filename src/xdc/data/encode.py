"""Write real audio-visual files (H.264 + AAC in MP4) with PyAV, for the synthetic dataset and for tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# AAC's standard sample rates up to 48 kHz (FFmpeg's encoder refuses others).
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def write_av(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 20,
    gop: int | None = None,
    times: np.ndarray | None = None,
    audio_start: float = 0.0,
    rotation: int = 0,
    sample_aspect: Fraction | None = None,
) -> None:
    """Encode ``frames`` (uint8, T x H x W x 3, even H and W) and optional ``audio`` (float32 in [-1, 1],
    shape (n,) for mono or (channels, n)) into one file. ``gop`` is the keyframe interval in frames
    (None: the encoder's default). ``times`` gives each frame's timestamp in seconds (variable frame rate;
    default i / fps); ``audio_start`` delays the audio track; ``rotation`` (degrees) is written as display
    metadata, as phones do; ``sample_aspect`` (a pixel's displayed width over its height) is written for
    pictures with non-square pixels, as DVDs and anamorphic HD have."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 T x H x W x 3, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        # cpu-independent: x264's AVX-512 code makes the bytes depend on the run on some CPUs (seen on AMD EPYC);
        # this keeps a seeded synthetic dataset byte-identical everywhere, at no measurable cost.
        options = {"crf": str(crf), "preset": "veryfast", "x264-params": "cpu-independent=1"}
        if gop is not None:
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        video.options = options
        video.codec_context.thread_count = 1  # many small files are written in parallel processes instead
        if times is not None:
            video.codec_context.time_base = video.time_base = Fraction(1, 1000)
        if rotation:
            video.set_display_rotation(rotation)
        if sample_aspect is not None:  # the encoder writes it into the bitstream, the muxer into the container
            video.codec_context.sample_aspect_ratio = sample_aspect
        astream = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            audio = audio[None] if audio.ndim == 1 else audio
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono" if audio.shape[0] == 1 else "stereo"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if astream is not None:
            chunk, offset = 1024, round(audio_start * sample_rate)
            for start in range(0, audio.shape[1], chunk):
                piece = np.ascontiguousarray(audio[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=astream.layout.name)
                frame.sample_rate, frame.pts = sample_rate, offset + start
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode())
