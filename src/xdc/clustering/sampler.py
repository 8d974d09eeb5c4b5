"""DeepCluster's sampler: every epoch draws the same number of clips from every non-empty cluster.

Without it, a network trained on its own clusters is rewarded for putting everything in one big cluster;
sampling uniformly over clusters makes a big cluster no more present in the loss than a small one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from xdc.clustering.arguments import integer

MASK63 = np.uint64(2**63 - 1)
_CHUNK = 4096  # draws turned into Python ints at a time


class ClusterBalancedSampler(Sampler[tuple[int, int]]):
    """Yields ``(video_index, draw_seed)`` keys for :class:`xdc.data.datasets.TrainClips`.

    The epoch (``epoch_size`` draws in all ranks together) is split evenly over the label sets (MDC trains two
    heads, one per modality's clusters), and each set's share evenly over its non-empty clusters (labels >= 0
    that occur; -1 is never drawn), the remainder going to random clusters. A cluster with enough videos gives
    distinct ones; a smaller one gives all its videos, each repeated as evenly as possible. The draws are
    shuffled together. The draw seed of global position p is a bijection of p (so the seeds of one epoch are
    distinct), keyed by (seed, round, epoch): the clip and augmentation of every draw are reproducible.

    Everything depends on (seed, round, epoch) only, not on global RNG state. With ``world_size`` > 1 rank r
    takes positions r, r + world_size, ... of the sequence, padded cyclically from its start to a multiple of
    ``world_size`` (the padding draws repeat a video, with the seed of their own position), or with ``pad`` False
    not padded: ranks past the last position then have one draw fewer. :meth:`set_epoch` resets the start to 0,
    so call :meth:`set_start` after it to resume mid-epoch; it keeps the round unless given one.
    """

    def __init__(
        self, label_sets: Sequence[np.ndarray], epoch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        pad: bool = True,
    ):  # fmt: skip
        super().__init__()
        epoch_size, seed = integer(epoch_size, "epoch_size"), integer(seed, "seed")
        rank, world_size = integer(rank, "rank"), integer(world_size, "world_size")
        if len(label_sets) == 0:  # len: `not` of a 2-D array of label sets (np.stack) is ambiguous
            raise ValueError("the sampler needs at least one set of cluster labels")
        if len({len(labels) for labels in label_sets}) > 1:  # each labels the same videos: drawn until 2026-12-03
            raise ValueError(f"the label sets label the same videos, but their lengths differ: "
                             f"{[len(labels) for labels in label_sets]}")  # fmt: skip
        if epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.clusters = [_cluster_members(np.asarray(labels)) for labels in label_sets]
        self.epoch_size = epoch_size
        self.seed = seed % 2**64  # SeedSequence takes non-negative entropy
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.round = 0
        self.start = 0

    def set_epoch(self, epoch: int, round: int | None = None) -> None:
        """Draw the sequence of ``epoch`` of ``round`` from its start; ``round`` None keeps the round set before
        (0 at first), so that ``set_epoch(epoch)`` alone, as torch's DistributedSampler is called, stays in the
        round (until 2026-12-03 it went back to round 0, whose draws it then repeated)."""
        epoch = integer(epoch, "epoch")
        round = self.round if round is None else integer(round, "round")
        if epoch < 0 or round < 0:
            raise ValueError(f"epoch and round must be >= 0, got epoch={epoch}, round={round}")
        self.epoch, self.round, self.start = epoch, round, 0

    def set_start(self, position: int) -> None:
        """Skip the first ``position`` items of this rank's sequence of the current epoch.

        A position past the end leaves nothing (a resume after the epoch's last, partial batch).
        """
        position = integer(position, "start position")
        if position < 0:
            raise ValueError(f"start position must be >= 0, got {position}")
        self.start = min(position, self._rank_length())

    def __len__(self) -> int:
        return self._rank_length() - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Only this rank's share of the epoch is kept, as arrays handed out as Python ints a chunk at a time: at
        # tens of millions of draws, the whole epoch's seeds or a list of the share would take gigabytes.
        videos, key = self._epoch()
        positions = np.arange(self.start, self._rank_length(), dtype=np.uint64)
        positions = positions * np.uint64(self.world_size) + np.uint64(self.rank)
        mine = videos[positions % np.uint64(videos.size)]  # the padding repeats the sequence from its start
        seeds = mix63((key + positions) & MASK63)
        del videos, positions
        for start in range(0, mine.size, _CHUNK):
            yield from zip(mine[start : start + _CHUNK].tolist(), seeds[start : start + _CHUNK].tolist())

    def global_sequence(self) -> tuple[np.ndarray, np.ndarray]:
        """Video indices and draw seeds (uint64 < 2**63) of all ranks' draws this epoch, padded where ``pad``."""
        videos, key = self._epoch()
        total = -(-self.epoch_size // self.world_size) * self.world_size if self.pad else self.epoch_size
        positions = np.arange(total, dtype=np.uint64)
        return np.resize(videos, positions.size), mix63((key + positions) & MASK63)

    def _epoch(self) -> tuple[np.ndarray, np.uint64]:
        """This epoch's draws of all ranks in order (unpadded), and the key of their seeds."""
        entropy = np.random.SeedSequence([self.seed, self.round, self.epoch])
        rng = np.random.default_rng(entropy)
        n_sets = len(self.clusters)
        shares = [self.epoch_size // n_sets + (i < self.epoch_size % n_sets) for i in range(n_sets)]
        videos = np.concatenate([_balanced_draws(c, share, rng) for c, share in zip(self.clusters, shares)])
        rng.shuffle(videos)  # the order of videos[rng.permutation(videos.size)], without its two copies
        return videos, entropy.generate_state(1, np.uint64)[0] & MASK63

    def _rank_length(self) -> int:
        if self.pad:
            return -(-self.epoch_size // self.world_size)
        return -(-(self.epoch_size - self.rank) // self.world_size)


def shuffled_draws(n: int, seed: int, rank: int = 0, world_size: int = 1) -> ClusterBalancedSampler:
    """Each of ``n`` items once per epoch, in a new order every epoch, each draw with a seed of its own: the balanced
    sampler over a single cluster. Unlike a shuffling DataLoader's, its order and draws depend on (seed, epoch,
    position) only, whatever the loader's workers, it can start mid-epoch (``set_start``), and under DDP rank r
    takes positions r, r + world_size, ... of the same sequence, not padded: each item once in all ranks."""
    if integer(n, "n") < 1:  # the sampler's own words named its epoch_size, which the caller never gave
        raise ValueError(f"shuffled_draws needs at least one item to draw, got n = {n}")
    return ClusterBalancedSampler([np.zeros(n, np.int32)], n, seed, rank=rank, world_size=world_size, pad=False)


def _cluster_members(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of the items of each label that occurs (labels >= 0), in label order: views of one array of
    int32 indices (int64 from 2**31 items on)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cluster labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    items = np.flatnonzero(labels >= 0).astype(np.int32 if labels.size < 2**31 else np.int64)
    if items.size == 0:
        raise ValueError("a set of cluster labels has no labelled item (all -1): nothing to sample")
    keys = labels[items]
    if keys.max() < 2**16:  # numpy sorts 16-bit integers by radix: 5x faster than int32 at 65M items
        keys = keys.astype(np.uint16)
    order = np.argsort(keys, kind="stable")
    items, keys = items[order], keys[order]
    del order
    # where the sorted labels change, not a bincount: that one took 8 B per label value up to the largest (a label
    # of 2**40 asked for 8 TiB, until 2026-12-03)
    return np.split(items, np.flatnonzero(keys[1:] != keys[:-1]) + 1)


def _balanced_draws(clusters: list[np.ndarray], total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` items, an equal number (±1, the extras to random clusters) from every cluster."""
    counts = np.full(len(clusters), total // len(clusters))
    counts[rng.choice(len(clusters), total % len(clusters), replace=False)] += 1
    draws = []
    for members, count in zip(clusters, counts):
        repeats, rest = divmod(int(count), members.size)
        # a small cluster gives each member `repeats` times: fewer duplicates than independent draws
        draws += [np.tile(members, repeats), rng.choice(members, rest, replace=False)]
    return np.concatenate(draws)


def mix63(x: np.ndarray) -> np.ndarray:
    """A bijection of [0, 2**63) that scatters consecutive inputs (xor-shifts and odd multipliers, mod 2**63)."""
    x = x ^ (x >> np.uint64(31))
    x = (x * np.uint64(0xBF58476D1CE4E5B9)) & MASK63
    x = x ^ (x >> np.uint64(29))
    x = (x * np.uint64(0x94D049BB133111EB)) & MASK63
    return x ^ (x >> np.uint64(32))
