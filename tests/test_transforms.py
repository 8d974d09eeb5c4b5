"""The clip transforms against torchvision's v2 pipeline, which they reimplement on plain tensors for speed."""

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from xdc.config import load_config
from xdc.data.transforms import VIDEO_MEAN, VIDEO_STD, VideoTransform
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
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(4, 128, 171), (4, 171, 128), (3, 288, 360), (2, 96, 128), (2, 130, 200)])
@pytest.mark.parametrize("flip", [True, False])
def test_video_transform_equals_torchvision_v2(train, shape, flip):
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
