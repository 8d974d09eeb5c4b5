"""The video stem computed over 2 x 2 pixel blocks (xdc.models.stem): the same model and training, another kernel."""

import copy
from pathlib import Path

import pytest
import torch

from conftest import ready_trainer, synthetic_manifest
from xdc.config import load_config
from xdc.errors import UserError
from xdc.models.encoders import build_encoder
from xdc.models.padding import pad_middle_widths
from xdc.models.stem import space_to_depth_stem
from xdc.training.checkpoint import load


def tiny_video_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("video", load_config(None, preset="tiny").model).double()  # float64: exact comparisons


@pytest.mark.parametrize("pad", [0, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_stem_over_pixel_blocks_computes_and_trains_like_the_plain_one(pad, channels_last):
    plain = tiny_video_encoder()
    blocks = copy.deepcopy(plain)
    if pad:  # padding first: the stem keeps its 3 zero output channels (5 -> 8 in tiny)
        pad_middle_widths(blocks, pad)
    assert space_to_depth_stem(blocks, (32, 32)) == 1  # the stem's 1 x 7 x 7 convolution, nothing else
    assert space_to_depth_stem(blocks, (32, 32)) == 0
    assert "computed over 2 x 2 pixel blocks" in repr(blocks.stem[0]) and "pixel" not in repr(blocks.layer1)
    assert ("zero channels added: 0 in, 3 out" in repr(blocks.stem[0])) == bool(pad)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    for encoder in (plain, blocks):
        encoder.to(memory_format=layout)
    x = torch.randn(4, 3, 4, 32, 32, dtype=torch.float64).contiguous(memory_format=layout)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01) for m in (plain, blocks)]
    for _ in range(3):
        outputs = []
        for model, optimizer in zip((plain, blocks), optimizers):
            optimizer.zero_grad()
            out = model(x)
            out.square().mean().backward()
            optimizer.step()
            outputs.append(out)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(blocks.stem[0].weight.grad, plain.stem[0].weight.grad, rtol=0, atol=1e-10)
    assert plain.stem[0].weight.grad.abs().max() > 0
    state, expected = blocks.state_dict(), plain.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].shape == value.shape
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-9, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("pad", [0, 8])
def test_an_empty_batch_goes_through_the_stem_over_pixel_blocks(pad):
    """A step without clips (a DDP rank whose draws ran out, a finetuning batch whose clips all failed) runs the
    encoder on an empty batch; pixel_unshuffle returns such a tensor as it is, and the 12-channel convolution met 3
    channels (a RuntimeError that stopped the rank)."""
    plain = tiny_video_encoder()
    blocks = copy.deepcopy(plain)
    if pad:
        pad_middle_widths(blocks, pad)
    space_to_depth_stem(blocks, (32, 32))
    empty = torch.zeros(0, 3, 4, 32, 32, dtype=torch.float64)
    for model in (plain, blocks):
        out = model(empty)
        assert out.shape == (0, 64)
        (out.sum() * 0.0).backward()  # as DDP's empty step: every parameter takes part, with zero gradients
        assert model.stem[0].weight.grad is not None and not model.stem[0].weight.grad.any()


def test_frames_that_do_not_split_into_pixel_blocks_are_refused():
    with pytest.raises(ValueError, match="do not split into 2 x 2 pixel blocks"):
        space_to_depth_stem(tiny_video_encoder(), (33, 32))
    with pytest.raises(UserError, match="train.s2d_stem needs an even data.clip.crop"):
        load_config(None, ["train.s2d_stem=true", "data.clip.crop=111"])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return synthetic_manifest(tmp_path_factory.mktemp("stem"), 16, 4, seed=0)


def test_the_trainer_computes_the_stem_over_blocks_on_request_and_saves_the_plain_model(manifest, tmp_path):
    plain, blocks = (ready_trainer(manifest, tmp_path / name, "train.pad_widths=8", f"train.s2d_stem={s2d}")
                     for name, s2d in (("plain", "false"), ("blocks", "true")))  # fmt: skip
    assert "pixel blocks" in repr(blocks.encoders["video"]) and "pixel blocks" not in repr(plain.encoders)
    batch = next(iter(plain._train_loader()))
    losses = [trainer._step(trainer.train_model, batch)[0] for trainer in (plain, blocks)]
    torch.testing.assert_close(losses[1], losses[0])
    blocks._save()
    saved = load(tmp_path / "blocks" / "checkpoints" / "last.pt")["encoders"]
    video = {key.removeprefix("video."): value for key, value in saved.items() if key.startswith("video.")}
    build_encoder("video", plain.cfg.model).load_state_dict(video)  # strict: the plain model's keys and shapes


def test_a_compiled_stem_over_blocks_matches_the_plain_one():
    """Through torch.compile's graph capture (aot_eager: Inductor's code generation is what a GPU run adds)."""
    plain = tiny_video_encoder().float()
    blocks = copy.deepcopy(plain)
    space_to_depth_stem(blocks, (32, 32))
    compiled = torch.compile(blocks, backend="aot_eager")
    x = torch.randn(2, 3, 4, 32, 32)
    for model in (plain, compiled):
        model(x).square().mean().backward()
    grad = plain.stem[0].weight.grad  # float32 sums in another order: within 1e-4 of the largest gradient
    torch.testing.assert_close(blocks.stem[0].weight.grad, grad, rtol=0, atol=1e-4 * grad.abs().max().item())
    torch._dynamo.reset()
