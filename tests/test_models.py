import pytest
import torch
from torchvision.models.video import r2plus1d_18

from xdc.config import ModelConfig, load_config
from xdc.errors import UserError
from xdc.models import AudioEncoder, LinearHead, VideoEncoder, build_encoder
from xdc.models.encoders import last_stage_size
from xdc.presets import PRESETS, preset_path


def test_video_encoder_matches_torchvision_state_dict():
    ours = VideoEncoder(64, (2, 2, 2, 2)).state_dict()
    theirs = {k: v for k, v in r2plus1d_18().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    VideoEncoder().load_state_dict(theirs)  # torchvision-format weights load as they are


def test_paper_sized_inputs():
    video, audio = VideoEncoder().eval(), AudioEncoder().eval()
    with torch.no_grad():
        assert video(torch.randn(1, 3, 8, 112, 112)).shape == (1, 512)
        assert audio(torch.randn(2, 1, 40, 100)).shape == (2, 512)
    assert video.feature_dim == audio.feature_dim == 512


@pytest.mark.parametrize("width", [8, 16])
def test_width_scales_features(width):
    video, audio = VideoEncoder(width, (1, 1, 1, 1)), AudioEncoder(width, (1, 1, 1, 1))
    assert video(torch.randn(2, 3, 4, 32, 32)).shape == (2, 8 * width) and video.feature_dim == 8 * width
    assert audio(torch.randn(2, 1, 16, 32)).shape == (2, 8 * width) and audio.feature_dim == 8 * width
    assert video.layer4[0].conv2[0][3].out_channels == 8 * width
    assert video.stem[0].out_channels == 45 * width // 64  # torchvision's 45-of-64 stem ratio


def test_depth_follows_layers():
    video = VideoEncoder(8, (1, 2, 1, 3))
    assert [len(s) for s in (video.layer1, video.layer2, video.layer3, video.layer4)] == [1, 2, 1, 3]
    audio = AudioEncoder(8, (2, 1, 1, 1))
    assert [len(s) for s in (audio.layer1, audio.layer2, audio.layer3, audio.layer4)] == [2, 1, 1, 1]


def test_audio_encoder_takes_tiny_spectrograms():
    assert AudioEncoder(8, (1, 1, 1, 1))(torch.randn(3, 1, 16, 32)).shape == (3, 64)


def test_build_encoder():
    cfg = ModelConfig(video_width=8, audio_width=16, video_layers=(1, 1, 1, 1), audio_layers=(1, 1, 1, 1))
    assert isinstance(build_encoder("video", cfg), VideoEncoder) and build_encoder("video", cfg).feature_dim == 64
    assert isinstance(build_encoder("audio", cfg), AudioEncoder) and build_encoder("audio", cfg).feature_dim == 128
    with pytest.raises(ValueError, match="video"):
        build_encoder("text", cfg)
    # the whole Config, for the page's cfg.model, was an AttributeError ('Config' object has no attribute ...)
    with pytest.raises(TypeError, match=r"cfg must be the model settings, a ModelConfig \(cfg.model of"):
        build_encoder("video", load_config(None, preset="tiny"))


def test_gradients_reach_the_first_conv():
    video, audio = VideoEncoder(8, (1, 1, 1, 1)), AudioEncoder(8, (1, 1, 1, 1))
    video(torch.randn(2, 3, 4, 32, 32)).pow(2).sum().backward()
    audio(torch.randn(2, 1, 40, 100)).pow(2).sum().backward()
    for conv in (video.stem[0], audio.conv1):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_head_init():
    torch.manual_seed(0)
    head = LinearHead(512, 400)
    assert head.weight.shape == (400, 512)
    assert abs(head.weight.std().item() - 0.01) < 5e-4 and abs(head.weight.mean().item()) < 5e-4
    assert torch.count_nonzero(head.bias) == 0
    head.weight.data.fill_(1.0)
    head.reset_parameters()  # re-initialising keeps DeepCluster's scheme, not nn.Linear's uniform one
    assert abs(head.weight.std().item() - 0.01) < 5e-4


def test_model_config_overrides():
    cfg = load_config(None, ["model.video_layers=[1,1,1,1]", "model.audio_width=16"])
    assert cfg.model.video_layers == (1, 1, 1, 1) and cfg.model.audio_width == 16
    assert load_config().model == ModelConfig()
    for bad in ("model.video_layers=[1,1,1]", "model.audio_layers=[2,0,2,2]", "model.video_width=0"):
        with pytest.raises(UserError, match="model."):
            load_config(None, [bad])


@pytest.mark.parametrize("name", PRESETS)
def test_presets_feed_the_encoders(name):
    cfg = load_config(preset_path(name), ["seed=5"])
    assert cfg.seed == 5
    clip, mel = cfg.data.clip, cfg.data.mel
    assert cfg.data.augment.scale_min >= clip.crop  # the random crop fits after scale jitter
    video, audio = build_encoder("video", cfg.model).eval(), build_encoder("audio", cfg.model).eval()
    frames = round(clip.audio_span * 1000 / mel.hop_ms)
    with torch.no_grad():
        assert video(torch.randn(1, 3, clip.frames, clip.crop, clip.crop)).shape == (1, video.feature_dim)
        assert audio(torch.randn(1, 1, mel.n_mels, frames)).shape == (1, audio.feature_dim)


def test_preset_contents():
    paper, tiny = load_config(preset_path("paper")), load_config(preset_path("tiny"))
    assert (paper.data.clip.frames, paper.data.clip.crop, paper.model.video_width) == (8, 112, 64)
    assert paper.model.video_layers == paper.model.audio_layers == (2, 2, 2, 2)
    assert (tiny.data.clip.frames, tiny.data.clip.crop, tiny.model.video_width) == (4, 32, 8)


def test_unknown_preset():
    with pytest.raises(UserError, match="paper, small, tiny"):
        preset_path("huge")


@pytest.mark.parametrize("clip", [(3, 1, 1, 1), (3, 4, 16, 16), (3, 9, 17, 33), (3, 8, 112, 112), (3, 5, 31, 20)])
def test_last_stage_size_is_the_video_encoders(clip):
    encoder = VideoEncoder(8, (1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert tuple(encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(encoder.stem(
            torch.randn(1, *clip)))))).shape[2:]) == last_stage_size("video", clip)  # fmt: skip


@pytest.mark.parametrize("clip", [(1, 1, 1), (1, 16, 16), (1, 40, 100), (1, 17, 9)])
def test_last_stage_size_is_the_audio_encoders(clip):
    encoder = AudioEncoder(8, (1, 1, 1, 1)).eval()
    with torch.no_grad():
        x = encoder.relu(encoder.bn1(encoder.conv1(encoder.input_norm(torch.randn(1, *clip)))))
        assert tuple(encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x)))).shape[2:]) == \
            last_stage_size("audio", clip)  # fmt: skip


def test_one_training_clip_with_one_value_per_channel_names_the_settings():
    """torch's own error ("Expected more than 1 value per channel when training") names no setting."""
    video, audio = VideoEncoder(8, (1, 1, 1, 1)), AudioEncoder(8, (1, 1, 1, 1))
    with pytest.raises(UserError, match=r"one video clip of 3 x 4 x 16 x 16 .* 1 x 1 x 1.* data\.clip\.crop above 16"):
        video(torch.randn(1, 3, 4, 16, 16))
    with pytest.raises(UserError, match=r"one audio clip of 1 x 16 x 16 .* 1 x 1,.* data\.mel\.n_mels above 16"):
        audio(torch.randn(1, 1, 16, 16))
    # two clips, a larger map, or eval mode: BatchNorm has more than one value per channel, or its running ones
    assert video(torch.randn(2, 3, 4, 16, 16)).shape == audio(torch.randn(2, 1, 16, 16)).shape == (2, 64)
    assert video(torch.randn(1, 3, 4, 17, 16)).shape == audio(torch.randn(1, 1, 16, 17)).shape == (1, 64)
    with torch.no_grad():
        assert video.eval()(torch.randn(1, 3, 4, 16, 16)).shape == audio.eval()(torch.randn(1, 1, 16, 16)).shape
