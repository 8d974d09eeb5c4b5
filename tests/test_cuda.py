"""The CUDA path on a real GPU: skipped without one (CI has none); run by benchmarks/gpu_check.sh where one is lent.

What the CPU tests cannot reach: bf16 autocast and channels-last convolutions on cuDNN (with its autotuner),
page-locked batches copied asynchronously, uint8 video normalised and training clips cropped on the GPU,
checkpoints written from GPU modules and resumed onto them, the NCCL-free single-GPU setup of
``init_distributed``, k-means searched by torch on the GPU (faiss-cpu beside CUDA), and Sinkhorn's balancing on the
GPU, in one process and over ranks.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from conftest import run_two_ranks, synthetic_manifest
from xdc.clustering.features import preprocess_features
from xdc.clustering.kmeans import kmeans
from xdc.clustering import sharded
from xdc.clustering.sharded import sharded_kmeans, sharded_preprocess_features
from xdc.clustering.sinkhorn import balance
from xdc.config import load_config
from xdc.data.transforms import AudioTransform, DeviceCrops, DeviceLogMel, NormalizeVideo, VideoTransform
from xdc.models.encoders import build_encoder
from xdc.models.padding import pad_middle_widths
from xdc.models.stem import space_to_depth_stem
from xdc.training.checkpoint import load
from xdc.training.distributed import Dist, init_distributed
from xdc.training import pretrain
from xdc.training.pretrain import Pretrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")

# Scales that only enlarge the frames tiny decodes (short side 40): data.crops_on=auto then crops on the GPU, as it
# does for the paper preset.
GPU = ["train.batch_size=8", "train.k=4", "data.workers=2", "train.precision=bf16", "train.channels_last=true",
       "data.augment.scale_min=40", "data.augment.scale_max=44"]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return synthetic_manifest(tmp_path_factory.mktemp("cuda"), 24, 4, seed=0)


def test_video_is_normalised_on_the_gpu_as_on_the_cpu():
    x = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8)
    on_gpu = NormalizeVideo("cuda")(x.cuda())
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), NormalizeVideo()(x), rtol=0, atol=1e-6)


def test_training_clips_are_cropped_on_the_gpu_as_on_the_cpu():
    cfg = load_config(None, [], preset="paper")
    transform = VideoTransform(cfg.data, train=True, normalize=False)
    frames = np.random.default_rng(0).integers(0, 256, (4, 128, 228, 3), dtype=np.uint8)
    torch.manual_seed(0)
    parts, grids = map(torch.stack, zip(*[transform.plan(frames) for _ in range(6)]))
    on_gpu = DeviceCrops(112, "cuda")(parts.cuda(), grids.cuda())
    assert on_gpu.is_cuda and on_gpu.shape == (6, 3, 4, 112, 112)
    torch.testing.assert_close(on_gpu.cpu(), DeviceCrops(112)(parts, grids), rtol=0, atol=1e-3)


@pytest.mark.parametrize("masks", [True, False])
def test_log_mel_on_the_gpu_is_the_cpus(masks):
    # With masks: a training batch, masked on the GPU where the workers planned (AudioMasks), as the CPU masks it.
    settings = ["data.augment.freq_mask=12", "data.augment.time_mask=30"] if masks else []
    cfg = load_config(None, settings, preset="paper").data
    waves = np.random.default_rng(0).normal(0, 0.1, (6, 16000)).astype(np.float32)
    in_workers, planned = [], []
    for seed, wave in enumerate(waves):
        torch.manual_seed(seed)
        in_workers.append(AudioTransform(cfg, train=masks)(wave))
        torch.manual_seed(seed)
        planned.append(AudioTransform(cfg, train=masks, logmel=False).plan(wave))
    batch = torch.stack([w for w, _ in planned]).cuda()
    intervals = torch.stack([m for _, m in planned]).cuda() if masks else None
    on_gpu = DeviceLogMel(cfg, torch.device("cuda"))(batch, intervals)
    assert on_gpu.is_cuda and on_gpu.shape == (6, 1, 40, 100)
    expected = torch.stack(in_workers)
    assert torch.equal(on_gpu.cpu() == 0, expected == 0)
    torch.testing.assert_close(on_gpu.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_the_stem_over_pixel_blocks_runs_on_cudnn_like_the_plain_one():
    # The stem convolution alone (padded, channels-last, bf16 autocast, as training runs it): the same output and
    # weight gradient up to bf16 rounding (through a whole encoder bf16 noise alone takes the gradients' cosine
    # down to about 0.95); then a whole encoder steps with it.
    torch.manual_seed(0)
    encoder = build_encoder("video", load_config(None, preset="small").model).cuda()
    encoder.to(memory_format=torch.channels_last_3d)
    pad_middle_widths(encoder, 8)
    plain = copy.deepcopy(encoder.stem[0])
    space_to_depth_stem(encoder, (56, 56))
    x = torch.randn(4, 3, 8, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = [conv(x) for conv in (plain, encoder.stem[0])]
    upstream = torch.randn_like(outputs[0], dtype=torch.float32)
    for out in outputs:
        (out.float() * upstream).sum().backward()
    grads = [conv.weight.grad for conv in (plain, encoder.stem[0])]
    for a, b in (outputs, grads):
        assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0) > 0.999
    with torch.autocast("cuda", dtype=torch.bfloat16):
        encoder(x).float().square().mean().backward()
    assert torch.isfinite(encoder.stem[0].weight.grad).all()


def test_batches_are_pinned_and_a_step_runs_in_bf16(manifest, tmp_path):
    ctx = init_distributed()
    assert ctx.device.type == "cuda" and not ctx.enabled
    trainer = Pretrainer(load_config(None, GPU, preset="tiny"), manifest, tmp_path / "run", ctx)
    n = len(trainer.videos)
    trainer.progress.labels = {s: np.arange(n) % 4 for s in trainer.method.label_sets}
    trainer._new_heads()
    batch = next(iter(trainer._train_loader()))
    assert batch["video"].dtype == torch.uint8 and batch["video"].is_pinned() and batch["audio"].is_pinned()
    assert batch["video_grid"].is_pinned()  # data.crops_on=auto: the GPU crops
    assert "zero channels added" in repr(trainer.encoders["video"])  # train.pad_widths=auto: 8 on CUDA
    inputs = trainer._inputs(batch)
    assert inputs["video"].is_cuda and inputs["video"].dtype == torch.float32
    before = [p.detach().clone() for p in trainer.encoders.parameters()]
    loss, accuracy = trainer._step(trainer.train_model, batch)
    assert loss.is_cuda and torch.isfinite(loss) and accuracy
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.encoders.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.encoders.parameters()))
    assert torch.backends.cudnn.benchmark  # fixed clip shapes: cuDNN picks its kernels once


def _stepped_trainer(manifest: Path, tmp_path: Path, *settings: str) -> tuple[Pretrainer, dict]:
    """A tiny trainer past its first steps (cuDNN's autotuning and the allocators' first requests do wait), and
    the batch it steps on."""
    cfg = load_config(None, [*GPU, *settings], preset="tiny")
    trainer = Pretrainer(cfg, manifest, tmp_path / "run", init_distributed())
    trainer.progress.labels = {s: np.arange(len(trainer.videos)) % 4 for s in trainer.method.label_sets}
    trainer._new_heads()
    batch = next(iter(trainer._train_loader()))
    for _ in range(3):
        trainer._step(trainer.train_model, batch)
    torch.cuda.synchronize()
    return trainer, batch


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_training_step_makes_no_synchronizing_call(manifest, tmp_path, accumulate):
    # What would make the host wait for the device at every step: a copy from pageable memory, .item(), nonzero
    # (PyTorch's sync debug mode raises on each), or a new page-locked buffer (CUDA serialises cudaHostAlloc).
    trainer, batch = _stepped_trainer(manifest, tmp_path, f"train.accumulate={accumulate}")
    allocated = torch.cuda.host_memory_stats().get("num_host_alloc")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer._step(trainer.train_model, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.cuda.host_memory_stats().get("num_host_alloc") == allocated


def test_a_training_step_is_queued_behind_a_busy_device(manifest, tmp_path):
    # The same, timed end to end: the host queues a whole step behind a ~1 s spin of the GPU and returns long before
    # it ends. Only a step with fewer launches than CUDA's launch queue holds (about a thousand) can show that:
    # past it the host waits for a free slot, however asynchronous the step. This one (accumulate=1, widths not
    # padded) fits. With train.accumulate=2 the step waited the whole spin on an H200 although the test above
    # found no synchronizing call: more launches (ops counted on a CPU: 1,630 against 1,036, the optimizer's among
    # them, which CUDA's foreach kernels launch far fewer times).
    trainer, batch = _stepped_trainer(manifest, tmp_path, "train.pad_widths=0")
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU clock cycles
    t = time.perf_counter()
    trainer._step(trainer.train_model, batch)
    host = time.perf_counter() - t
    end = torch.cuda.Event(enable_timing=True)
    end.record()
    end.synchronize()
    device = start.elapsed_time(end) / 1000
    assert device > 0.3, f"the spin took only {device:.2f} s: the test proves nothing"
    if host >= device / 3:  # which call waited: the profiler lists CUDA's runtime calls with their host time
        pytest.fail(f"the step took {host:.2f} s of host time behind a {device:.2f} s queue; its longest host "
                    f"calls: {_longest_host_calls(lambda: trainer._step(trainer.train_model, batch))}")


def _longest_host_calls(step, top: int = 6) -> str:
    """The calls with the most host time of one ``step`` queued behind a busy GPU, as 'name ms x calls': a
    synchronizing call, or a launch that waited for room in the queue (then the launch count says why)."""
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        torch.cuda._sleep(2_000_000_000)
        step()
    torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return ", ".join(f"{e.key} {e.self_cpu_time_total / 1000:.1f} ms x {e.count}" for e in events)


def _cli(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(manifest), "--out", str(out), "--preset", "tiny",
        "--method", "xdc", "--rounds", "2", *(f"--set={s}" for s in GPU), "--set=train.epochs=2",
        "--set=train.epoch_size=96", "--set=train.checkpoint_every=1", "--set=train.log_every=1", *extra,
    ]  # fmt: skip


def test_a_run_killed_on_the_gpu_resumes_and_finishes(manifest, tmp_path):
    # Not bit-exact here (cuDNN's autotuned kernels are not deterministic): the resume must work and finish.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(manifest, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 180
    log = out / "log.jsonl"
    while time.time() < deadline and proc.poll() is None:  # kill in the middle of round 1's training
        steps = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if any(r["kind"] == "step" and r["round"] == 1 for r in steps):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(_cli(manifest, out, "--resume"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = [json.loads(x) for x in log.read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "step"]
    assert losses and all(np.isfinite(losses))
    assert {r["step"] for r in records if r["kind"] == "round"} == {0, 1}  # both rounds ended
    start = next(r for r in records if r["kind"] == "start")
    assert start["kmeans_search"] == ("faiss-gpu" if faiss.get_num_gpus() > 0 else "torch")
    assert start["pad_widths"] == 8  # auto on CUDA: the checkpoints hold the plain model all the same
    assert (start["torch"], start["cudnn"]) == (torch.__version__, torch.backends.cudnn.version())
    saved = load(out / "encoders.pt")  # written from GPU modules, loaded onto the CPU
    assert all(t.device.type == "cpu" for state in saved["encoders"].values() for t in state.values())


def test_pca_on_the_gpu_is_the_cpus():
    # The scatter matrix and the projection computed on the GPU; the eigendecomposition stays on the CPU.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((40_000, 128)) * np.linspace(3, 0.1, 128)).astype(np.float32)  # distinct variances
    on_gpu = sharded_preprocess_features(x, dim=32, device="cuda")
    on_cpu = sharded_preprocess_features(x, dim=32)
    signs = np.sign((on_gpu * on_cpu).sum(0))  # an eigenvector's sign is LAPACK's choice: align them
    # float32 scatter matrices (since 2026-12-02, as preprocess_features'), their rows added in another order
    np.testing.assert_allclose(on_gpu * signs, on_cpu, atol=1e-3)


@pytest.mark.parametrize("resident", [True, False])
def test_kmeans_searched_on_the_gpu_is_faiss_kmeans(monkeypatch, resident):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64)).astype(np.float32) * 3
    z = preprocess_features(centres[rng.integers(0, 40, 50_000)] + rng.standard_normal((50_000, 64), np.float32))
    if not resident:  # no room on the device: the rows move to it block by block at every iteration
        monkeypatch.setattr(sharded, "free_device_memory", lambda device: 0)
    assert sharded._TorchRows(z, torch.device("cuda")).blocks[0].device.type == ("cuda" if resident else "cpu")
    on_gpu = sharded_kmeans(z, 32, seed=1, iters=10, device="cuda", search="torch")
    on_cpu = sharded_kmeans(z, 32, seed=1, iters=10, search="faiss")
    # cuBLAS and faiss's BLAS round differently: a point within rounding of two centroids may go either way
    assert (on_gpu.assignments != on_cpu.assignments).mean() < 1e-3
    np.testing.assert_allclose(on_gpu.centroids, on_cpu.centroids, atol=1e-3)
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-4)
    again = sharded_kmeans(z, 32, seed=1, iters=10, device="cuda", search="torch")  # deterministic on the GPU
    np.testing.assert_array_equal(again.assignments, on_gpu.assignments)
    np.testing.assert_array_equal(again.centroids, on_gpu.centroids)


def test_sinkhorn_balances_on_the_gpu_as_on_the_cpu():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64)).astype(np.float32) * 3
    z = preprocess_features(centres[rng.integers(0, 40, 30_000)] + rng.standard_normal((30_000, 64), np.float32))
    clusters = kmeans(z, 32, seed=1, iters=10)
    on_gpu, on_cpu = balance(z, clusters, device="cuda"), balance(z, clusters)
    assert (on_gpu.assignments != on_cpu.assignments).mean() < 1e-3  # distances round differently on the GPU
    assert on_gpu.sizes.sum() == len(z) and on_gpu.sizes.max() <= -(-len(z) // 32)
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-4)


def _balance_rank(rank: int, world: int, port: int, x: np.ndarray, clusters, out: dict) -> None:
    import torch.distributed as dist

    from test_sharded_sinkhorn import _share

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ids = _share(rank, len(x), empty=False)
    out[rank] = ids, balance(x[ids], clusters, device="cuda", ids=ids, sharded=True, comm_device="cpu").assignments
    dist.destroy_process_group()


def test_sinkhorn_over_ranks_balances_on_the_gpu_as_one_process():
    """train.cluster_on=shards with the matrix on the GPU and the collectives through the CPU (gloo: one GPU
    cannot hold two NCCL ranks), against one process balancing every point on the same GPU."""
    from test_sharded_sinkhorn import _cases

    x, k = _cases()["skewed"]
    clusters = kmeans(x, k, seed=1)
    results = run_two_ranks(_balance_rank, x, clusters)
    labels = np.full(len(x), -1)
    for ids, assignments in results.values():
        labels[ids] = assignments
    np.testing.assert_array_equal(labels, balance(x, clusters, device="cuda").assignments)


def test_sinkhorn_balances_on_the_cpu_where_its_matrix_does_not_fit_the_gpu(monkeypatch, capsys):
    cfg, ctx = load_config(None, ["train.assign=sinkhorn"], preset="tiny").train, init_distributed()
    assert pretrain.sinkhorn_device(1_000, cfg, ctx).type == "cuda"
    monkeypatch.setattr(pretrain, "free_device_memory", lambda device: 0)
    assert pretrain.sinkhorn_device(1_000, cfg, ctx).type == "cpu"
    assert "balances on the CPU: its matrix needs" in capsys.readouterr().err


def _sinkhorn_device_rank(rank: int, world: int, port: int, out: dict) -> None:
    import io

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config(None, ["train.assign=sinkhorn"], preset="tiny").train
    ctx = Dist(rank=rank, world_size=world, device=torch.device("cuda", 0))
    sys.stderr = io.StringIO()
    room = pretrain.sinkhorn_device(1_000, cfg, ctx, sharded=True).type
    pretrain.free_device_memory = lambda device: 0 if rank == 1 else 2**50  # rank 1's GPU is full
    full = pretrain.sinkhorn_device(1_000, cfg, ctx, sharded=True).type
    out[rank] = room, full, sys.stderr.getvalue()
    dist.destroy_process_group()


def test_sinkhorn_over_ranks_balances_on_the_cpu_on_every_rank_when_one_share_does_not_fit():
    """train.cluster_on=shards: the ranks pick one kind of device together, and only rank 0 says so."""
    results = run_two_ranks(_sinkhorn_device_rank)
    assert [results[r][:2] for r in (0, 1)] == [("cuda", "cpu"), ("cuda", "cpu")]
    assert "a rank's share of its matrix needs" in results[0][2] and results[1][2] == ""


def test_a_compiled_run_compiles_once(manifest, tmp_path):
    """train.compile with Inductor on the GPU: two rounds (new heads each) whose epochs end in a batch of 4 clips
    after two of 8, with no recompilation (which would take the run off the graph that benchmarks/train_step.py
    measures). Compiling takes a minute or more: gpu_check.sh runs it as its own step."""
    cfg = load_config(None, [*GPU, "train.compile=true", "train.epoch_size=20", "train.rounds=2"], preset="tiny")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        Pretrainer(cfg, manifest, tmp_path / "run", init_distributed()).run()
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records if r["kind"] == "round"} == {0, 1}
    assert [r["compile"] for r in records if r["kind"] == "start"] == [True]
    torch._dynamo.reset()


def test_an_epoch_that_waited_for_its_loader_is_noted_once(manifest, tmp_path, capsys):
    trainer = Pretrainer(load_config(None, GPU, preset="tiny"), manifest, tmp_path / "run", init_distributed())
    trainer._note_data_wait(0.05)  # a twentieth of the time: the GPU sets the pace
    assert "NOTE" not in capsys.readouterr().err
    trainer._note_data_wait(0.5)
    assert "training waited for its clips 50% of the time" in capsys.readouterr().err
    trainer._note_data_wait(0.5)
    assert "NOTE" not in capsys.readouterr().err  # once per run


def test_evaluation_runs_on_the_gpu_in_bf16_like_on_the_cpu(manifest, tmp_path):
    import csv

    from xdc.config import FinetuneConfig
    from xdc.evaluation.adapters import Item
    from xdc.evaluation.extract import extract_features
    from xdc.evaluation.finetune import finetune
    from xdc.training.distributed import Dist
    from xdc.training.pretrain import pretrain

    cfg = load_config(None, ["train.batch_size=8", "train.k=4", "train.rounds=1", "data.workers=0"], preset="tiny")
    pretrain(cfg, manifest, tmp_path / "run", resume=False, ctx=Dist())  # on the CPU: the run is only the input
    with open(manifest.parent / "data" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    items = [Item(str(manifest.parent / "data" / r["path"]), r["label"], "test" if i % 3 == 0 else "train")
             for i, r in enumerate(rows)]  # fmt: skip
    features = {}
    for device in ("cpu", "cuda"):
        summary = extract_features(tmp_path / "run", "video", items, tmp_path / f"{device}.npz", clips=2,
                                   device=device)  # fmt: skip
        assert summary["bf16"] == (device == "cuda") and summary["device"].startswith(device)
        features[device] = torch.from_numpy(np.load(tmp_path / f"{device}.npz")["features"])
    cosine = torch.nn.functional.cosine_similarity(features["cuda"], features["cpu"], dim=1)
    assert cosine.min() > 0.98, f"{cosine.min():.4f}"  # the same features, at bf16's precision
    result = finetune(tmp_path / "run", "video", items, "full", FinetuneConfig(epochs=1, batch_size=8, test_clips=2),
                      tmp_path / "finetune", workers=2, device="cuda")  # fmt: skip
    assert result["device"] == "cuda" and result["bf16"] and np.isfinite(result["last_loss"])


def test_the_released_weights_run_on_the_gpu_as_evaluation_places_them(tmp_path):
    # Their per-conv middle widths (230, 460, 921, ...) padded to multiples of 8, channels-last, bf16: the
    # features of the fp32 CPU network at bf16's precision.
    from test_official import official_state_dict
    from xdc.evaluation.device import EvalDevice
    from xdc.evaluation.sources import load_source

    torch.save(official_state_dict(), tmp_path / "released.pth")
    source = load_source(tmp_path / "released.pth", "video")
    x = torch.randn(4, 3, 8, 112, 112)
    with torch.no_grad():
        expected = source.encoder(x)  # before the module moves to the GPU
        place = EvalDevice(torch.device("cuda"), source.cfg, "video")
        assert place.bf16 and place.channels_last
        encoder = place.module(source.encoder)
        with place.autocast():
            got = encoder(x.cuda().contiguous(memory_format=torch.channels_last_3d))
    assert any(getattr(m, "extra_out", 0) for m in source.encoder.modules())  # the widths were padded
    cosine = torch.nn.functional.cosine_similarity(got.float().cpu(), expected, dim=1)
    assert cosine.min() > 0.98, f"{cosine.min():.4f}"


def test_a_pinned_loader_goes_on_past_a_dead_worker(manifest):
    # The pin-memory thread sits between the workers and the training process on CUDA: a death must still surface
    # and the pass go on with every batch, pinned.
    from xdc.data.datasets import EvalClips, make_loader
    from xdc.data.manifest import Manifest
    from xdc.data.worker_deaths import Surviving

    cfg = load_config(None, preset="tiny").data
    dataset = EvalClips(Manifest.load(manifest), cfg, clips=2, raw_video=True)
    expected = [b["index"].tolist() for b in make_loader(dataset, 4, 0)]
    batches = iter(Surviving(make_loader(dataset, 4, 2, pin_memory=True)))
    got = [next(batches)]
    pass_ = batches.gi_frame.f_locals["it"]
    while (dataset.reading[:, 0] >= 0).any():  # until both workers have their batches ready
        time.sleep(0.05)
    os.kill(pass_._workers[0].pid, signal.SIGKILL)
    got += list(batches)
    assert [b["index"].tolist() for b in got] == expected
    assert all(b["video"].is_pinned() for b in got)
