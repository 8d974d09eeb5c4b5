"""load_official_xdc on state dicts laid out like the released XDC R(2+1)D-18 files, written out here from the
published architecture (VMZ's per-conv middle width, BatchNorm eps 1e-3) and torchvision's key names."""

import math

import pytest
import torch
from torchvision.models.video import r2plus1d_18

from xdc.errors import UserError
from xdc.models import load_official_xdc


def middle(i: int, o: int) -> int:
    """The middle width of one (2+1)D conv from i to o channels in the released weights."""
    return (i * o * 27) // (i * 9 + 3 * o)


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of a released file, with random values: He-scaled convs, BatchNorms with real statistics."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, *shape: int) -> None:
        fan_in = math.prod(shape[1:])
        sd[name] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_in)

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("stem.0.weight", 45, 3, 1, 7, 7)
    bn("stem.1", 45)
    conv("stem.3.weight", 64, 45, 3, 1, 1)
    bn("stem.4", 64)
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            first_in = inplanes if block == 0 else planes
            for name, (i, o) in (("conv1", (first_in, planes)), ("conv2", (planes, planes))):
                conv(f"{p}.{name}.0.0.weight", middle(i, o), i, 1, 3, 3)
                bn(f"{p}.{name}.0.1", middle(i, o))
                conv(f"{p}.{name}.0.3.weight", o, middle(i, o), 3, 1, 1)
                bn(f"{p}.{name}.1", o)
            if block == 0 and planes != inplanes:
                conv(f"{p}.downsample.0.weight", planes, inplanes, 1, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    sd["fc.weight"] = torch.randn(400, 512, generator=g)  # the released files carry a meaningless classifier
    sd["fc.bias"] = torch.zeros(400)
    return sd


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return official_state_dict()


def clip() -> torch.Tensor:
    return torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def test_the_written_layout_is_the_published_one(official):
    assert official["layer1.0.conv1.0.0.weight"].shape == (144, 64, 1, 3, 3)
    assert official["layer2.0.conv1.0.0.weight"].shape == (230, 64, 1, 3, 3)
    assert official["layer2.0.conv2.0.0.weight"].shape == (288, 128, 1, 3, 3)
    assert official["layer3.0.conv1.0.3.weight"].shape == (256, 460, 3, 1, 1)
    assert official["layer3.1.conv2.0.1.running_var"].shape == (576,)
    assert official["layer4.0.conv1.0.0.weight"].shape == (921, 256, 1, 3, 3)
    assert official["layer4.0.conv2.0.0.weight"].shape == (1152, 512, 1, 3, 3)
    assert set(official) == set(r2plus1d_18().state_dict())  # torchvision's names...
    with pytest.raises(RuntimeError, match="size mismatch"):  # ...but not its shapes
        r2plus1d_18().load_state_dict(official)


def test_loads_weights_eps_and_gives_512_features(official, tmp_path):
    path = tmp_path / "r2plus1d_18_xdc_ig65m_kinetics.pth"
    torch.save(official, path)
    encoder = load_official_xdc(path)
    assert not encoder.training
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 2 + 8 * 4 + 3  # stem, 4 per block, 3 downsamples
    assert all(m.eps == 1e-3 for m in bns)
    state = encoder.state_dict()
    for key in ("stem.0.weight", "layer2.0.conv2.0.0.weight", "layer4.1.conv2.1.running_var"):
        assert torch.equal(state[key], official[key]), key
    with torch.no_grad():
        features = encoder(clip())
    assert features.shape == (1, 512) and torch.isfinite(features).all()
    assert features.abs().sum() > 0


def test_wrapped_prefixed_and_fc_free_files_load_the_same(official, tmp_path):
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in official.items() if not k.startswith("fc.")}}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    older = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}  # before BN counted batches
    older.update({"fc.weight": torch.zeros(7, 512), "fc.bias": torch.zeros(7)})  # any classifier is ignored
    torch.save({"model": older}, tmp_path / "older.pth")
    for name in ("wrapped", "older"):
        state = load_official_xdc(tmp_path / f"{name}.pth").state_dict()
        assert all(torch.equal(state[k], v) for k, v in official.items() if k in older and not k.startswith("fc."))
        assert not any(k.startswith("fc.") for k in state)


def tiny_copy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same names and shapes, each backed by one stored number, so that the files of the error cases stay small."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("layer3.1.conv2.1.running_var"), "missing keys: layer3.1.conv2.1.running_var"),
        (lambda sd: sd.update({"layer2.0.conv2.0.0.weight": torch.zeros(230, 128, 1, 3, 3)}),
         r"wrong shapes: layer2.0.conv2.0.0.weight \(230, 128, 1, 3, 3\) \(expected \(288, 128, 1, 3, 3\)\)"),
        (lambda sd: sd.update({"layer5.0.weight": torch.zeros(1)}), "unexpected keys: layer5.0.weight"),
    ],
    ids=["missing", "shape", "extra"],
)  # fmt: skip
def test_mismatches_are_named(official, tmp_path, change, message):
    sd = tiny_copy(official)
    change(sd)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=message):
        load_official_xdc(tmp_path / "bad.pth")


def test_torchvision_layout_is_refused_with_every_mismatch_listed(tmp_path):
    torch.save(tiny_copy(r2plus1d_18().state_dict()), tmp_path / "torchvision.pth")
    with pytest.raises(UserError, match=r"wrong shapes: layer2\.0\.conv2\.0\.0\.weight .* and 12 more"):
        load_official_xdc(tmp_path / "torchvision.pth")


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_official_xdc(tmp_path / "absent.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read .*text.pth as a PyTorch weights file"):
        load_official_xdc(tmp_path / "text.pth")
    # torch's unpickler fails on other text with KeyError, IndexError, ...: each is the same one-line error
    for n, text in enumerate(["hello\n", "abc", '{"weights": [1, 2]}\n']):
        (tmp_path / f"{n}.pth").write_text(text)
        with pytest.raises(UserError, match=f"cannot read .*{n}.pth as a PyTorch weights file: ") as e:
            load_official_xdc(tmp_path / f"{n}.pth")
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value)  # not torch's advice to unpickle
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds no state dict"):
        load_official_xdc(tmp_path / "list.pth")
