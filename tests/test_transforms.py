"""The clip transforms against torchvision's v2 pipeline, which they reimplement on plain tensors for speed, and the
training geometry computed on a batch (DeviceCrops) against the same."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from xdc.config import load_config
from xdc.data.transforms import VIDEO_MEAN, VIDEO_STD, DeviceCrops, NormalizeVideo, VideoTransform
from xdc.errors import UserError


def reference(cfg, train: bool) -> v2.Compose:
    """The pipeline VideoTransform replaces: torchvision v2 on a Video tv_tensor."""
    aug, crop = cfg.augment, cfg.clip.crop
    if train:
        geometry = [v2.RandomShortestSize(list(range(aug.scale_min, aug.scale_max + 1))), v2.RandomCrop(crop)]
        geometry += [v2.RandomHorizontalFlip()] if aug.flip else []
    else:
        geometry = [v2.Resize(aug.scale_min), v2.CenterCrop(crop)]
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(VIDEO_MEAN, VIDEO_STD)])


def run_reference(pipeline: v2.Compose, frames: np.ndarray) -> torch.Tensor:
    return pipeline(tv_tensors.Video(torch.from_numpy(frames).permute(0, 3, 1, 2))).permute(1, 0, 2, 3)


# Frame sizes where v2's int(side * r) gives the drawn short side exactly (see the next test for where it does not).
# torchvision resizes uint8 frames as they are on a CPU with AVX2 or wider, else in float32, rounded: both checked,
# whatever this CPU is, by what the CPU reports to both.
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    "shape", [(4, 128, 171), (4, 171, 128), (3, 288, 360), (2, 96, 128), (2, 130, 200), (1, 90, 90)]
)
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_video_transform_equals_torchvision_v2(train, shape, flip, capability, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    cfg = load_config(None, [f"data.augment.flip={str(flip).lower()}"], preset="paper")
    frames = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, theirs = VideoTransform(cfg.data, train), reference(cfg.data, train)
    for seed in range(12):  # several draws: different sizes, crops, flips
        torch.manual_seed(seed)
        got = ours(frames)
        after_ours = torch.rand(())
        torch.manual_seed(seed)
        want = run_reference(theirs, frames)
        assert torch.rand(()) == after_ours  # the same draws from the global RNG, in number and order
        assert got.shape == (3, shape[0], 112, 112) and got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    if not train:
        assert torch.equal(ours(frames), ours(frames))  # evaluation: no randomness


def test_a_loader_worker_imports_no_torchvision():
    """A worker started by spawn (macOS) imports its dataset's modules at every loader's start; torchvision took
    1.1 of their 2.4 s on the 2-core CPU until 2026-12-01."""
    code = "import sys, xdc.data.datasets; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_short_side_is_the_drawn_size_where_v2_rounds_it_down():
    # On a 360 x 640 frame v2 resizes to int(360 * (115 / 360)) = 114 rows: with a 115 px crop it fails.
    cfg = load_config(None, ["data.clip.crop=115", "data.augment.scale_min=115", "data.augment.scale_max=115"])
    frames = np.random.default_rng(0).integers(0, 256, (2, 360, 640, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="larger than"):
        run_reference(reference(cfg.data, train=True), frames)
    torch.manual_seed(0)
    assert VideoTransform(cfg.data, train=True)(frames).shape == (3, 2, 115, 115)


def test_scale_jitter_changes_the_crop():
    cfg = load_config(None, [], preset="paper")
    frames = np.random.default_rng(0).integers(0, 256, (2, 128, 171, 3), dtype=np.uint8)
    transform = VideoTransform(cfg.data, train=True)
    clips = []
    for seed in range(6):
        torch.manual_seed(seed)
        clips.append(transform(frames))
    assert len({c.sum().item() for c in clips}) == len(clips)


@pytest.mark.parametrize("scale", [("100", "160"), ("140", "130")])
def test_scales_that_cannot_give_the_crop_are_refused(scale):
    overrides = [f"data.augment.scale_min={scale[0]}", f"data.augment.scale_max={scale[1]}"]
    with pytest.raises(UserError, match="crop <= data.augment.scale_min <= data.augment.scale_max"):
        load_config(None, overrides)


def float_reference(transform: VideoTransform, frames: np.ndarray, seed: int) -> torch.Tensor:
    """The training geometry computed in float32 by torchvision (no uint8 rounding after the resize), normalised."""
    torch.manual_seed(seed)
    h, w, top, left, flip = transform._draw(*frames.shape[1:3])
    x = F.resize(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), [h, w], antialias=True)
    x = x[..., top : top + transform.crop, left : left + transform.crop]
    return NormalizeVideo()((x.flip(-1) if flip else x).permute(1, 0, 2, 3))


def test_device_crops_compute_the_training_geometry_for_a_batch_of_frame_sizes():
    cfg = load_config(None, [], preset="paper")  # short side 128 = scale_min: every resize enlarges or keeps
    transform, crops = VideoTransform(cfg.data, train=True, normalize=False), DeviceCrops(112)
    normalized = VideoTransform(cfg.data, train=True)
    rng = np.random.default_rng(0)
    shapes = [(4, 128, 228), (4, 228, 128), (4, 128, 128), (4, 96, 128), (4, 128, 171)]  # 16:9 to 3:4, 96p
    frames = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]
    unit = 1 / 255 / min(VIDEO_STD)  # one uint8 level, normalised
    for seed in range(8):  # several draws: sizes, crops at the frames' edges, flips
        parts, grids = [], []
        for i, f in enumerate(frames):
            torch.manual_seed(seed * 10 + i)
            part, grid = transform.plan(f)
            after_plan = torch.rand(())
            torch.manual_seed(seed * 10 + i)
            normalized(f)
            assert torch.rand(()) == after_plan  # the same draws as the workers' transform, in number and order
            assert part.shape == (4, 114, 114, 3) and part.dtype == torch.uint8 and grid.dtype == torch.float64
            parts.append(part)
            grids.append(grid)
        got = crops(torch.stack(parts), torch.stack(grids))
        assert got.shape == (len(frames), 3, 4, 112, 112) and got.dtype == torch.float32 and got.is_contiguous()
        for i, f in enumerate(frames):
            # torchvision's float resize, to float rounding; its uint8 resize (the workers'), to its rounding
            torch.testing.assert_close(got[i], float_reference(transform, f, seed * 10 + i), rtol=0, atol=0.02 * unit)
            torch.manual_seed(seed * 10 + i)
            torch.testing.assert_close(got[i], normalized(f), rtol=0, atol=1.01 * unit)


@pytest.mark.parametrize("flip", [True, False])
def test_device_crops_of_an_unscaled_whole_frame_are_the_frame(flip):
    # Crop = scale = frame size: no resize, the crop at the frame's edges, where plan() repeats edge pixels.
    cfg = load_config(None, ["data.augment.scale_min=112", "data.augment.scale_max=112"], preset="paper")
    frames = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    transform = VideoTransform(cfg.data, train=True, normalize=False)
    torch.manual_seed(0)
    while True:
        part, grid = transform.plan(frames)
        if (grid[3] < 0) == flip:
            break
    got = DeviceCrops(112)(part[None], grid[None])[0]
    want = NormalizeVideo()(torch.from_numpy(frames).permute(3, 0, 1, 2))
    torch.testing.assert_close(got, want.flip(-1) if flip else want, rtol=0, atol=1e-4)  # float32 grid rounding


def test_plan_is_only_for_frames_the_resize_enlarges():
    cfg = load_config(None, [], preset="paper")
    frames = np.zeros((2, 240, 320, 3), np.uint8)
    with pytest.raises(ValueError, match="would be shrunk"):
        VideoTransform(cfg.data, train=True, normalize=False).plan(frames)


def _masked_cfg():
    return load_config(None, ["data.augment.freq_mask=12", "data.augment.time_mask=30"], preset="paper").data


def test_audio_masks_are_torchaudios_for_the_same_seed():
    import torchaudio.transforms as AT

    from xdc.data.transforms import AudioTransform

    cfg = _masked_cfg()
    transform = AudioTransform(cfg, train=True)
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    masked = 0
    for seed in range(30):
        torch.manual_seed(seed)
        ours = transform(wave)
        torch.manual_seed(seed)  # the transform as it was, with torchaudio's masking modules
        x = torch.from_numpy(wave) * 10 ** ((torch.rand(()) * 2 - 1) * cfg.augment.gain_db / 20)
        theirs = AT.TimeMasking(30)(AT.FrequencyMasking(12)(transform.logmel(x).unsqueeze(0)))
        assert torch.equal(ours, theirs), seed
        masked += bool((ours == 0).any())
    assert masked > 20  # the masks were there to compare (a width is drawn below its maximum, sometimes 0)


@pytest.mark.parametrize("cfg", [_masked_cfg(), load_config(None, preset="tiny").data], ids=["masks", "none"])
def test_masks_planned_in_the_workers_come_out_the_same_from_the_batch_log_mel(cfg):
    from xdc.data.transforms import AudioTransform, DeviceLogMel

    waves = np.random.default_rng(1).normal(0, 0.1, (8, round(cfg.clip.audio_span * cfg.clip.sample_rate)))
    in_workers, planned = [], []
    for seed, wave in enumerate(waves.astype(np.float32)):
        torch.manual_seed(seed)
        in_workers.append(AudioTransform(cfg, train=True)(wave))
        torch.manual_seed(seed)
        planned.append(AudioTransform(cfg, train=True, logmel=False).plan(wave))
    batch, intervals = torch.stack([w for w, _ in planned]), [m for _, m in planned]
    on_batch = DeviceLogMel(cfg, "cpu")(batch, torch.stack(intervals) if cfg.augment.freq_mask else None)
    expected = torch.stack(in_workers)
    assert torch.equal(on_batch == 0, expected == 0)  # the same masks, bin for bin
    torch.testing.assert_close(on_batch, expected, rtol=1e-5, atol=1e-5)
