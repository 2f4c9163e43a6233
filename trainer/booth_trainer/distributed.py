"""Data-parallel training on one node: the world from the launcher's environment, and the few
collectives the loop needs.

``accelerate launch --num_processes N -m booth_trainer train ...`` (torch.distributed.run
underneath) starts N copies of the trainer with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`world_from_env` reads them without torch (the
pure tests use it); :class:`Collective` wraps ``torch.distributed`` (NCCL on CUDA, gloo on the
CPU) with exactly the operations the loop uses, so ``train.py`` never touches the process group
directly:

- :meth:`Collective.average_gradients`: one bucketed all-reduce of the trainable gradients per
  optimizer step (after the accumulation micro-batches), instead of wrapping modules in
  ``DistributedDataParallel``. Why: the loop calls the UNet and the text encoders through
  helpers that use their attributes (``config``, ``dtype``, peft adapters), a stage may train
  only one of them (two-stage) and the frozen one still runs forward, and gradient
  checkpointing recomputes inside backward; an explicit all-reduce after backward is correct in
  all of these without ``find_unused_parameters`` or ``no_sync``. The cost is that communication
  does not overlap the backward pass (see docs/trainer.md).
- :meth:`Collective.step_sync`: one small all-reduce per step that averages the loss for the
  ``step`` event and merges the stop flags, so every rank agrees to stop after the same step
  even when SIGTERM/SIGUSR1 reached only some ranks.
- barriers and a broadcast of small Python objects (the chosen resume state, an error).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

from .errors import TrainerError

#: How long a rank waits in a collective for the others (rank 0 renders samples, class images
#: and writes the model while the others wait). Overridable with BOOTH_DIST_TIMEOUT_S.
DEFAULT_TIMEOUT_S = 2 * 3600

#: Stop signals in the order of their slot in the step-sync tensor.
_SIGNAL_SLOTS = ("SIGTERM", "SIGUSR1")

#: Gradient bucket size for the all-reduce (elements are fp32: 32 MiB per bucket).
_BUCKET_ELEMENTS = 8 * 1024 * 1024


@dataclass(frozen=True)
class World:
    """This process's place among the trainer processes.

    :ivar rank: global rank (0 prints events and writes outputs).
    :ivar local_rank: rank on this node; the CUDA device index.
    :ivar size: number of processes (1: plain single-process training).
    """

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainerError("environment", f"{name}={raw!r} is not a whole number (set by the launcher)") from None


def world_from_env(env: Optional[Mapping[str, str]] = None) -> World:
    """The world from ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (all optional; absent = 1 process).

    :raises TrainerError: ``environment`` when the values are inconsistent or, with several
        processes, ``MASTER_ADDR``/``MASTER_PORT`` are missing.
    """
    env = os.environ if env is None else env
    size = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    local = _int_env(env, "LOCAL_RANK", rank)
    if size < 1:
        raise TrainerError("environment", f"WORLD_SIZE={size} must be at least 1")
    if not 0 <= rank < size:
        raise TrainerError("environment", f"RANK={rank} is outside WORLD_SIZE={size}")
    if local < 0 or local > rank:
        raise TrainerError("environment", f"LOCAL_RANK={local} does not fit RANK={rank}")
    if size > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not (env.get(n) or "").strip()]
        if missing:
            raise TrainerError("environment", f"WORLD_SIZE={size} but {' and '.join(missing)} not set; start several processes with accelerate launch or torchrun")
    return World(rank=rank, local_rank=local, size=size)


def log_prefix(env: Optional[Mapping[str, str]] = None) -> str:
    """``"[rank R] "`` when several processes share stderr, else ``""``."""
    env = os.environ if env is None else env
    try:
        size = int((env.get("WORLD_SIZE") or "1").strip() or 1)
    except ValueError:
        return ""
    return f"[rank {(env.get('RANK') or '0').strip()}] " if size > 1 else ""


def rng_file(rank: int) -> str:
    """The RNG file of a rank in a resume state: ``rng.pt`` for rank 0 (as single-process
    states have it), ``rng-<rank>.pt`` for the others."""
    return "rng.pt" if rank == 0 else f"rng-{rank}.pt"


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s Python/NumPy/torch streams in a fresh multi-process run."""
    return seed + rank


def reseed_after_world_change(seed: int, step: int, rank: int, world: int) -> int:
    """Seed for a rank resuming a state saved with another number of processes.

    The saved streams cannot be mapped onto a different set of ranks, so each rank starts a new
    stream derived from the spec's seed, the step and its rank: deterministic (the same resume
    gives the same run) but not equal to any uninterrupted run.
    """
    digest = hashlib.sha256(f"booth-reseed:{seed}:{step}:{rank}:{world}".encode()).hexdigest()
    return int(digest[:15], 16)


def stop_slots(requested: Optional[str]) -> Tuple[float, float]:
    """The step-sync slots (SIGTERM, SIGUSR1) of one rank's stop request."""
    return tuple(1.0 if requested == name else 0.0 for name in _SIGNAL_SLOTS)  # type: ignore[return-value]


def agreed_signal(local: Optional[str], slots: List[float]) -> Optional[str]:
    """The stop signal all ranks act on: this rank's own when it has one, else the first slot
    any rank raised, else None."""
    if local is not None:
        return local
    for name, value in zip(_SIGNAL_SLOTS, slots):
        if value > 0:
            return name
    return None


class Collective:
    """The process group and the operations of the training loop (torch imported lazily).

    :param world: this process's place.
    :param device: the rank's device (``cuda:LOCAL_RANK`` or ``cpu``); picks NCCL or gloo.
    """

    def __init__(self, world: World, device: Any) -> None:
        self.world = world
        self.device = device
        self.backend = "nccl" if device.type == "cuda" else "gloo"

    def init(self) -> None:
        """Joins the process group (``env://``: MASTER_ADDR/PORT, RANK, WORLD_SIZE)."""
        import torch.distributed as dist

        timeout = float(os.environ.get("BOOTH_DIST_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
        kwargs: dict = {}
        if self.backend == "nccl":
            # Binds the communicator to this rank's GPU up front (no guessing in barrier()).
            kwargs["device_id"] = self.device
        dist.init_process_group(self.backend, init_method="env://", rank=self.world.rank, world_size=self.world.size, timeout=datetime.timedelta(seconds=timeout), **kwargs)

    def close(self) -> None:
        """Leaves the process group (after the last collective)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        """Waits until every rank got here."""
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small picklable values only)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def step_sync(self, loss: float, requested: Optional[str]) -> Tuple[float, Optional[str]]:
        """All-reduces ``[loss, SIGTERM?, SIGUSR1?]``: the mean loss over ranks and the stop
        signal every rank agrees on (see :func:`agreed_signal`)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([loss, *stop_slots(requested)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        values = t.tolist()
        return values[0] / self.world.size, agreed_signal(requested, values[1:])

    def agree_stop(self, requested: Optional[str]) -> Optional[str]:
        """Only the stop agreement of :meth:`step_sync` (between steps)."""
        return self.step_sync(0.0, requested)[1]

    def average_gradients(self, params: List[Any]) -> None:
        """Replaces every existing gradient by its mean over the ranks (bucketed all-reduce).

        Parameters without a gradient are skipped: every rank runs the same graph, so the set is
        the same on all ranks, and skipping keeps AdamW's single-process behaviour (no update of
        a parameter that received no gradient).
        """
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        by_dtype: dict = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            buckets: List[List[Any]] = []
            current: List[Any] = []
            size = 0
            for g in group:
                if current and size + g.numel() > _BUCKET_ELEMENTS:
                    buckets.append(current)
                    current, size = [], 0
                current.append(g)
                size += g.numel()
            if current:
                buckets.append(current)
            for bucket in buckets:
                flat = torch.cat([b.reshape(-1) for b in bucket])
                dist.all_reduce(flat)
                flat.div_(self.world.size)
                offset = 0
                for b in bucket:
                    n = b.numel()
                    b.copy_(flat[offset : offset + n].view_as(b))
                    offset += n

    def broadcast_parameters(self, params: List[Any]) -> None:
        """Copies rank 0's values of ``params`` to every rank (start of each stage), so the
        ranks start identical even if an initialisation was not deterministic."""
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)


def stop_with_launcher() -> bool:
    """Asks Linux to send this process SIGTERM when its parent (the launcher) dies.

    torch.distributed.run starts every rank in its own session and does not handle SIGUSR1: a
    SIGUSR1 (or SIGKILL) to the launcher kills it and would leave the ranks training as
    orphans. With ``PR_SET_PDEATHSIG`` they get SIGTERM instead, so they save a resume state
    and exit 75 like after any stop signal. The launcher creates the ranks from its main thread,
    so the parent-death signal cannot fire while it is alive.

    :returns: True when set (Linux), False elsewhere.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
