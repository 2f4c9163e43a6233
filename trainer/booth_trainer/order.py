"""Data order: a permutation of the dataset per epoch, drawn from the seed and the epoch number.

The order must be the same on every host and every Python version, and must continue exactly
after a resume, so it uses its own generator (SplitMix64, Steele et al. 2014, the seeding
generator of Java's ``SplittableRandom``) and a Fisher-Yates shuffle instead of ``random`` or
torch. A :class:`DataOrder` is an endless stream of dataset indices: epoch ``e`` is the
permutation drawn from ``(seed, stream, e)``, and the cursor ``(epoch, position)`` is all a resume
state needs to continue with the same next batch. A batch that crosses an epoch boundary takes
the rest of one epoch and the start of the next.
"""

from __future__ import annotations

from typing import List, Tuple

_MASK = (1 << 64) - 1


def _splitmix64(state: int) -> Tuple[int, int]:
    """One SplitMix64 step: returns (new state, 64-bit output)."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return state, z ^ (z >> 31)


def permutation(n: int, seed: int, epoch: int, stream: int = 0) -> List[int]:
    """The order of ``n`` items in epoch ``epoch``.

    :param n: dataset size (>= 0).
    :param seed: the spec's seed.
    :param epoch: 0-based epoch number.
    :param stream: separates independent orders with the same seed (0 instances, 1 class images).
    :returns: a permutation of ``range(n)``.
    """
    state = (seed * 0x100000001B3 + epoch * 0x9E3779B1 + stream * 0x85EBCA77 + 1) & _MASK
    # Warm up so nearby seeds/epochs decorrelate.
    for _ in range(4):
        state, _unused = _splitmix64(state)
    out = list(range(n))
    for i in range(n - 1, 0, -1):
        state, r = _splitmix64(state)
        # Rejection sampling avoids modulo bias.
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        while r >= limit:
            state, r = _splitmix64(state)
        j = r % bound
        out[i], out[j] = out[j], out[i]
    return out


def shard(indices: List[int], rank: int, world: int) -> List[int]:
    """Rank ``rank``'s contiguous share of a global batch whose length is a multiple of ``world``.

    :raises ValueError: when the rank is outside the world or the batch does not split evenly.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    if len(indices) % world:
        raise ValueError(f"a batch of {len(indices)} does not split over {world} ranks")
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


class DataOrder:
    """An endless stream of dataset indices, resumable from ``(epoch, position)``.

    :param n: dataset size (must be > 0).
    :param seed: the spec's seed.
    :param stream: 0 for instance images, 1 for class images.
    :param epoch: epoch of the next index.
    :param position: position of the next index inside that epoch's permutation.
    :raises ValueError: when ``n`` is 0 or the cursor is outside the epoch.
    """

    def __init__(self, n: int, seed: int, stream: int = 0, epoch: int = 0, position: int = 0) -> None:
        if n <= 0:
            raise ValueError("a data order needs at least one item")
        if not 0 <= position <= n or epoch < 0:
            raise ValueError(f"cursor (epoch {epoch}, position {position}) is outside an epoch of {n} items")
        self.n, self.seed, self.stream = n, seed, stream
        self.epoch, self.position = epoch, position
        if self.position == n:  # a cursor saved at the very end of an epoch
            self.epoch, self.position = epoch + 1, 0
        self._perm = permutation(n, seed, self.epoch, stream)

    def take(self, count: int) -> List[int]:
        """The next ``count`` indices, advancing the cursor (crossing epochs as needed)."""
        out: List[int] = []
        while len(out) < count:
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
                self._perm = permutation(self.n, self.seed, self.epoch, self.stream)
            k = min(count - len(out), self.n - self.position)
            out.extend(self._perm[self.position : self.position + k])
            self.position += k
        return out

    def take_shard(self, count: int, rank: int = 0, world: int = 1) -> List[int]:
        """Rank ``rank``'s ``count`` indices of the next global batch of ``count * world``.

        Every rank keeps the same cursor (all advance by ``count * world``), so the cursor saved
        by rank 0 is valid for every rank and for any other number of ranks; with ``world`` 1
        this is :meth:`take`.
        """
        return shard(self.take(count * world), rank, world)

    def cursor(self) -> Tuple[int, int]:
        """``(epoch, position)`` of the next index, as a resume state stores it."""
        return self.epoch, self.position
