"""torchrun / DDP plumbing. Everything here also works in a plain single process (no process group)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from xdc.clustering.kmeans import LABEL_DTYPE
from xdc.config import job_ranks
from xdc.data.failures import FailureLog, TooManyFailures
from xdc.errors import RankFailed, SharedError, UserError

GATHER_STEP_BYTES = 256 * 2**20  # features that rank 0 receives at once (gather_rows)
# How long the other ranks wait for work rank 0 does alone (on_main): the run's videos (minutes at 65M videos),
# clustering under train.cluster_on=rank0 (k-means or Sinkhorn on a CPU can take an hour at tens of millions).
# The default group's collectives time out after 10 minutes under NCCL (30 under gloo), which would stop a run
# there after a whole feature extraction; a rank that crashes is still noticed at once (torchrun stops the rest).
RANK0_WORK_TIMEOUT = timedelta(hours=6)
# c10d's error where this rank waited in vain for another to join the group, as gloo connects them (torch 2.14, seen
# in a 2-rank torchrun job whose rank 1 never came): "wait timeout after 1800000ms, keys: /default_pg/0//cpu//0/1"
JOIN_TIMEOUT = re.compile(r"wait timeout after (\d+)ms")
T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # the gloo group in which the other ranks wait for rank 0 (on_main); None: the default group
    waiting: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)
    # a gloo group with gloo's default timeout (30 minutes) for small collectives on the host in the middle of a pass
    # (judge_failures): a rank that hangs there stops the others then, not after RANK0_WORK_TIMEOUT; None: the default
    host: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(gpus: bool = True) -> Dist:
    """Join the process group that torchrun describes in the environment (NCCL on GPU, gloo on CPU). ``gpus``
    false: gloo and the CPU even where there are GPUs (work on files: ``xdc index``, ``xdc prepare``)."""
    world = job_ranks()
    if gpus and torch.cuda.is_available():
        local = gpu_index(os.environ, torch.cuda.device_count())
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world == 1:
        return Dist(device=device)
    try:
        if not dist.is_initialized():
            if device.type == "cuda":  # binding the rank's GPU up front lets NCCL collectives (barrier too) use it
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
        waiting = dist.new_group(backend="gloo", timeout=RANK0_WORK_TIMEOUT)
        host = dist.new_group(backend="gloo")
    except dist.DistStoreError as e:
        found = JOIN_TIMEOUT.search(str(e))
        if found is None or device.type == "cuda":  # NCCL's start left as it was (not tried on GPUs)
            raise
        # none of xdc's bugs: a rank that ended, or hangs, before it joined
        raise UserError(f"the job's other ranks did not all join it within {int(found.group(1)) / 1000:g} s "
                        f"({type(e).__name__}: {e}): a rank that ended before it joined said why in its node's "
                        "torchrun output (a --config or file that node lacks, say); one that did not end hangs on its "
                        "way there (a file system that does not answer, say)") from e
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, waiting=waiting, host=host)


def gpu_index(env: Mapping[str, str], gpus: int) -> int:
    """The GPU, of the ``gpus`` that this process sees, of the process whose environment is ``env``: in a torchrun
    job its place on its node (LOCAL_RANK), in a process alone the first (until 2026-12-03 a LOCAL_RANK left in a
    shell chose it). A UserError where the node runs more of the job's processes (LOCAL_WORLD_SIZE) than it has GPUs,
    each of which needs one: until 2026-12-03 CUDA's "invalid device ordinal" traceback."""
    if job_ranks(env) == 1:
        return 0
    local = env.get("LOCAL_RANK") or "0"
    if not local.isdecimal():
        raise UserError(f"LOCAL_RANK={local!r} in the environment is not a number: torchrun sets it to each process's "
                        "place on its node")  # fmt: skip
    node = env.get("LOCAL_WORLD_SIZE", "")
    node = max(int(local) + 1, int(node) if node.isdecimal() else 0)  # a launcher other than torchrun may not set it
    if node > gpus:
        visible = f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if "CUDA_VISIBLE_DEVICES" in env else ""
        raise UserError(f"{node} processes of the job on this node (torchrun --nproc_per_node {node}), but it has "
                        f"{gpus} GPU(s){visible}: each process needs a GPU of its own; start at most {gpus} per node")
    return int(local)


def leave_distributed(finished: bool) -> None:
    """Leave the process group that init_distributed joined, if any: after the others (a barrier) when this rank
    ``finished``; at once after an error, when the others may never get there. Left to the interpreter's exit,
    gloo's threads were torn down with the group still alive and a rank could abort at the very end of a
    finished run ("terminate called without an active exception", seen about once in five 2-rank runs on a
    loaded 2-core machine)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def gather_rows(
    values: torch.Tensor, indices: torch.Tensor, total: int, ctx: Dist, step_bytes: int = GATHER_STEP_BYTES
) -> torch.Tensor | None:
    """Assemble per-rank rows into one ``total x D`` tensor ordered by dataset index, on rank 0 (which alone
    clusters them); the other ranks get None and hold no copy.

    Rows a rank could not compute (failed clips) are simply absent from its shard and stay NaN: nothing is
    dropped or duplicated, whatever ``total`` is relative to the world size. The rows travel in steps of at
    most ``step_bytes`` for all ranks together: rank 0 receives them on its device (NCCL), where all at once
    would be N x D more memory beside the model (20 GB at 10M videos, D = 512).
    """
    out = torch.full((total, values.shape[1]), float("nan"), dtype=values.dtype) if ctx.main else None
    if not ctx.enabled:
        out[indices] = values
        return out
    count = torch.tensor([len(indices)], device=ctx.device)
    counts = [torch.zeros_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    step = max(1, step_bytes // (ctx.world_size * values.shape[1] * values.element_size()))
    for start in range(0, longest, step):
        # Ranks hold different row counts: each sends `rows` rows, padded with index -1.
        rows, mine = min(step, longest - start), indices[start : start + step]
        piece = torch.zeros(rows, values.shape[1], dtype=values.dtype, device=ctx.device)
        piece[: len(mine)] = values[start : start + step].to(ctx.device)
        keys = torch.full((rows,), -1, dtype=torch.long, device=ctx.device)
        keys[: len(mine)] = mine.to(ctx.device)
        pieces = [torch.zeros_like(piece) for _ in range(ctx.world_size)] if ctx.main else None
        all_keys = [torch.zeros_like(keys) for _ in range(ctx.world_size)] if ctx.main else None
        dist.gather(piece, pieces, dst=0)
        dist.gather(keys, all_keys, dst=0)
        if ctx.main:
            for v, i in zip(pieces, all_keys):
                kept = i >= 0
                out[i[kept].cpu()] = v[kept].cpu()
    return out


def broadcast_labels(labels: np.ndarray | None, ctx: Dist) -> np.ndarray:
    """Rank 0's pseudo-labels (int32: ``LABEL_DTYPE``) on every rank (the other ranks pass None)."""
    if not ctx.enabled:
        return labels
    length = torch.tensor([len(labels) if ctx.main else 0], device=ctx.device)
    dist.broadcast(length, 0)
    if ctx.main:
        tensor = torch.from_numpy(np.asarray(labels, dtype=LABEL_DTYPE)).to(ctx.device)
    else:
        tensor = torch.empty(int(length.item()), dtype=torch.int32, device=ctx.device)
    dist.broadcast(tensor, 0)
    return tensor.cpu().numpy()


def broadcast_buffers(module: torch.nn.Module, ctx: Dist) -> None:
    """Rank 0's buffers of ``module`` (BatchNorm's running statistics) on every rank. DDP sends them at the start
    of each training forward, after which each rank's forward updates its own copy from its own clips: after
    training, the ranks' statistics differ. Rank 0's are the ones checkpointed and exported, so a pass in eval mode
    on every rank (a round's feature extraction) takes them first."""
    if ctx.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def on_main(work: Callable[[], T], ctx: Dist) -> T | None:
    """``work()`` on rank 0 alone; its result there, None on the other ranks. They wait for it in
    ``ctx.waiting`` (up to RANK0_WORK_TIMEOUT), and when it fails every rank raises rank 0's error rather than wait
    for rank 0 at the next collective: a UserError as a SharedError, any other as a RankFailed (on rank 0 caused by
    the error itself), which rank 0 alone says. Where the others have left (killed, say) as rank 0's work failed, rank
    0 raises its error itself, as one process would: gloo's error of the broadcast would say only that they left."""
    if not ctx.enabled:
        return work()
    result, error = None, None
    if ctx.main:
        try:
            result = work()
        except Exception as e:
            error = e
    box = [None if error is None else ("user" if isinstance(error, UserError) else type(error).__name__, str(error))]
    try:
        dist.broadcast_object_list(box, src=0, group=ctx.waiting)
    except RuntimeError:
        if error is None:
            raise
        box = None  # another rank left as this one failed (killed, say): its own error, as one process's
    if box is None:  # raised here, not in the handler above: not "during handling" gloo's error
        raise error
    if box[0] is None:
        return result
    kind, message = box[0]
    if kind == "user":
        raise SharedError(message) from error
    raise RankFailed(f"rank 0 failed ({kind}: {message})") from error


def gather_objects(obj: T, ctx: Dist) -> list[T] | None:
    """Every rank's ``obj`` (picklable, small) on rank 0, in rank order; None on the other ranks."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size if ctx.main else None
    dist.gather_object(obj, out, dst=0, group=ctx.waiting)
    return out


def broadcast_object(obj: T | None, ctx: Dist) -> T:
    """Rank 0's ``obj`` (picklable) on every rank; the other ranks pass anything (None)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0, group=ctx.waiting)
    return box[0]


# settings that may differ between ranks: how many loader processes a rank starts fits its node's cores
PER_RANK_SETTINGS = ("data.workers",)


def same_settings(settings: dict[str, object], ctx: Dist) -> None:
    """Under torchrun, every rank's ``settings`` (name: value, small and picklable) are rank 0's, or every rank stops
    with one line from rank 0 that names those that differ. Each node's torchrun gives its ranks that node's command
    line and --config file: a node started with another learning rate or seed would train on apart from the others
    without a word. A collective."""
    if not ctx.enabled:
        return
    ranks = gather_objects(settings, ctx)

    def judge() -> None:
        for rank, theirs in enumerate(ranks):
            differ = [f"{key}={theirs.get(key)!r} (rank 0: {value!r})" for key, value in ranks[0].items()
                      if theirs.get(key) != value]  # fmt: skip
            if differ:
                raise UserError(f"rank {rank} was started with other settings than rank 0: {', '.join(differ)}; "
                                "start every node with the same command line and --config")  # fmt: skip

    on_main(judge, ctx)


# Under DDP the ranks judge their failed clips together every so many batches of a pass (judge_failures): a run
# with too many stops within that many batches of the point where one process alone would, every rank at once.
FAILURE_CHECK_BATCHES = 10


def judge_failures(failures: FailureLog, ctx: Dist, going: bool = True) -> None:
    """Under DDP, judge the failed clips of all ranks together (each rank's ``failures`` only counts: not alone),
    every FAILURE_CHECK_BATCHES batches of a pass (``going``) and at its end, and stop every rank at the same point
    when too many failed (TooManyFailures; the caller words the stop, see failures_line). One all-reduce of three
    numbers in the ranks' gloo group ``ctx.host``, on the host: no wait for the device. A collective: a rank whose
    pass has ended (not ``going``) takes part in the others' judgements until every rank's has (an extraction's
    shards can differ in batches, also after a resume from its parts). A process alone judges its own counts at
    every batch (FailureLog.update) and at the end of its pass (FailureLog.end_pass). The counts of a pass that
    every rank ended are judged however few they are."""
    if not ctx.enabled:
        if not going:
            failures.end_pass()
        return
    while True:
        counts = torch.tensor([failures.items, failures.failed, int(going)], dtype=torch.int64)
        dist.all_reduce(counts, group=ctx.host)
        items, failed, passes = counts.tolist()
        if failures.too_many(items, failed, whole_pass=not passes):
            raise TooManyFailures(f"{failed} of {items} clips failed to load")
        if going or not passes:
            return


def failures_line(failures: FailureLog, ctx: Dist, say: Callable[[FailureLog], str] = FailureLog.summary) -> str:
    """A line about the failed clips of every rank, the same on every rank (a run's stop: by default the line of
    too many, see judge_failures): ``say`` of every rank's ``failures`` summed up on rank 0 (it may write them
    down there). A collective."""
    ranks = gather_objects(failures.state(), ctx)

    def line() -> str:
        every = FailureLog(failures.max_fraction)
        every.merge(ranks)
        return say(every)

    return broadcast_object(on_main(line, ctx), ctx)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
