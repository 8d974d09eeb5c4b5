"""The device path of pretraining, on CPU: bf16 autocast, channels-last layout, torch.compile, FLOP counting.

The CUDA-only parts (NCCL, page-locked batches, cuDNN autotuning) cannot run here; docs/pretrain.md "On GPUs".
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

from conftest import synthetic_manifest
from xdc.config import load_config
from xdc.data.transforms import VIDEO_MEAN, VIDEO_STD
from xdc.errors import UserError
from xdc.limits import usable_cpus
from xdc.models.device_form import cudnn_fault_note
from xdc.models.encoders import build_encoder
from xdc.training.checkpoint import load
from xdc.training.distributed import Dist
from xdc.training.flops import count_flops, mfu, peak_tflops
from xdc.training import to_host
from xdc.training.pretrain import Pretrainer

TINY = ["train.batch_size=8", "train.k=4", "data.workers=0", "train.log_every=1"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return synthetic_manifest(tmp_path_factory.mktemp("gpu-path"), 16, 4, seed=0)


def trainer_for(manifest: Path, out: Path, *extra: str, compile_backend: str = "inductor") -> Pretrainer:
    """A tiny XDC trainer with this round's heads built on fixed pseudo-labels, ready to step."""
    trainer = Pretrainer(load_config(None, [*TINY, *extra], preset="tiny"), manifest, out, Dist())
    trainer.compile_backend = compile_backend
    n = len(trainer.videos)
    trainer.progress.labels = {s: np.arange(n) % 4 for s in trainer.method.label_sets}
    trainer._new_heads()
    trainer.train_model.train()
    return trainer


def first_batch(trainer: Pretrainer) -> dict:
    return next(iter(trainer._train_loader()))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # said by mkldnn.flags
def test_bf16_trains_with_float32_weights(manifest, tmp_path, capsys):
    trainer = trainer_for(manifest, tmp_path, "train.precision=bf16")
    assert "bf16 on a CPU" in capsys.readouterr().err
    head_dtypes = []
    for head in trainer.model.heads.values():
        head.register_forward_hook(lambda module, inputs, output: head_dtypes.append(output.dtype))
    before = {k: v.clone() for k, v in trainer.encoders.state_dict().items()}
    # PyTorch's own kernels, not oneDNN's: its bf16 Conv3d backward gave NaN gradients at random on an AMD EPYC
    # with AVX512-BF16 (about every second run); this test is about the autocast wiring, which is the same.
    with torch.backends.mkldnn.flags(enabled=False):
        trainer._train_epoch()

    assert head_dtypes and set(head_dtypes) == {torch.bfloat16}  # autocast did run the model in bf16
    steps = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["kind"] == "step"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and min(losses) > 0
    params = [*trainer.encoders.parameters(), *trainer.model.heads.parameters()]
    assert {p.dtype for p in params} == {torch.float32}
    momenta = [s["momentum_buffer"] for o in (trainer.optimizer, trainer.head_optimizer) for s in o.state.values()]
    assert len(momenta) == len(params) and {m.dtype for m in momenta} == {torch.float32}
    after = trainer.encoders.state_dict()
    assert not torch.equal(before["video.stem.0.weight"], after["video.stem.0.weight"])


def test_bf16_features_stay_close_to_float32():
    torch.manual_seed(0)
    encoder = build_encoder("video", load_config(None, preset="tiny").model).eval()
    conv_dtypes = []
    encoder.stem[0].register_forward_hook(lambda module, inputs, output: conv_dtypes.append(output.dtype))
    x = torch.randn(4, 3, 4, 32, 32)
    with torch.no_grad():
        full = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = encoder(x)
    assert conv_dtypes == [torch.float32, torch.bfloat16]
    assert relative_error(half.float(), full) < 0.05


def test_channels_last_video_encoder_matches_contiguous():
    torch.manual_seed(0)
    contiguous = build_encoder("video", load_config(None, preset="tiny").model)
    last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last_3d)
    assert last.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not contiguous.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(4, 3, 4, 32, 32)
    a, b = contiguous(x), last(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    # Gradients agree to rounding, except where an activation lies within rounding of a ReLU's kink: there the
    # other summation order of the channels-last kernels can flip the ReLU's mask for that one element (seen here
    # with 2 threads: one element of layer1, 0.2% of the stem's gradient norm). A layout bug would be O(1).
    for (name, p), q in zip(contiguous.named_parameters(), last.parameters()):
        assert relative_error(q.grad, p.grad) < 0.02, name


def test_channels_last_audio_encoder_matches_contiguous():
    torch.manual_seed(0)
    contiguous = build_encoder("audio", load_config(None, preset="tiny").model)
    last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    conv = "layer1.0.conv1.weight"  # not conv1's: with one input channel both layouts are the same
    assert last.get_parameter(conv).is_contiguous(memory_format=torch.channels_last)
    assert not contiguous.get_parameter(conv).is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 40, 100)
    a, b = contiguous(x), last(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    grads = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (contiguous, last)]
    assert relative_error(grads[1], grads[0]) < 0.02  # see the test above on ReLU kinks
    largest = max(p.grad.norm() for p in contiguous.parameters())
    for (name, p), q in zip(contiguous.named_parameters(), last.parameters()):
        # gradients that nearly cancel (the input BatchNorm's scale: 4e-5) keep only their rounding
        if p.grad.norm() > 0.01 * largest:
            assert relative_error(q.grad, p.grad) < 0.02, name


def test_channels_last_step_feeds_channels_last_inputs_and_trains_alike(manifest, tmp_path):
    plain = trainer_for(manifest, tmp_path / "plain")
    last = trainer_for(manifest, tmp_path / "last", "train.channels_last=true")
    layouts = {}
    for label, trainer in (("plain", plain), ("last", last)):
        # the clips as fed, and the spectrograms' activations after the first convolution (one input channel is
        # channels-last in either layout)
        watched = (("video", trainer.encoders["video"], torch.channels_last_3d),
                   ("audio", trainer.encoders["audio"].layer1, torch.channels_last))  # fmt: skip
        for name, module, layout in watched:
            module.register_forward_pre_hook(
                lambda module, inputs, key=(label, name), layout=layout: layouts.update(
                    {key: inputs[0].is_contiguous(memory_format=layout)})
            )  # fmt: skip
    batch = first_batch(plain)
    before = [p.detach().clone() for p in plain.encoders.parameters()]
    loss_plain, _ = plain._step(plain.train_model, batch)
    loss_last, _ = last._step(last.train_model, batch)
    assert layouts == {("plain", "video"): False, ("plain", "audio"): False, ("last", "video"): True,
                       ("last", "audio"): True}  # fmt: skip
    torch.testing.assert_close(loss_last, loss_plain, rtol=1e-5, atol=1e-6)
    for (name, p), q, w in zip(plain.encoders.named_parameters(), last.encoders.parameters(), before):
        assert relative_error(q - w, p - w) < 0.02, name  # the SGD updates (see the test above on ReLU kinks)


def test_compile_keeps_checkpoint_keys_and_trains_alike(manifest, tmp_path):
    """A real step through torch.compile, with the "eager" backend: TorchDynamo captures the graph and runs it, but
    Inductor generates no code (cold, that takes about a minute per encoder on this 2-core CPU)."""
    torch._dynamo.reset()
    counters.clear()
    plain = trainer_for(manifest, tmp_path / "plain")
    compiled = trainer_for(manifest, tmp_path / "compiled", "train.compile=true", compile_backend="eager")
    assert isinstance(compiled.train_model, OptimizedModule) and not isinstance(plain.train_model, OptimizedModule)
    batch = first_batch(plain)
    loss_plain, _ = plain._step(plain.train_model, batch)
    loss_compiled, _ = compiled._step(compiled.train_model, batch)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the step really went through TorchDynamo
    torch.testing.assert_close(loss_compiled, loss_plain)
    for (name, p), q in zip(plain.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, msg=lambda m: f"{name}: {m}")

    # The next round's fresh heads reuse the compiled graph rather than compiling again.
    compiled._new_heads()
    compiled._step(compiled.train_model, batch)
    assert counters["stats"]["unique_graphs"] == graphs

    for trainer in (plain, compiled):
        trainer._save()
        trainer._finish()
    for file in ("checkpoints/last.pt", "encoders.pt"):
        keys = nested_keys(load(tmp_path / "compiled" / file))
        assert keys == nested_keys(load(tmp_path / "plain" / file))
        assert "encoders.video.stem.0.weight" in keys and not any("_orig_mod" in k for k in keys)
    torch._dynamo.reset()


def test_a_compile_mode_reaches_torch_compile(manifest, tmp_path):
    torch._dynamo.reset()
    modes = []

    def backend(graph, example_inputs, **options):  # a backend that runs the captured graph, noting its options
        modes.append(options.get("mode", "default"))
        return graph.forward

    trainer = trainer_for(manifest, tmp_path, "train.compile=max-autotune-no-cudagraphs", compile_backend=backend)
    trainer._step(trainer.train_model, first_batch(trainer))
    assert modes and set(modes) == {"max-autotune-no-cudagraphs"}
    torch._dynamo.reset()


def _short(batch: dict, clips: int) -> dict:
    """``batch`` as if all but its first ``clips`` clips had failed."""
    return {k: v[:clips] if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()}


def test_a_batch_that_lost_clips_runs_uncompiled_and_full_ones_keep_their_graph(manifest, tmp_path):
    """Another batch size would make TorchDynamo compile again, with a symbolic size, and run every later batch
    through that graph: a batch that lost clips (or an epoch's last) takes the uncompiled model instead."""
    torch._dynamo.reset()
    counters.clear()
    runs = []

    def counted(graph, example_inputs):  # a backend that runs the captured graph as it is, counting its runs
        return lambda *args: runs.append(1) or graph.forward(*args)

    plain = trainer_for(manifest, tmp_path / "plain")
    compiled = trainer_for(manifest, tmp_path / "compiled", "train.compile=true", compile_backend=counted)
    full = first_batch(plain)
    for batch in (full, _short(full, 5), full):
        before = len(runs)
        losses = [trainer._step(trainer.train_model, batch)[0] for trainer in (plain, compiled)]
        torch.testing.assert_close(losses[1], losses[0])
        assert len(runs) > before if len(batch["index"]) == 8 else len(runs) == before
    assert counters["stats"]["unique_graphs"] == 1  # compiled once, for the full batch
    for p, q in zip(plain.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p)
    torch._dynamo.reset()


def test_a_compiled_run_never_compiles_again(manifest, tmp_path):
    """Two rounds (new heads each) of epochs that end in a batch of 4 clips after two of 8: TorchDynamo would raise
    at a recompilation. (tests/test_cuda.py runs the same with Inductor on a GPU.)"""
    torch._dynamo.reset()
    counters.clear()
    cfg = load_config(None, [*TINY, "train.compile=true", "train.epoch_size=20", "train.rounds=2"], preset="tiny")
    trainer = Pretrainer(cfg, manifest, tmp_path, Dist())
    trainer.compile_backend = "eager"
    with torch._dynamo.config.patch(error_on_recompile=True):
        trainer.run()
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "round"] == [0, 1]
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_accumulated_parts_of_unequal_sizes_compile_once_and_say_so(manifest, tmp_path, capsys):
    torch._dynamo.reset()
    counters.clear()
    trainer = trainer_for(manifest, tmp_path, "train.compile=true", "train.accumulate=3", compile_backend="eager")
    assert "train.accumulate=3 does not divide the 8 clips of a batch per rank: the parts of 2 clips run " in (
        capsys.readouterr().err)
    trainer._step(trainer.train_model, first_batch(trainer))  # parts of 3, 3 and 2 clips
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def nested_keys(state: dict) -> list[str]:
    """Every key of a checkpoint's nested dicts, as dotted paths."""
    keys = []
    for key, value in state.items():
        keys += [f"{key}.{sub}" for sub in nested_keys(value)] if isinstance(value, dict) else [str(key)]
    return keys


def test_flop_counter_matches_a_hand_count():
    conv = nn.Conv3d(3, 8, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
    x = torch.randn(2, 3, 4, 16, 16, requires_grad=True)
    # Output 2 x 8 x 4 x 8 x 8; each output value is 3 * 1 * 3 * 3 multiply-accumulates, 2 FLOPs each.
    forward = 2 * (2 * 8 * 4 * 8 * 8) * (3 * 1 * 3 * 3)
    assert count_flops(lambda: conv(x)) == forward
    # Backward: the gradients of the input and of the weights, each as many multiply-accumulates as the forward.
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward
    linear = nn.Linear(16, 5)
    assert count_flops(lambda: linear(torch.randn(7, 16))) == 2 * 7 * 16 * 5


def test_peak_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L4") == 121.0 and peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("NVIDIA GeForce GTX 1080") is None
    assert mfu(500e12, 1.0, 1000.0) == pytest.approx(0.5)


def test_a_cudnn_with_the_3d_bf16_fault_is_named_with_what_it_does_to_this_pytorch():
    slow = cudnn_fault_note(91002, "2.9.1+cu128", bf16=True)
    assert "cuDNN 9.10.2" in slow and "without cuDNN" in slow and "9.15 or later" in slow
    assert "without cuDNN" in cudnn_fault_note(90800, "2.10.0a0+git1234", bf16=True)  # a nightly counts
    assert "come out wrong" in cudnn_fault_note(91400, "2.8.0", bf16=True)  # before 2.9 PyTorch still used it
    assert cudnn_fault_note(91500, "2.9.1", bf16=True) is None  # fixed
    assert cudnn_fault_note(92400, "2.14.1", bf16=True) is None  # the pinned torch's own cuDNN
    fixed_but_bypassed = cudnn_fault_note(92100, "2.9.0+cu130", bf16=True)  # 2.9.0 bypasses every cuDNN from 9.8
    assert "PyTorch 2.9.0" in fixed_but_bypassed and "2.9.1 or later" in fixed_but_bypassed
    assert cudnn_fault_note(90701, "2.9.1", bf16=True) is None  # before the fault
    assert cudnn_fault_note(91002, "2.9.1", bf16=False) is None  # float32 convolutions are not affected
    assert cudnn_fault_note(None, "2.9.1", bf16=True) is None  # no cuDNN (a CPU build)


def test_device_path_settings_are_validated_and_auto_means_on_cuda(manifest, tmp_path):
    with pytest.raises(UserError, match="train.precision must be 'auto', 'fp32' or 'bf16'"):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(UserError, match="train.channels_last must be true, false or auto"):
        load_config(None, ["train.channels_last=sometimes"])
    auto = load_config(None).train
    assert (auto.precision, auto.channels_last) == ("auto", "auto")
    assert (auto.bf16_on("cuda"), auto.channels_last_on("cuda")) == (True, True)
    assert (auto.bf16_on("cpu"), auto.channels_last_on("cpu")) == (False, False)
    off = load_config(None, ["train.precision=fp32", "train.channels_last=false"]).train
    assert (off.bf16_on("cuda"), off.channels_last_on("cuda")) == (False, False)
    on = load_config(None, ["train.precision=bf16", "train.channels_last=true"]).train
    assert (on.bf16_on("cpu"), on.channels_last_on("cpu")) == (True, True)
    trainer = trainer_for(manifest, tmp_path)  # the defaults on this CPU: float32, the default layout
    assert not trainer.bf16 and not trainer.channels_last and not trainer._autocast()._enabled
    assert not trainer.encoders["video"].stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # said by mkldnn.flags
def test_extraction_runs_in_the_training_precision(manifest, tmp_path):
    fp32 = trainer_for(manifest, tmp_path / "fp32")
    bf16 = trainer_for(manifest, tmp_path / "bf16", "train.precision=bf16")  # the same seed: the same weights
    with torch.backends.mkldnn.flags(enabled=False):  # see test_bf16_trains_with_float32_weights
        a, b = fp32._extract(), bf16._extract()
    assert a.keys() == b.keys() == {"video", "audio"}
    for name in a:
        assert b[name].dtype == torch.float32 and torch.isfinite(b[name]).all()
        assert not torch.equal(a[name], b[name])  # bf16 did run
        cosine = torch.nn.functional.cosine_similarity(a[name], b[name], dim=1)
        assert cosine.min() > 0.98, f"{name}: {cosine.min():.4f}"  # the same features, at bf16's precision


def test_the_loader_ships_uint8_video_normalised_on_the_device(manifest, tmp_path):
    trainer = trainer_for(manifest, tmp_path / "run")
    batch = first_batch(trainer)
    assert batch["video"].dtype == torch.uint8  # a quarter of a float batch's bytes through shared/pinned memory
    assert batch["audio"].dtype == torch.float32
    inputs = trainer._inputs(batch)
    assert inputs["video"].dtype == torch.float32 and inputs["video"].shape == batch["video"].shape
    raw = batch["video"].float() / 255
    mean = torch.tensor(VIDEO_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(VIDEO_STD).view(3, 1, 1, 1)
    torch.testing.assert_close(inputs["video"], (raw - mean) / std)
    assert torch.equal(inputs["audio"], batch["audio"])


def test_extraction_gives_the_same_features_however_often_it_copies_to_the_host(manifest, tmp_path, monkeypatch):
    trainer = trainer_for(manifest, tmp_path / "run", "train.batch_size=2")  # 8 batches
    once = trainer._extract()
    monkeypatch.setattr(to_host, "EVERY", 3)  # copies after batches 3 and 6, and at the end
    chunked = trainer._extract()
    assert once.keys() == chunked.keys() == {"video", "audio"}
    for name in once:
        assert once[name].shape == (len(trainer.videos), trainer.feature_dims[name])
        assert torch.isfinite(once[name]).all() and torch.equal(once[name], chunked[name])


def test_results_reach_the_host_a_group_of_batches_at_a_time():
    batches = [torch.full((2, 3), float(i)) for i in range(7)]
    results = to_host.ToHost(every=3)
    for i, batch in enumerate(batches):
        results.add(batch)
        assert len(results.done) == (i + 1) // 3 and len(results.pending) == (i + 1) % 3  # a copy per 3 batches
    assert torch.equal(results.result(torch.empty(0, 3)), torch.cat(batches))
    assert results.result(torch.empty(0, 3)).shape == (0, 3)  # given back once: nothing held afterwards


def test_loader_workers_auto_means_the_cores_on_cuda_and_two_on_a_cpu(monkeypatch):
    cores = usable_cpus()  # the affinity mask, or a CPU quota below it (tests/test_limits.py)
    auto = load_config(None).data
    assert auto.workers == "auto" and auto.workers_on("cpu") == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto.workers_on("cuda") == max(1, cores - 1)  # one core left for the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun, 8 ranks on this node: each its share of the cores
    assert auto.workers_on("cuda") == max(1, cores // 8 - 1)
    assert load_config(None, ["data.workers=5"]).data.workers_on("cuda") == 5
    assert load_config(None, ["data.workers=0"]).data.workers_on("cpu") == 0
    for bad in ("-1", "many", "2.5"):
        with pytest.raises(UserError, match="data.workers must be auto or a whole number"):
            load_config(None, [f"data.workers={bad}"])
