"""Padded middle widths (xdc.models.padding): the same model and training, wider tensors in between."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ready_trainer, synthetic_manifest
from xdc.config import load_config
from xdc.errors import UserError
from xdc.models.encoders import build_encoder
from xdc.models.padding import pad_middle_widths
from xdc.training.checkpoint import load

TINY_MIDDLE_WIDTHS = [5, 18, 18, 28, 28, 57, 57, 115, 115]  # the stem's, then the (2+1)D convs' of each block


def tiny_video_encoder() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder("video", load_config(None, preset="tiny").model)


def test_only_the_middle_widths_grow_and_the_added_channels_are_zero():
    encoder = tiny_video_encoder()
    state = encoder.state_dict()
    assert pad_middle_widths(encoder, 8) == len(TINY_MIDDLE_WIDTHS)
    assert pad_middle_widths(encoder, 8) == 0  # widened once: a second call changes nothing
    after = encoder.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    widths = []  # the channels between each chain's two convolutions, as they run
    for norm in [m for m in encoder.modules() if type(m).__name__ == "_WideBatchNorm3d"]:
        norm.register_forward_hook(lambda module, inputs, out: widths.append((module.num_features, out)))
    encoder.train()
    encoder(torch.randn(2, 3, 4, 32, 32))
    assert [n for n, _ in widths] == TINY_MIDDLE_WIDTHS
    for n, out in widths:
        assert out.shape[1] == -(-n // 8) * 8 and out[:, n:].abs().max() == 0
        assert out[:, :n].abs().max() > 0
    assert "zero channels added: 0 in, 3 out" in repr(encoder.stem[0])
    with pytest.raises(ValueError, match="multiple must be positive"):
        pad_middle_widths(encoder, 0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_padded_encoder_computes_and_trains_like_the_plain_one(channels_last):
    plain = tiny_video_encoder()
    padded = copy.deepcopy(plain)
    pad_middle_widths(padded, 8)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    for encoder in (plain, padded):
        encoder.to(memory_format=layout)
    x = torch.randn(4, 3, 4, 32, 32).contiguous(memory_format=layout)
    # Weight decay large enough to bite: SGD with momentum must leave the two models alike step after step.
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01) for m in (plain, padded)]
    for _ in range(3):
        for model, optimizer in zip((plain, padded), optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    assert plain.stem[0].weight.grad.abs().max() > 0  # the steps did train
    trained, padded_state = plain.state_dict(), padded.state_dict()
    for key, value in trained.items():
        torch.testing.assert_close(padded_state[key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
    for model in (plain, padded):
        model.eval()  # the running statistics of the real channels were kept: eval mode agrees too
    torch.testing.assert_close(padded(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return synthetic_manifest(tmp_path_factory.mktemp("padding"), 16, 4, seed=0)


def test_the_trainer_pads_on_request_and_saves_the_plain_model(manifest, tmp_path):
    plain, padded = (ready_trainer(manifest, tmp_path / name, f"train.pad_widths={pad}")
                     for name, pad in (("plain", "auto"), ("padded", "8")))  # auto: off on this CPU
    assert (plain.pad_widths, padded.pad_widths) == (0, 8)
    assert "zero channels" in repr(padded.encoders["video"]) and "zero channels" not in repr(plain.encoders)
    assert "zero channels" not in repr(padded.encoders["audio"])  # 2-D convolutions: video only
    batch = next(iter(plain._train_loader()))
    losses = [trainer._step(trainer.train_model, batch)[0] for trainer in (plain, padded)]
    torch.testing.assert_close(losses[1], losses[0])
    for trainer in (plain, padded):
        trainer._save()
    saved = {name: load(tmp_path / name / "checkpoints" / "last.pt") for name in ("plain", "padded")}
    assert_states_close(saved["padded"]["encoders"], saved["plain"]["encoders"])
    # The optimizers' momenta have the plain shapes too: each trainer resumes from the other's checkpoint and
    # the two go on alike.
    for trainer, other in ((plain, "padded"), (padded, "plain")):
        trainer.encoders.load_state_dict(saved[other]["encoders"])
        trainer.optimizer.load_state_dict(saved[other]["optimizer"])
        trainer._step(trainer.train_model, batch)
    assert_states_close(padded.encoders.state_dict(), plain.encoders.state_dict())


def assert_states_close(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].shape == value.shape, key
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_pad_widths_is_validated_and_auto_means_8_on_cuda():
    for bad in ("-1", "true", "1.5", "some"):
        with pytest.raises(UserError, match="train.pad_widths must be"):
            load_config(None, [f"train.pad_widths={bad}"])
    auto = load_config(None).train
    assert (auto.pad_widths_on("cuda"), auto.pad_widths_on("cpu")) == (8, 0)
    assert load_config(None, ["train.pad_widths=0"]).train.pad_widths_on("cuda") == 0
    assert load_config(None, ["train.pad_widths=16"]).train.pad_widths_on("cpu") == 16


def test_a_compiled_padded_encoder_updates_its_statistics():
    """Through torch.compile's graph capture and functionalization (the aot_eager backend: Inductor's code
    generation is what the GPU run adds), the in-place copies of the running statistics survive."""
    plain = tiny_video_encoder()
    padded = copy.deepcopy(plain)
    pad_middle_widths(padded, 8)
    compiled = torch.compile(padded, backend="aot_eager")
    x = torch.randn(4, 3, 4, 32, 32)
    for model in (plain, compiled):
        model(x).square().mean().backward()
    state = padded.state_dict()
    assert state["stem.1.num_batches_tracked"] == 1
    assert not torch.equal(state["stem.1.running_mean"], torch.zeros_like(state["stem.1.running_mean"]))
    assert_states_close(state, plain.state_dict())
    for (name, p), q in zip(plain.named_parameters(), padded.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    torch._dynamo.reset()
