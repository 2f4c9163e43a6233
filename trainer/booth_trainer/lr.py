"""Learning-rate schedule math, per stage.

Each stage has its own schedule over its own steps (``lrScheduler`` in the spec). The factor for
0-based stage step ``s`` of ``T`` steps with ``W`` warmup steps follows the usual definitions
(the same as ``transformers``/``diffusers`` ``get_scheduler``):

- ``constant``: 1
- ``constant_with_warmup``: ``s / W`` while ``s < W``, then 1
- ``linear``: warmup, then ``(T - s) / (T - W)`` (reaches ``1/(T-W)`` on the last step, 0 after)
- ``cosine``: warmup, then ``0.5 * (1 + cos(pi * (s - W) / (T - W)))`` (Loshchilov & Hutter
  2017, SGDR, one half-period without restarts)

The trainer wraps :func:`lr_factor` in a ``torch.optim.lr_scheduler.LambdaLR`` whose state
(``last_epoch``) is saved and restored, so a resumed step ``k+1`` uses the factor of ``k``
(0-based) exactly as the uninterrupted run. The lambda is a plain closure over the *current*
spec's stage length, never stored in the state, so an extended stage is evaluated over its new
length (docs/progress-protocol.md, "Exact resume").
"""

from __future__ import annotations

import math
from typing import Callable

KINDS = ("constant", "constant_with_warmup", "linear", "cosine")


def lr_factor(kind: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate for 0-based stage step ``step``.

    :param kind: one of :data:`KINDS`.
    :param step: optimizer steps already done in the stage (0 for the first step).
    :param total: steps in the stage.
    :param warmup: linear warmup steps from 0 (``lrScheduler.warmupSteps``).
    :returns: a factor in [0, 1].
    :raises ValueError: for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown LR scheduler {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant_with_warmup":
        return 1.0
    progress_span = max(1, total - warmup)
    if kind == "linear":
        return max(0.0, (total - step) / progress_span)
    progress = (step - warmup) / progress_span
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def make_lambda(kind: str, total: int, warmup: int) -> Callable[[int], float]:
    """A closure for ``LambdaLR`` (a function, not an object, so LambdaLR never pickles it)."""

    def factor(step: int) -> float:
        return lr_factor(kind, step, total, warmup)

    return factor
