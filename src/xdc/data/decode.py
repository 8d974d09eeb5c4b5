"""Decode one time-aligned clip (video frames + mono audio) from a media file.

The reader seeks to the clip, demuxes once for both streams and stops as soon as both windows are covered, so
the cost depends on the clip, not on the file's length. Frames are picked by timestamp (the frame on screen at
each target time), which handles variable frame rates and any source fps; audio is cut by sample position from
frame timestamps, so both modalities cover the same span of the container's timeline.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass
from fractions import Fraction

import av
from av.audio.frame import format_dtypes
from av.audio.plane import AudioPlane
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
import torchaudio.transforms as AT

from xdc.config import ClipConfig

_EPS = 1e-3  # seconds: timestamps are rounded to the container's time base
_MAX_BAD_PACKETS = 8
# Sound decoded before a clip's: AAC and MP3 rebuild each frame from the one before, so the first frame decoded
# after a seek is wrong. Two AAC frames at 8 kHz take 0.26 s.
_AUDIO_PREROLL_S = 0.3
# Pixel aspects beyond these are taken for broken metadata (real ones run from 8:9 to 2:1): such a "720 x 480" would
# be read 100 times as wide as it is tall.
_SAR_RANGE = (Fraction(1, 4), Fraction(4))
# Pictures whose long side is more than this many times the short one are refused: scaled to the short side asked,
# a 1 x 240 stream came out 128 x 30720 (94 MB a clip of 8 frames, a loader's memory gone in a few batches), and any
# crop of it shows a pixel or two of the source. Real videos stay well within it (32:9 screens are 3.6:1).
MAX_ASPECT = 16


class DecodeError(Exception):
    """A file (or a window of it) could not be decoded; the message is a one-line reason."""


class SoundElsewhere(DecodeError):
    """The clip's window holds none of the sound track, which lies in ``begins`` to ``ends`` seconds from the file's
    start (``ends`` None where not known): a window there may hold it (xdc.data.datasets retries there)."""

    def __init__(self, reason: str, begins: float, ends: float | None):
        super().__init__(reason)
        self.begins, self.ends = begins, ends


class FileChanged(DecodeError):
    """The file is not the one indexed: its size differs from the manifest's, or it is gone. No other window of it
    is tried."""


MISSING = "file not found (removed since xdc index?)"


def check_size(container, indexed: int | None) -> None:
    """Raise :class:`FileChanged` where the open ``container``'s file is not ``indexed`` bytes long (None or below 0:
    unknown, not checked). The size FFmpeg takes from the open file (an fstat: no second look-up of the path, which
    on a network file system is a round trip), not the mtime: a collection copied to node-local scratch or another
    machine (cp, rsync without -t) gets new mtimes and the same bytes, while a file of another size is certainly not
    the one indexed (replaced, re-encoded, a dataset made again in its folder), whose duration and label would be
    used with the new content."""
    _compare_size(indexed, container.size)


def _compare_size(indexed: int | None, size: int) -> None:
    if indexed is None or indexed < 0:
        return
    if size >= 0 and size != indexed:  # below 0: FFmpeg cannot tell (not a plain file)
        raise FileChanged(f"its size changed since xdc index ({indexed} -> {size} bytes): run xdc index again")


@dataclass
class Clip:
    video: np.ndarray | None  # uint8, T x H x W x 3, as displayed: square pixels, upright (rotation applied)
    audio: np.ndarray | None  # float32 mono samples at the requested rate
    start: float  # seconds from the start of the file
    video_padded: float = 0.0  # seconds of the clip before the first picture or past the last (that one repeated)
    audio_padded: float = 0.0  # seconds of silence added where the audio track starts late or ends early


def file_origin(container) -> float:
    """Where the open ``container``'s timeline starts, in seconds: its earliest stream's start, where clip starts
    count from (``xdc index`` measures durations from there too)."""
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def pixel_aspect(stream) -> Fraction | None:
    """A video ``stream``'s sample aspect ratio (a pixel's displayed width over its height: 8:9 or 32:27 on NTSC
    DVDs, 4:3 on 1440 x 1080 HDV) where its pixels are not square, as players take it (the container's, else the
    bitstream's); None where they are square, it states none, or it states one outside _SAR_RANGE."""
    sar = stream.sample_aspect_ratio
    return sar if sar is not None and sar != 1 and _SAR_RANGE[0] <= sar <= _SAR_RANGE[1] else None


def displayed_width(width: int, sar: Fraction | None) -> int:
    """How many square pixels ``width`` pixels of aspect ``sar`` (None: square) are shown as, halves up."""
    return width if sar is None else max(1, math.floor(width * sar + Fraction(1, 2)))


def read_clip(
    path: str, start: float, spec: ClipConfig, video: bool = True, audio: bool = True, threads: int = 1,
    size: int | None = None,
) -> Clip:
    """Read ``spec.frames`` frames at ``spec.fps`` and ``spec.audio_span`` seconds of audio from ``start``.

    ``threads`` is the video decoder's and frame converter's thread count (0: as many as cores): 1 suits loader
    workers, which parallelise across clips. ``size``: the file's bytes as indexed (``check_size``).
    Raises :class:`DecodeError` with a one-line reason for any failure of the file.
    """
    try:
        with _open_checked(path, size) as container:
            try:
                return _read(container, start, spec, video, audio, threads, used=False)
            except _SeeksLate:
                pass
        with _open_checked(path, size) as container:
            return _read(container, start, spec, video, audio, threads, used=False, seek=False)
    except DecodeError:
        raise
    except Exception as e:  # PyAV raises many types (FFmpegError, OSError, ValueError, ...) for broken files
        raise DecodeError(_reason(e)) from e


def read_clips(
    path: str, starts: list[float], spec: ClipConfig, video: bool = True, audio: bool = True, threads: int = 1,
    size: int | None = None,
) -> list[Clip | DecodeError]:
    """``read_clip`` at each of ``starts``, opening the file once: for the clips of one video in an evaluation,
    where opening a prepared copy is about a third of reading a clip's frames. Each start gets its clip, or the
    DecodeError that ``read_clip`` would raise there: a clip that fails reopens the file for the next one, whose
    decoders then start as ``read_clip``'s do, and a file that does not open fails the rest with one try. Only
    video-only reads share the open file: the pictures are those of ``read_clip`` (bit for bit on 1,643 files,
    prepared and not: BENCHMARKS.md), the sound would not be. A file not of the indexed ``size`` fails every clip
    at its first open (``check_size``)."""
    clips: list[Clip | DecodeError] = []
    container = None
    try:
        for n, start in enumerate(starts):
            if container is None:
                try:
                    container, used = _open_checked(path, size), False
                except FileChanged as e:
                    return clips + [e] * (len(starts) - n)
                except Exception as e:  # a file that does not open fails every clip: not opened once per clip
                    return clips + [DecodeError(_reason(e))] * (len(starts) - n)
            try:
                try:
                    clip = _read(container, start, spec, video, audio, threads, used)
                except _SeeksLate:  # as read_clip: from a new open, without a seek
                    container.close()
                    container = _open_checked(path, size)
                    clip = _read(container, start, spec, video, audio, threads, used=False, seek=False)
                clips.append(clip)
                used = True
                if audio:  # AAC's decoder keeps state through a seek: its samples would differ (up to 4e-3)
                    container.close()
                    container = None
            except Exception as e:  # as read_clip: any failure of the file is this clip's reason
                clips.append(e if isinstance(e, DecodeError) else DecodeError(_reason(e)))
                if container is not None:
                    container.close()
                container = None
    finally:
        if container is not None:
            container.close()
    return clips


# Demuxers whose files start with a signature they check (an ftyp/moov box, an EBML header): named by extension,
# they skip FFmpeg's format probe, which tries every demuxer on the file's first bytes (0.1 ms of the 0.5 ms that
# opening a prepared copy takes). A file that is not what its extension says fails that open and is probed.
_DEMUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "matroska"}
TIMED_DEMUXERS = {"mov", "mp4", "matroska", "webm"}  # each packet carries its picture's presentation time


def _open_checked(path: str, size: int | None):
    """The file opened, its size checked against ``size`` (``check_size``), also where it no longer opens; a
    FileChanged (MISSING) where it is gone."""
    try:
        container = _open(path)
    except Exception:
        # a file cut short or replaced since indexing may not open at all: its change is the reason to give, not
        # FFmpeg's "Invalid data" (a stat on this failure only)
        try:
            now = os.stat(path).st_size
        except FileNotFoundError as gone:  # said as xdc index says it, not FFmpeg's "FileNotFoundError: No such ..."
            raise FileChanged(MISSING) from gone
        except OSError:  # unreadable, say: FFmpeg's reason
            now = -1
        _compare_size(size, now)
        raise
    try:
        check_size(container, size)
    except FileChanged:
        container.close()
        raise
    return container


def open_media(path: str, size: int | None = None):
    """The file opened for reading (a PyAV container, to close), as ``read_clip`` opens it: any failure is a
    DecodeError with its one-line reason, a file that is gone the one ``xdc index`` gives."""
    try:
        return _open_checked(path, size)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(_reason(e)) from e


def _open(path: str):
    demuxer = _DEMUXERS.get(os.path.splitext(path)[1].lower())
    if demuxer is not None:
        try:
            return av.open(path, format=demuxer)
        except av.FFmpegError:
            pass
    return av.open(path)


def _decode(packet, bad_packets: list[str]) -> list:
    # A seek can land inside a packet (MPEG program streams) and a file can hold a few damaged packets: skip
    # such packets, as players do, and fail the clip only when there are many (see _MAX_BAD_PACKETS).
    try:
        return packet.decode()
    except av.error.InvalidDataError as e:
        bad_packets.append(_reason(e))
        return []


def _reason(e: BaseException) -> str:
    # FFmpeg errors carry the file name and errno in str(e); the reader already knows the file.
    text = (e.strerror if isinstance(e, av.error.FFmpegError) and e.strerror else str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class _SeeksLate(Exception):
    """The container's seeks land after the clip even when asked for its stream's start (MPEG program streams seek
    by byte position, and resume at the next picture that starts a group): read from a new open, without a seek."""


def _read(
    container, start: float, spec: ClipConfig, want_video: bool, want_audio: bool, threads: int, used: bool,
    seek: bool = True,
) -> Clip:  # fmt: skip
    """One clip from an open ``container``; ``used``: an earlier clip was read from it, so its decoders are open
    and it must seek even to the start (the seek flushes the decoders). ``seek`` False: decode from where the
    container stands (a new open: the file's start)."""
    vstream = container.streams.video[0] if want_video and container.streams.video else None
    astream = container.streams.audio[0] if want_audio and container.streams.audio else None
    if want_video and vstream is None:
        raise DecodeError("no video stream")
    if want_audio and astream is None:
        raise DecodeError("no audio stream")
    origin = file_origin(container)
    t0 = origin + start
    # Only containers that store each picture's presentation time: AVI's are guessed and label packets with
    # pictures they do not hold (packed B-frames), so there the reader cannot tell which pictures are unseen.
    may_skip = not TIMED_DEMUXERS.isdisjoint(container.format.name.split(","))  # "mp4" when named in _open
    if vstream is not None and not used:
        vstream.codec_context.thread_count = threads  # fixed once the decoder is open

    def windows() -> tuple[_VideoWindow | None, _AudioWindow | None]:
        if vstream is not None:
            vstream.codec_context.skip_frame = "DEFAULT"  # as a last pass may have left it (skip_if_unseen)
        return (_VideoWindow(vstream, t0, spec, threads, may_skip) if vstream is not None else None,
                _AudioWindow(astream, t0, spec.audio_span, origin) if astream is not None else None)  # fmt: skip

    # Backward seek lands on the keyframe at or before t0; sound alone, on the packet at or before its pre-roll.
    anchor, lead = (vstream, 0.0) if vstream is not None else (astream, _AUDIO_PREROLL_S)
    video, audio, bad_packets = _seek_and_demux(container, anchor, t0 - lead, seek and (start > 0 or used),
                                                windows, origin)  # fmt: skip
    if seek and video is not None and audio is not None and audio.late:  # the keyframe was too close for sound
        _, audio, more = _seek_and_demux(container, astream, t0 - _AUDIO_PREROLL_S, seek,
                                         lambda: (None, _AudioWindow(astream, t0, spec.audio_span, origin)), origin)
        bad_packets += more
    if len(bad_packets) > _MAX_BAD_PACKETS:
        raise DecodeError(f"{len(bad_packets)} packets failed to decode ({bad_packets[0]})")
    return Clip(
        video=video.result() if video is not None else None,
        audio=audio.result(spec.sample_rate) if audio is not None else None,
        start=start,
        video_padded=video.padded_seconds if video is not None else 0.0,
        audio_padded=audio.padded_seconds if audio is not None else 0.0,
    )


def _seek_and_demux(container, anchor, target: float, sought: bool, windows, origin: float):
    """Seek ``anchor`` backward to ``target`` (if ``sought``), then demux into new ``windows()`` until they are
    covered; returns them and the reasons of the packets that failed. Where the seek landed after the anchor's
    window starts, seek again 1, 2, 4, ... s earlier; _SeeksLate where even a seek to the stream's start does."""
    back = 0.0
    while True:
        video, audio = windows()
        if sought:
            container.seek(max(0, int((target - back) / anchor.time_base)), stream=anchor, backward=True,
                           any_frame=False)  # fmt: skip
        bad_packets = _demux(container, video, audio)
        window = video if video is not None else audio
        if not sought or not window.late:
            return video, audio, bad_packets
        begins = anchor.start_time * anchor.time_base if anchor.start_time is not None else origin
        if target - back <= begins + _EPS:
            raise _SeeksLate
        back = max(1.0, 2 * back)


def _demux(container, video: _VideoWindow | None, audio: _AudioWindow | None) -> list[str]:
    """One pass over the packets of the windows' streams from where the container stands, until both are covered;
    the reasons of the packets that failed to decode."""
    vstream = video.stream if video is not None else None
    astream = audio.stream if audio is not None else None
    bad_packets: list[str] = []
    for packet in container.demux(*(s for s in (vstream, astream) if s is not None)):
        if video is not None and packet.stream is vstream and not video.done:
            video.skip_if_unseen(packet)
            for frame in _decode(packet, bad_packets):
                video.add(frame)
        elif audio is not None and packet.stream is astream and not audio.done:
            if packet.dts is not None and audio.before_window(packet):
                continue  # not needed: skip without decoding
            audio.decoding(packet)
            for frame in _decode(packet, bad_packets):
                audio.add(frame)
        if (video is None or video.done) and (audio is None or audio.done):
            break
    return bad_packets


class _VideoWindow:
    """Collects, for each target time, the last frame whose timestamp is not after it."""

    def __init__(self, stream, t0: float, spec: ClipConfig, threads: int, may_skip: bool):
        self.stream = stream
        self.targets = t0 + np.arange(spec.frames) / spec.fps
        self.fps = spec.fps
        self.short_side = spec.decode_short_side
        self.crop_box = spec.crop_box
        self.rate = float(stream.average_rate or stream.guessed_rate or 25)
        self.out: list[np.ndarray | None] = [None] * spec.frames
        self.next = 0  # index of the first target still without a frame
        self.prev = None  # (frame, its array or None until converted)
        self.last_time: float | None = None
        self.first_time: float | None = None
        self.rotation = 0
        self.sar = pixel_aspect(stream)  # applies to the coded picture, before it is turned upright
        self.reformatter, self.threads = _reformatter(threads), threads
        self.codec, self.time_base, self.skipping = stream.codec_context, float(stream.time_base), False
        self.latest_before_clip = -np.inf  # pts of the latest picture read that starts by targets[0]
        self.may_skip = may_skip

    @property
    def done(self) -> bool:
        return self.next >= len(self.targets)

    @property
    def late(self) -> bool:
        """Whether the pass began after the clip: no picture, or a first picture after the first target that is not
        the stream's first (which the clip may begin before)."""
        if self.first_time is None:
            return True
        begins = self.stream.start_time * self.time_base if self.stream.start_time is not None else -np.inf
        return self.first_time > self.targets[0] + _EPS and self.first_time > begins + _EPS

    def skip_if_unseen(self, packet) -> None:
        """Let the decoder drop this packet's picture if a later one, already read, is on screen by the clip's first
        target and no other picture is predicted from this one. The seek lands on a keyframe, often seconds before
        the clip; of the pictures in between, x264's default B-frames make about a third droppable. (A packet's
        duration cannot tell instead: with B-frames it is the gap in decoding order, not on screen.)"""
        if not self.may_skip:
            return
        unseen = False
        if packet.pts is not None:
            unseen = packet.pts < self.latest_before_clip
            if packet.pts * self.time_base <= self.targets[0] + _EPS:
                self.latest_before_clip = max(self.latest_before_clip, packet.pts)
        if unseen != self.skipping:
            self.codec.skip_frame = "NONREF" if unseen else "DEFAULT"
            self.skipping = unseen

    def add(self, frame) -> None:
        if self.done:
            return
        t = frame.time
        if t is None:  # no timestamp: assume a constant rate after the previous frame
            t = (self.last_time + 1.0 / self.rate) if self.last_time is not None else self.targets[0]
        self.last_time = t
        if self.first_time is None:
            self.first_time = t
        self.rotation = getattr(frame, "rotation", 0) or 0
        while not self.done and t > self.targets[self.next] + _EPS:
            # Frame t starts after this target: the target shows the previous frame (or this one if the window
            # begins before the first frame of the stream).
            self.out[self.next] = self._array(self.prev) if self.prev is not None else self._convert(frame)
            self.next += 1
        self.prev = [frame, None]

    def _array(self, prev: list) -> np.ndarray:
        if prev[1] is None:  # convert lazily: most decoded frames are never used
            prev[1] = self._convert(prev[0])
        return prev[1]

    def _convert(self, frame) -> np.ndarray:
        if self.crop_box is not None:
            return self._convert_region(frame)
        # the displayed size, scaled in the same conversion as the short side (square pixels: the coded size)
        width, height = displayed_width(frame.width, self.sar), frame.height
        _check_aspect(width, height)
        if self.short_side and min(width, height) != self.short_side:
            scale = self.short_side / min(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = self.reformatter.reformat(frame, width=width, height=height, format="rgb24", threads=self.threads)
        image = image.to_ndarray()
        quarter_turns = round(self.rotation / 90) % 4
        return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image

    def _convert_region(self, frame) -> np.ndarray:
        # The box is in displayed coordinates, so rotate first; then cut, then scale only the region. Non-square
        # pixels stretch the picture along one axis only, so the box's fractions cut the same region of the coded
        # picture: the region is stretched to its displayed size in the one scaling.
        image = frame.to_ndarray(format="rgb24")
        quarter_turns = round(self.rotation / 90) % 4
        if quarter_turns:
            image = np.rot90(image, quarter_turns)
        h, w = image.shape[:2]
        left, top, right, bottom = self.crop_box
        x0, x1 = min(int(left * w), w - 1), max(int(left * w) + 1, round(right * w))
        y0, y1 = min(int(top * h), h - 1), max(int(top * h) + 1, round(bottom * h))
        region = np.ascontiguousarray(image[y0:y1, x0:x1])
        coded = height, width = region.shape[:2]
        if quarter_turns % 2:  # turned a quarter: the coded width, which the aspect stretches, is the height now
            height = displayed_width(height, self.sar)
        else:
            width = displayed_width(width, self.sar)
        _check_aspect(width, height)
        if self.short_side and min(width, height) != self.short_side:
            scale = self.short_side / min(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        if (height, width) == coded:
            return region
        region = av.VideoFrame.from_ndarray(region, format="rgb24")
        return self.reformatter.reformat(region, width=width, height=height, threads=self.threads).to_ndarray()

    @property
    def padded_seconds(self) -> float:
        """The clip's seconds before its first picture shows or after its last one stops (one per target there):
        a video may start after its sound, which the file's timeline, and the clip's start, count from."""
        if self.prev is None:
            return 0.0
        before = (self.targets < self.first_time - _EPS).sum()
        after = 0 if self.done else (self.targets >= self.last_time + 1.0 / self.rate - _EPS).sum()
        return float(before + after) / self.fps

    def result(self) -> np.ndarray:
        if self.prev is None:
            raise DecodeError("no video frame decoded in the window")
        end = self.last_time + 1.0 / self.rate  # when the last picture stops showing
        if self.targets[0] >= end - _EPS:  # every frame would be that picture, frozen: not a clip of the video
            raise DecodeError(f"the clip at {self.targets[0]:.2f}s starts after the video's end at {end:.2f}s")
        if self.targets[-1] < self.first_time - _EPS:  # every frame would be the first picture, frozen
            raise DecodeError(f"the clip at {self.targets[0]:.2f}s ends before the video's first picture at "
                              f"{self.first_time:.2f}s")  # fmt: skip
        if not self.done:  # the video ended inside the window: repeat its last frame
            fill = self._array(self.prev)
            self.out = [f if f is not None else fill for f in self.out]
        return np.stack(self.out)


def aspect_problem(width: int, height: int) -> str:
    """Why pictures of ``width`` x ``height`` (as displayed) are refused (MAX_ASPECT), or "" where they are not."""
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"pictures of {width} x {height} (as displayed): one side over {MAX_ASPECT} times the other"
    return ""


def may_be_too_thin(width: float, height: float) -> bool:
    """Whether pictures stored as ``width`` x ``height`` could be refused (``aspect_problem``) under some pixel
    aspect that ``pixel_aspect`` accepts (up to 4:1 either way)."""
    return width > 0 and max(width, height) > MAX_ASPECT / _SAR_RANGE[1] * min(width, height)


def _check_aspect(width: int, height: int) -> None:
    if problem := aspect_problem(width, height):
        raise DecodeError(problem)


_local = threading.local()


def _reformatter(threads: int) -> VideoReformatter:
    """A frame converter for a clip. frame.reformat would build a new scaling context for every frame, and a new
    converter builds one per clip (with its swscale threads: about 0.4 ms, 10% of a prepared clip), so a
    single-threaded converter is kept per thread: it reuses its context while the frames' size and format stay
    the same (sws_getCachedContext). One with slice threads (threads != 1) is never kept: a forked child (a
    loader worker) would inherit it without its threads, and freeing it there waits for them forever."""
    if threads != 1:
        return VideoReformatter()
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return _local.reformatter


class _AudioWindow:
    """Copies decoded samples into a buffer spanning [t0, t0 + seconds) at the stream's native rate."""

    def __init__(self, stream, t0: float, seconds: float, origin: float):
        self.stream = stream
        self.rate = stream.codec_context.sample_rate or stream.rate
        if not self.rate:
            raise DecodeError("audio stream has no sample rate")
        self.t0 = t0
        self.seconds = seconds
        self.time_base = float(stream.time_base)  # a packet's own is a new Fraction each time: 0.05 ms a clip
        self.buffer = np.zeros((stream.codec_context.channels or 1, round(seconds * self.rate)), dtype=np.float32)
        self.covered = np.zeros(self.buffer.shape[1], dtype=bool)
        self.next_offset: int | None = None  # the sample after the last frame added
        self.done = False
        self.begins = stream.start_time * self.time_base if stream.start_time is not None else origin
        self.origin = origin
        # where the sound ends: as its header states, later as far as a packet read reaches
        self.ends = self.begins + stream.duration * self.time_base if stream.duration else None
        self.after = False  # whether a frame starting after the window was decoded
        self.started = False  # whether a packet was decoded
        self.late = False  # whether the first packet decoded ends inside the window, the stream begun before it

    def before_window(self, packet) -> bool:
        """Whether a packet ends more than two packets' time (at least 0.1 s) before the window: not decoded. The
        first packet decoded after a seek comes out wrong (AAC and MP3 rebuild a frame from the one before), so a
        whole one must be decoded before the window's."""
        duration = (packet.duration or 0) * self.time_base
        end = packet.dts * self.time_base + duration
        self.ends = end if self.ends is None else max(self.ends, end)
        return end < self.t0 - max(0.1, 2 * duration)

    def decoding(self, packet) -> None:
        """Note the first packet decoded (its timestamps, if any)."""
        if not self.started and packet.dts is not None:
            start = packet.dts * self.time_base
            end = start + (packet.duration or 0) * self.time_base
            self.late = end > self.t0 + _EPS and start > self.begins + _EPS
        self.started = True

    def add(self, frame) -> None:
        offset = sample_position(frame.time, self.t0, self.rate, self.next_offset, self.time_base)
        self.next_offset = offset + frame.samples
        if offset >= self.buffer.shape[1]:  # starts after the window's last sample
            self.done = self.after = True
            return
        samples = float_samples(frame)
        if samples.shape[0] != self.buffer.shape[0]:  # the layout changed mid-stream: mix down
            samples = np.broadcast_to(samples.mean(axis=0), (self.buffer.shape[0], samples.shape[1]))
        n = samples.shape[1]
        lo, hi = max(0, offset), min(self.buffer.shape[1], offset + n)
        if hi > lo:
            self.buffer[:, lo:hi] = samples[:, lo - offset : hi - offset]
            self.covered[lo:hi] = True
        if offset + n >= self.buffer.shape[1]:
            self.done = True

    @property
    def padded_seconds(self) -> float:
        return float((~self.covered).sum()) / self.rate

    def _uncovered(self) -> DecodeError:
        """Why no sample fell in the window: a sound track that starts after it or ends before it (the file's
        duration is its pictures'), as the pictures' window says; else its packets decoded to nothing there."""
        at = f"the clip at {self.t0 - self.origin:.2f}s"
        begins, ends = self.begins - self.origin, None if self.ends is None else self.ends - self.origin
        if self.after and self.begins >= self.t0 + self.seconds - _EPS:
            return SoundElsewhere(f"{at} ends before the sound's start at {begins:.2f}s", begins, ends)
        if not self.after and ends is not None and self.ends <= self.t0 + _EPS:
            return SoundElsewhere(f"{at} starts after the sound's end at {ends:.2f}s", begins, ends)
        return DecodeError("no audio decoded in the window")

    def result(self, rate: int) -> np.ndarray:
        if not self.covered.any():
            raise self._uncovered()
        mono = self.buffer.mean(axis=0) if self.buffer.shape[0] > 1 else self.buffer[0]
        if self.rate == rate:
            return mono
        with torch.inference_mode():
            out = _resampler(self.rate, rate)(torch.from_numpy(mono)).numpy()
        n = round(self.seconds * rate)
        return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


@functools.lru_cache(maxsize=8)
def _resampler(source: int, target: int) -> AT.Resample:
    return AT.Resample(source, target)  # the sinc kernel is built once per rate pair, not per clip


_SCALE = {"s16": 32768.0, "s16p": 32768.0, "s32": 2147483648.0, "s32p": 2147483648.0}


def sample_position(time: float | None, start: float, rate: int, following: int | None, time_base: float) -> int:
    """Where a frame of sound with the time ``time`` (None: unknown) starts, in samples at ``rate`` from ``start``:
    at ``following``, the sample after the frame before, where its time is that one's within the stream's
    ``time_base``, else at its time rounded. Matroska rounds times to 1 ms, 44 samples at 44.1 kHz, where AAC frames
    last 23.2 ms: placed by their times, they overlapped or left gaps every frame (until 2026-12-01)."""
    if following is not None and (time is None or abs(time - start - following / rate) <= time_base + 1e-6):
        return following
    return round(((start if time is None else time) - start) * rate)


def float_samples(frame) -> np.ndarray:
    """Float32 samples of an audio frame as channels x samples, whatever its sample format."""
    fmt = frame.format.name
    if frame.format.is_planar:
        # a plane per channel, taken one by one: PyAV's frame.planes (and so to_ndarray) counts planes up to a
        # NULL pointer, which a frame of 8 channels lacks, and reads the memory after the last (7.1 sound crashed)
        dtype = np.dtype(format_dtypes[fmt])
        count = len(frame.layout.channels)
        data = np.stack([np.frombuffer(AudioPlane(frame, i), dtype, frame.samples) for i in range(count)])
    else:  # one plane of interleaved samples
        data = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).T
    if fmt in _SCALE:
        return data.astype(np.float32) / _SCALE[fmt]
    if fmt in ("u8", "u8p"):
        return (data.astype(np.float32) - 128.0) / 128.0
    return data.astype(np.float32, copy=False)
