"""The clip reader on files the project writes itself, plus every file of the shared media zoo."""

import multiprocessing
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import frame_index, gray_frames, shared_data, square_geometry, write_square
from xdc.config import ClipConfig, MelConfig
from xdc.data.audio import LogMel
from xdc.data.decode import DecodeError, read_clip, read_clips
from xdc.data.encode import write_av
from xdc.errors import UserError


def spec(**kw) -> ClipConfig:
    kw.setdefault("decode_short_side", 0)
    return ClipConfig(**kw)


def test_round_trip_frames_timestamps_and_audio_length(tmp_path):
    path = tmp_path / "a.mp4"
    fps, seconds, rate = 16, 3, 16000
    write_av(path, gray_frames(fps * seconds), fps, np.zeros(rate * seconds, np.float32), rate)

    with av.open(str(path)) as c:
        times = [f.time for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert len(times) == fps * seconds
    np.testing.assert_allclose(times, np.arange(fps * seconds) / fps, atol=1e-3)
    assert abs(samples - rate * seconds) <= 1024  # AAC pads to whole 1024-sample frames

    clip = read_clip(str(path), 1.0, spec(frames=16, fps=16))
    assert clip.video.shape == (16, 32, 48, 3) and clip.video.dtype == np.uint8
    np.testing.assert_array_equal(frame_index(clip.video), np.arange(16, 32))
    assert clip.audio.shape == (16000,) and clip.audio.dtype == np.float32
    assert clip.video_padded == 0 and clip.audio_padded == 0


def test_target_fps_resamples_by_timestamp(tmp_path):
    path = tmp_path / "a.mp4"
    write_av(path, gray_frames(48), 16, None)
    clip = read_clip(str(path), 0.5, spec(frames=8, fps=8), audio=False)
    np.testing.assert_array_equal(frame_index(clip.video), 8 + 2 * np.arange(8))  # every other source frame
    assert clip.audio is None


def test_variable_frame_rate_picks_the_frame_on_screen(tmp_path):
    path = tmp_path / "vfr.mp4"
    gaps = np.where(np.arange(19) % 2, 0.02, 0.1)  # frames at 0, .1, .12, .22, .24, ...
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    write_av(path, gray_frames(20), 10, None, times=times)
    clip = read_clip(str(path), 0.0, spec(frames=10, fps=10), audio=False)
    targets = np.arange(10) / 10
    expected = [np.flatnonzero(times <= t + 1e-6)[-1] for t in targets]
    np.testing.assert_array_equal(frame_index(clip.video), expected)


def test_pictures_dropped_before_the_clip_are_never_the_one_on_screen(tmp_path):
    # One keyframe, B-frames (x264 uses them for the moving texture) and uneven gaps (8 fps taken from 25 fps):
    # the reader lets the decoder drop B-frames read before the clip; judging them by a packet's duration (its gap
    # in decoding order, not on screen) would drop some that are on screen at the clip's start.
    path = tmp_path / "b.mp4"
    frames, texture = gray_frames(60), np.random.default_rng(0).integers(0, 256, (32, 200, 3), dtype=np.uint8)
    for i in range(60):
        frames[i, :, 16:] = texture[:, 2 * i : 2 * i + 32]  # the left 16 columns keep the gray of the frame's index
    times = np.round(np.arange(60) / 8 * 25) / 25
    write_av(path, frames, 8, None, times=times)
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.skip_frame = "NONREF"
        assert len(list(c.decode(video=0))) <= 40  # a third or more can be dropped: the test exercises that path
    for start in np.linspace(0.05, 6.5, 50):
        clip = read_clip(str(path), float(start), spec(frames=8, fps=8), audio=False)
        expected = [np.flatnonzero(times <= t + 1e-3)[-1] for t in start + np.arange(8) / 8]
        np.testing.assert_array_equal(frame_index(clip.video[:, :, :16]), expected, err_msg=f"clip at {start:.3f} s")


def test_a_file_that_is_not_what_its_extension_says_still_reads(tmp_path):
    # .mp4 files are opened with the mp4 demuxer named, skipping FFmpeg's probe; a Matroska file named .mp4 fails
    # that open and is probed instead.
    write_av(tmp_path / "a.mkv", gray_frames(48), 16, np.zeros(16000 * 3, np.float32), 16000)
    (tmp_path / "a.mkv").rename(tmp_path / "a.mp4")
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.format.name.startswith("matroska")
    clip = read_clip(str(tmp_path / "a.mp4"), 1.0, spec(frames=8, fps=16))
    np.testing.assert_array_equal(frame_index(clip.video), np.arange(16, 24))
    assert clip.audio.shape == (8000,)  # half a second: 8 frames at 16 fps


def test_flash_and_click_are_aligned_within_one_frame(tmp_path):
    fps, rate, flash_t = 25, 44100, 1.2
    frames = np.zeros((75, 48, 64, 3), np.uint8)
    frames[round(flash_t * fps)] = 255
    audio = np.zeros((2, 3 * rate), np.float32)  # stereo at 44.1 kHz: exercises downmix and resampling
    click = round(flash_t * rate)
    audio[:, click : click + 200] = 0.9
    path = tmp_path / "flash.mp4"
    write_av(path, frames, fps, audio, rate)

    start = 0.8
    clip = read_clip(str(path), start, spec(frames=25, fps=25, sample_rate=16000))
    flash_at = np.argmax(clip.video.reshape(25, -1).mean(axis=1)) / fps
    click_at = np.argmax(np.abs(clip.audio)) / 16000
    assert abs(flash_at - (flash_t - start)) < 1e-6
    assert abs(click_at - flash_at) <= 1 / fps


def test_audio_starting_late_and_ending_early_is_padded_and_reported(tmp_path):
    path = tmp_path / "late.mp4"
    rate = 16000
    write_av(path, gray_frames(48), 16, 0.5 * np.ones(rate, np.float32), rate, audio_start=1.0)  # audio 1 s..2 s
    before = read_clip(str(path), 0.5, spec(frames=8, fps=8))
    assert before.audio_padded == pytest.approx(0.5, abs=0.07)  # AAC priming may start it one frame early
    assert np.abs(before.audio[: rate // 4]).max() < 1e-3
    after = read_clip(str(path), 1.75, spec(frames=8, fps=8))
    assert after.audio_padded == pytest.approx(0.75, abs=0.07)
    assert np.abs(after.audio[-rate // 4 :]).max() < 1e-3


@pytest.mark.parametrize("pictures", [True, False])
def test_a_clip_wholly_outside_the_sound_says_where_the_sound_is(tmp_path, pictures):
    """A window with no sample of a track that starts late or ends early is an error, as one without a picture
    is; until 2026-12-03 its reason was "no audio decoded in the window", as if the sound failed to decode."""
    path = tmp_path / "gap.mp4"
    write_av(path, gray_frames(64), 16, 0.5 * np.ones(16000, np.float32), 16000, audio_start=1.0)  # audio 1 s..2 s
    with pytest.raises(DecodeError, match=r"^the clip at 0\.00s ends before the sound's start at (0\.9\d|1\.00)s$"):
        read_clip(str(path), 0.0, spec(frames=4, fps=8), video=pictures)
    with pytest.raises(DecodeError, match=r"^the clip at 3\.00s starts after the sound's end at (1\.9\d|2\.0\d)s$"):
        read_clip(str(path), 3.0, spec(frames=4, fps=8), video=pictures)


def test_clip_past_the_end_repeats_the_last_frame_and_says_so(tmp_path):
    path = tmp_path / "short.mp4"
    write_av(path, gray_frames(16), 16, np.zeros(16000, np.float32))
    clip = read_clip(str(path), 0.5, spec(frames=8, fps=8))
    assert clip.video_padded == pytest.approx(0.5)
    np.testing.assert_array_equal(frame_index(clip.video), [8, 10, 12, 14, 15, 15, 15, 15])


def test_a_clip_starting_after_the_last_picture_is_an_error_not_a_frozen_frame(tmp_path):
    # Sound that outlasts the pictures, or a header that overstates the duration: the window has no picture.
    path = tmp_path / "long_sound.mp4"
    write_av(path, gray_frames(16), 16, np.zeros(48000, np.float32))  # 1 s of video, 3 s of audio
    with pytest.raises(DecodeError, match=r"the clip at 1\.50s starts after the video's end at 1\.00s"):
        read_clip(str(path), 1.5, spec(frames=8, fps=8))
    assert read_clip(str(path), 1.5, spec(frames=8, fps=8), video=False).audio.shape == (16000,)  # audio alone


def test_rotation_metadata_and_decode_resize(tmp_path):
    path = tmp_path / "rot.mp4"
    write_av(path, gray_frames(8, height=32, width=64), 8, None, rotation=90)
    clip = read_clip(str(path), 0.0, spec(frames=4, fps=8), audio=False)
    assert clip.video.shape[1:3] == (64, 32)  # displayed upright: portrait
    small = read_clip(str(path), 0.0, spec(frames=4, fps=8, decode_short_side=16), audio=False)
    assert small.video.shape[1:3] == (32, 16)


def _quadrants(frames: int, height: int, width: int) -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w, 0] = image[:h, w:, 1] = image[h:, :w, 2] = 255
    image[h:, w:] = 255
    return np.repeat(image[None], frames, axis=0)


def test_crop_box_cuts_the_region_before_scaling(tmp_path):
    path = tmp_path / "quad.mp4"
    write_av(path, _quadrants(8, 64, 96), 8, None)
    box = (0.5, 0.0, 1.0, 0.5)  # top-right quadrant: 48 x 32 pixels
    clip = read_clip(str(path), 0.0, spec(frames=2, fps=8, crop_box=box), audio=False)
    assert clip.video.shape == (2, 32, 48, 3)
    centre = clip.video[:, 4:-4, 4:-4].reshape(-1, 3).mean(axis=0)
    assert centre[1] > 200 and centre[0] < 40 and centre[2] < 40  # all green
    scaled = read_clip(str(path), 0.0, spec(frames=2, fps=8, crop_box=box, decode_short_side=16), audio=False)
    assert scaled.video.shape == (2, 16, 24, 3)
    # The box is in displayed coordinates: a file rotated by 90 degrees shows another quadrant there.
    rotated = tmp_path / "quad_rot.mp4"
    write_av(rotated, _quadrants(8, 64, 96), 8, None, rotation=90)
    upright = read_clip(str(rotated), 0.0, spec(frames=2, fps=8), audio=False).video[0]
    cut = read_clip(str(rotated), 0.0, spec(frames=2, fps=8, crop_box=box), audio=False).video[0]
    assert cut.shape == (48, 32, 3)
    expected = upright[:48, 32:].reshape(-1, 3).mean(axis=0)
    assert np.abs(cut.reshape(-1, 3).mean(axis=0) - expected).max() < 10


@pytest.mark.parametrize("width, height, sar, side, shown, at_128", [
    (720, 480, Fraction(8, 9), 240, (480, 640), (128, 171)),  # NTSC DVD, 4:3
    (720, 480, Fraction(32, 27), 256, (480, 853), (128, 227)),  # NTSC DVD, 16:9
    (96, 64, Fraction(4, 3), 32, (64, 128), (128, 256)),  # as 1440 x 1080 HDV: enlarged to the short side
], ids=["dvd-4:3", "dvd-16:9", "hdv"])  # fmt: skip
def test_non_square_pixels_are_read_as_displayed(tmp_path, width, height, sar, side, shown, at_128):
    """Until 2026-12-02 pictures were read at their coded size: a DVD's circles came out as ellipses."""
    path = tmp_path / "anamorphic.mp4"
    write_square(path, width, height, sar, side)
    for short, size in ((0, shown), (128, at_128)):
        video = read_clip(str(path), 0.0, spec(frames=2, fps=8, decode_short_side=short), audio=False).video
        assert video.shape == (2, *size, 3)
        scale = size[0] / height
        w, h, x, y = square_geometry(video[0])
        assert abs(w - side * scale) < 0.75 and abs(h - side * scale) < 0.75, (w, h)  # square, as shown
        assert abs(x - (size[1] - 1) / 2) < 1 and abs(y - (size[0] - 1) / 2) < 1  # centred


def test_non_square_pixels_with_a_crop_box_and_rotation(tmp_path):
    """The crop box is in displayed coordinates, and the pixels' aspect applies to the coded picture, before it is
    turned upright: a square stays square however the file is turned and cut."""
    path = tmp_path / "anamorphic.mp4"
    write_square(path, 96, 64, Fraction(4, 3), 32)  # shown 128 x 64
    middle = (0.25, 0.0, 0.75, 1.0)  # the middle half of the width: 64 x 64 shown, 48 x 64 coded
    for short, size in ((0, 64), (16, 16)):
        video = read_clip(str(path), 0.0, spec(frames=2, fps=8, crop_box=middle, decode_short_side=short),
                          audio=False).video  # fmt: skip
        assert video.shape == (2, size, size, 3)
        w, h, x, y = square_geometry(video[0])
        assert abs(w - size / 2) < 0.75 and abs(h - size / 2) < 0.75 and abs(x - y) < 1, (w, h, x, y)
    turned = tmp_path / "turned.mp4"
    write_square(turned, 96, 64, Fraction(4, 3), 32, rotation=90)  # shown 64 x 128, upright
    middle = (0.0, 0.25, 1.0, 0.75)  # the middle half of the upright height: 64 x 64
    for box, short, size in ((None, 0, (128, 64)), (None, 32, (64, 32)), (middle, 0, (64, 64)), (middle, 32, (32, 32))):
        video = read_clip(str(turned), 0.0, spec(frames=2, fps=8, crop_box=box, decode_short_side=short),
                          audio=False).video  # fmt: skip
        assert video.shape == (2, *size, 3)
        w, h, x, y = square_geometry(video[0])
        side = 32 * size[1] / 64
        assert abs(w - side) < 0.75 and abs(h - side) < 0.75, (box, short, w, h)
        assert abs(x - (size[1] - 1) / 2) < 1 and abs(y - (size[0] - 1) / 2) < 1


def test_an_implausible_pixel_aspect_is_taken_for_broken_metadata(tmp_path):
    path = tmp_path / "broken.mp4"
    write_av(path, gray_frames(4, height=32, width=48), 8, None, sample_aspect=Fraction(10))
    with av.open(str(path)) as c:
        assert c.streams.video[0].sample_aspect_ratio == 10
    assert read_clip(str(path), 0.0, spec(frames=2, fps=8), audio=False).video.shape == (2, 32, 48, 3)


def test_crop_box_is_validated():
    with pytest.raises(UserError, match="crop_box"):
        ClipConfig(crop_box=(0.6, 0.0, 0.4, 1.0))
    with pytest.raises(UserError, match="crop_box"):
        ClipConfig(crop_box=(0.0, 0.0, 1.0))


def test_odd_size_and_multichannel(tmp_path):
    path = tmp_path / "odd.mp4"
    left = np.sin(np.arange(32000) * 0.05).astype(np.float32) * 0.5
    write_av(path, gray_frames(32, height=50, width=66), 16, np.stack([left, -left]), 16000)
    clip = read_clip(str(path), 0.5, spec(frames=8, fps=8, decode_short_side=37))
    assert clip.video.shape == (8, 37, 49, 3)
    assert np.abs(clip.audio).max() < 0.05  # opposite channels cancel in the mono mix


def write_mpeg4(path, width: int, height: int) -> None:
    """Four black pictures of any size (x264 takes no odd sizes: MPEG-4 Part 2)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), "rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("width, height", [(1, 1), (3, 5), (7, 1), (1, 16)])
def test_tiny_and_odd_sources_decode_to_the_short_side_asked(tmp_path, width, height):
    """A 1-pixel side scales to the short side asked and nothing else.
    A 1 x 1 source read at 2 pixels is an ``xdc prepare`` copy: H.264 needs 2 (prepare.output_size)."""
    path = tmp_path / f"{width}x{height}.mp4"
    write_mpeg4(path, width, height)
    for short in (0, 1, 16):
        video = read_clip(str(path), 0.0, spec(frames=2, fps=8, decode_short_side=short), audio=False).video
        scale = short / min(width, height) if short else 1  # 0: the source's size
        assert video.shape == (2, round(height * scale), round(width * scale), 3)  # the long side in proportion


@pytest.mark.parametrize("width, height, box", [(1, 17, None), (40, 2, None), (64, 32, (0.0, 0.0, 0.02, 1.0))])
def test_pictures_far_narrower_than_tall_or_wide_are_refused_with_their_size(tmp_path, width, height, box):
    """Until 2026-12-03 a 1 x 240 stream was read 128 x 30720 at the default short side: 94 MB a clip."""
    path = tmp_path / f"{width}x{height}.mp4"
    write_mpeg4(path, width, height)
    with pytest.raises(DecodeError, match=r"pictures of \d+ x \d+ \(as displayed\): one side over 16 times the other"):
        read_clip(str(path), 0.0, spec(frames=2, fps=8, decode_short_side=128, crop_box=box), audio=False)


def test_missing_streams_and_garbage_raise_decode_error(tmp_path):
    video_only = tmp_path / "v.mp4"
    write_av(video_only, gray_frames(8), 8, None)
    with pytest.raises(DecodeError, match="no audio stream"):
        read_clip(str(video_only), 0.0, spec())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DecodeError) as err:
        read_clip(str(junk), 0.0, spec())
    assert "\n" not in str(err.value) and str(junk) not in str(err.value)


def test_logmel_shape_follows_the_spec():
    mel = LogMel(MelConfig(), 16000)
    assert mel(torch.randn(16000)).shape == (40, 100)
    assert mel(torch.randn(3, 8000)).shape == (3, 40, 50)
    assert torch.isfinite(mel(torch.zeros(16000))).all()


def test_every_shared_media_file_decodes_or_gives_a_reason():
    media = shared_data("media")
    outcomes = {}
    for path in sorted(media.iterdir()):
        try:
            clip = read_clip(str(path), 0.5, ClipConfig(), audio=False)
            assert clip.video.ndim == 4 and clip.video.shape[-1] == 3
            outcomes[path.name] = "ok"
        except DecodeError as e:
            assert str(e) and "\n" not in str(e)
            outcomes[path.name] = str(e)
    for good in ("chaplin.mp4", "test.avi", "grid_bbaf2n.mpg", "big_buck_bunny_432_433.webm"):
        assert outcomes[good] == "ok", (good, outcomes[good])
    # video_90.mov has 3 frames (0.1 s): a clip at 0.5 s would be its last picture frozen; from 0 it pads the end
    assert outcomes["video_90.mov"] == "the clip at 0.50s starts after the video's end at 0.10s"
    assert read_clip(str(media / "video_90.mov"), 0.0, ClipConfig(), audio=False).video_padded > 0
    for bad in ("empty.mp4", "random_bytes.mp4", "not_a_video.avi"):
        assert outcomes[bad] != "ok"


@pytest.mark.parametrize("name", ["test.avi", "chaplin.mp4", "flipping_a_pancake.mkv"])
def test_clips_after_a_seek_match_one_clip_read_from_the_start(name):
    # Real B-frame files in three containers. A clip read after a seek, with pictures dropped before it where the
    # container gives each its presentation time, shows what a clip read from 0 shows at those times; AVI guesses
    # its times (packed B-frames) and dropping there breaks this.
    path = str(shared_data("media") / name)
    whole = read_clip(path, 0.0, spec(frames=48, fps=8), audio=False).video
    for k in range(1, 40):
        clip = read_clip(path, k / 8, spec(frames=8, fps=8), audio=False).video
        np.testing.assert_array_equal(clip, whole[k : k + 8], err_msg=f"{name}: clip at {k / 8} s")


@pytest.mark.parametrize("name", ["generated", "test.avi", "chaplin.mp4", "flipping_a_pancake.mkv"])
def test_clips_read_with_one_open_are_the_clips_read_alone(tmp_path, name):
    """read_clips reaches every clip after the first through a seek of the open file (which flushes its decoders):
    the pictures of one read_clip each, B-frames and all. A clip that fails (past the end) is that clip's error and
    the next one reads. With audio every clip opens the file afresh: AAC's decoder keeps state through a seek."""
    if name == "generated":
        path = str(tmp_path / "a.mp4")
        write_av(path, gray_frames(64), 16, (0.3 * np.sin(np.arange(64000) / 5)).astype(np.float32), 16000)
    else:
        path = str(shared_data("media") / name)
    starts, cfg = [0.0, 0.7, 1.3, 2.9, 60.0, 1.0], spec(frames=8, fps=8)
    for audio in (False, True):
        for start, got in zip(starts, read_clips(path, starts, cfg, audio=audio)):
            try:
                want = read_clip(path, start, cfg, audio=audio)
            except DecodeError as e:
                assert isinstance(got, DecodeError) and str(got) == str(e), (start, audio)
                continue
            assert not isinstance(got, DecodeError), (start, audio, got)
            np.testing.assert_array_equal(got.video, want.video, err_msg=f"{name} at {start} s")
            if audio:
                np.testing.assert_array_equal(got.audio, want.audio, err_msg=f"{name} at {start} s")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    errors = read_clips(str(junk), starts[:3], cfg)
    assert all(isinstance(e, DecodeError) and str(e).startswith("InvalidDataError") for e in errors)


def _frame_numbers(path: str) -> list[int]:
    return frame_index(read_clip(path, 1.0, spec(frames=8, fps=16), audio=False).video).tolist()


@pytest.mark.parametrize("threads", [1, 0])
def test_a_forked_child_reads_clips_after_its_parent_did(tmp_path, threads):
    # The single-threaded frame converter is kept per thread between clips. One with slice threads (threads=0)
    # must not be: a forked child (a loader worker) would inherit it without its threads and hang freeing it.
    path = str(tmp_path / "a.mp4")
    write_av(path, gray_frames(48), 16, None)
    parent = read_clip(path, 1.0, spec(frames=8, fps=16), audio=False, threads=threads)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_frame_numbers, (path,)).get(timeout=60) == frame_index(parent.video).tolist()
    assert frame_index(parent.video).tolist() == list(range(16, 24))


def _whole_track(path) -> np.ndarray:
    """The first channel of the audio track decoded in one pass from the file's start: what each clip's sound must
    equal, wherever the clip starts."""
    from xdc.data.decode import float_samples

    with av.open(str(path)) as c:
        return np.concatenate([float_samples(f) for f in c.decode(c.streams.audio[0])], axis=1)[0]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_a_clips_sound_is_the_whole_tracks_with_or_without_pictures(tmp_path, rate):
    """AAC rebuilds each frame from the one before: the first frame decoded after a seek is wrong, so the reader
    decodes from at least one whole frame before the clip (at 8 kHz a frame is 128 ms, more than the 0.1 s it
    kept before 2026-11-30, and sound read alone was decoded from the clip's own first frame)."""
    path = tmp_path / "tones.mp4"
    t = np.arange(4 * rate) / rate
    sound = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)).astype(np.float32)
    write_av(path, gray_frames(100), 25, sound, rate)  # a keyframe every 12 frames (x264's default is longer)
    whole = _whole_track(path)
    for start in (0.37, 1.0, 1.51, 2.0):
        first = round(start * rate)
        for pictures in (True, False):
            clip = read_clip(str(path), start, spec(frames=8, fps=8, sample_rate=rate), video=pictures)
            np.testing.assert_allclose(clip.audio, whole[first : first + rate], atol=1e-6,
                                       err_msg=f"start {start}, pictures {pictures}")  # fmt: skip


@pytest.mark.parametrize("pictures", [True, False])
def test_sound_in_matroska_follows_on_whatever_its_millisecond_timestamps(tmp_path, pictures):
    """Matroska keeps times in milliseconds, and AAC frames at 44.1 kHz last 23.2 ms: a frame placed by its
    rounded time overlapped the one before or left a gap (until 2026-12-01). Frames that follow on are placed
    back to back: the clip is the whole track's, shifted by at most the first frame's rounding."""
    rate = 44100
    path = tmp_path / "tones.mkv"
    t = np.arange(4 * rate) / rate
    write_av(path, gray_frames(100), 25, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    whole = _whole_track(path)
    for start in (0.37, 1.51, 2.0):
        clip = read_clip(str(path), start, spec(frames=8, fps=8, sample_rate=rate), video=pictures).audio
        first = round(start * rate)
        errors = [np.abs(clip[30:-30] - whole[first + lag + 30 : first + lag + rate - 30]).max()
                  for lag in range(-25, 26)]  # fmt: skip
        assert min(errors) < 1e-5, f"start {start}: off the track by {min(errors):.3f} at every shift within 0.5 ms"


def test_the_sound_fills_the_window_to_its_last_sample(tmp_path):
    """A frame of sound that starts less than a millisecond before the window's end still fills its last samples."""
    path = tmp_path / "tone.mp4"
    rate = 16000
    sound = (0.5 * np.sin(2 * np.pi * 500 * np.arange(2 * rate) / rate)).astype(np.float32)
    write_av(path, gray_frames(50), 25, sound, rate)
    whole = _whole_track(path)
    for start in (0.2805, 0.2809):  # windows [start, start + 1 s) whose end falls just after a frame's start
        clip = read_clip(str(path), start, spec(frames=8, fps=8), video=False)
        assert clip.audio_padded == 0
        np.testing.assert_allclose(clip.audio[-32:], whole[round(start * rate) + rate - 32 : round(start * rate) + rate],
                                   atol=1e-6)  # fmt: skip


def _mpeg_program_stream(path, frames: int, fps: int = 25, rate: int = 44100) -> None:
    """MPEG-1 video (a group every 12 pictures, B-frames) and MP2 sound in an MPEG program stream (.mpg), as old
    cameras and corpora (GRID) store them: FFmpeg seeks in it by byte position."""
    images = gray_frames(frames, 96, 128)
    t = np.arange(frames * rate // fps) / rate
    sound = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    chunk = rate // fps
    with av.open(str(path), "w", format="mpeg") as c:
        video = c.add_stream("mpeg1video", rate=fps)
        video.width, video.height, video.pix_fmt = 128, 96, "yuv420p"
        video.codec_context.gop_size, video.codec_context.max_b_frames = 12, 2
        audio = c.add_stream("mp2", rate=rate)
        audio.layout = "mono"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            c.mux(video.encode(frame))
            samples = av.AudioFrame.from_ndarray(sound[None, i * chunk : (i + 1) * chunk], format="flt", layout="mono")
            samples.sample_rate, samples.pts = rate, i * chunk
            c.mux(audio.encode(samples))
        c.mux(video.encode())
        c.mux(audio.encode())


def test_a_container_whose_seeks_land_after_the_clip_is_read_from_earlier(tmp_path):
    """In an MPEG program stream a seek to a time can land a group of pictures after it; the reader then seeks
    again, further back (before 2026-11-30 it repeated the first picture it got over the clip's start and left
    its sound silent there)."""
    path = tmp_path / "old.mpg"
    _mpeg_program_stream(path, 60)
    with av.open(str(path)) as c:
        origin = c.start_time / av.time_base
        pictures = [(f.time - origin, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]  # all, in order
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        c.seek(int((origin + 0.7) / stream.time_base), stream=stream, backward=True, any_frame=False)
        assert next(c.decode(stream)).time - origin > 0.7 + 0.04  # lands late: what this test is about
    for start in (0.3, 0.7, 0.8, 1.7):
        clip = read_clip(str(path), start, spec(frames=8, fps=25, sample_rate=16000))
        for k, got in enumerate(clip.video):  # the picture on screen at each target
            shown = max(i for i, (t, _) in enumerate(pictures) if t <= start + k / 25 + 1e-3)
            np.testing.assert_array_equal(got, pictures[shown][1], err_msg=f"start {start}, frame {k}")
        assert clip.audio_padded == 0 and np.abs(clip.audio[:400]).max() > 0.1
        (again,) = read_clips(str(path), [start], spec(frames=8, fps=25), audio=False)
        np.testing.assert_array_equal(again.video, clip.video)


def test_video_padded_counts_the_clip_after_the_last_picture_only(tmp_path):
    path = tmp_path / "two_seconds.mp4"
    write_av(path, gray_frames(16), 8, None)  # pictures at 0, 0.125, ..., 1.875 s: the last shows until 2 s
    assert read_clip(str(path), 1.0, spec(frames=8, fps=8), audio=False).video_padded == 0
    assert read_clip(str(path), 1.5, spec(frames=8, fps=8), audio=False).video_padded == 0.5


def test_a_clip_before_the_first_picture_is_padding_and_one_wholly_before_it_an_error(tmp_path):
    """A video that starts after its sound (its duration is the file's, from the sound's start): the clip's
    seconds before the first picture show it frozen, as those after the last picture show that one."""
    path = tmp_path / "late_pictures.mp4"
    write_av(path, gray_frames(16), 8, np.zeros(48000, np.float32), times=1 + np.arange(16) / 8)  # 1 s..3 s
    for read in (lambda start: read_clip(str(path), start, spec(frames=8, fps=8)),
                 lambda start: read_clips(str(path), [start], spec(frames=8, fps=8), audio=False)[0]):  # fmt: skip
        clip = read(0.5)
        np.testing.assert_array_equal(frame_index(clip.video), [0, 0, 0, 0, 0, 1, 2, 3])
        assert clip.video_padded == 0.5
        assert read(1.0).video_padded == 0
        with pytest.raises(DecodeError, match=r"the clip at 0\.00s ends before the video's first picture at 1\.00s"):
            clip = read(0.0)
            raise clip if isinstance(clip, DecodeError) else AssertionError(f"a clip of {clip.video_padded}s padded")


def test_a_real_mpeg_file_whose_seeks_land_late_even_at_its_start():
    """GRID's original .mpg: a seek to any time before 0.48 s lands there, so clips that start earlier are read
    from a new open of the file, without a seek."""
    path = str(shared_data("media") / "grid_bbaf2n.mpg")
    with av.open(path) as c:
        origin = c.start_time / av.time_base
        pictures = [(f.time - origin, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    for start in (0.2, 1.0, 2.9):
        clip = read_clip(path, start, spec(frames=8, fps=8, sample_rate=16000))
        for k, got in enumerate(clip.video):
            shown = max(i for i, (t, _) in enumerate(pictures) if t <= start + k / 8 + 1e-3)
            np.testing.assert_array_equal(got, pictures[shown][1], err_msg=f"start {start}, frame {k}")
        assert np.abs(clip.audio[:400]).max() > 0  # no silence where the seek landed after the start
