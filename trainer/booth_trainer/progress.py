"""Progress events: one JSON object per line on stdout, flushed after each line.

Every event carries ``event`` and ``time`` (ISO-8601 UTC with milliseconds and ``Z``); the fields
of each event are listed in ``docs/progress-protocol.md``. Nothing else may be written to
stdout: human logs go to stderr (:func:`log`). Non-finite floats (a NaN loss) are sent as
``null`` because JSON has no NaN.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import threading
import time
from typing import Any, Optional, TextIO


def utc_now() -> str:
    """The current time as ``2025-01-31T12:00:00.123Z``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Emitter:
    """Writes protocol events.

    :param stream: where events go (stdout by default; tests pass a ``StringIO``).
    :param clock: returns the ``time`` field (tests pass a fixed clock).
    """

    def __init__(self, stream: Optional[TextIO] = None, clock=utc_now) -> None:
        # With several trainer processes only rank 0 speaks the protocol; the others' events
        # (same calls, same code path) are dropped so each event appears once on stdout.
        self.enabled = stream is not None or _env_rank() == 0
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> dict:
        """Writes one event line and flushes.

        :param event: the event name (``step``, ``resume_state``, ...).
        :param fields: the event's fields; ``event`` and ``time`` are added first.
        :returns: the object written.
        """
        obj = {"event": event, "time": self.clock()}
        obj.update(_clean(fields))
        if not self.enabled:
            return obj
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
        return obj


def _env_rank() -> int:
    """``RANK`` of a multi-process launch (0 when absent or malformed)."""
    try:
        return int((os.environ.get("RANK") or "0").strip() or 0)
    except ValueError:
        return 0


def log(message: str) -> None:
    """A human-readable line on stderr (never stdout, which carries only events); prefixed
    with ``[rank R]`` when several trainer processes share stderr."""
    from .distributed import log_prefix

    print(log_prefix() + message, file=sys.stderr, flush=True)


class Throughput:
    """Optimizer steps per second, smoothed, and the time left.

    An exponential moving average over step durations (weight ``alpha`` for the newest) follows
    speed changes (stage switch, samples) without jumping on one slow step. The first step of a
    run (compilation, cache warm-up) is not counted: it only starts the clock.

    :param alpha: EMA weight of the newest step duration, in (0, 1].
    :param clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, alpha: float = 0.1, clock=time.monotonic) -> None:
        self.alpha = alpha
        self.clock = clock
        self._last: Optional[float] = None
        self._avg: Optional[float] = None

    def restart(self) -> None:
        """Forgets the last timestamp (after a pause such as sampling or saving)."""
        self._last = self.clock()

    def tick(self) -> None:
        """Marks the end of one optimizer step."""
        now = self.clock()
        if self._last is not None:
            dt = max(1e-9, now - self._last)
            self._avg = dt if self._avg is None else (1 - self.alpha) * self._avg + self.alpha * dt
        self._last = now

    def it_per_s(self) -> Optional[float]:
        """Smoothed steps per second, or None before two steps were timed."""
        return None if self._avg is None else 1.0 / self._avg

    def eta_s(self, steps_left: int) -> Optional[float]:
        """Seconds until ``steps_left`` more steps are done, or None when unknown."""
        rate = self.it_per_s()
        return None if rate is None else steps_left / rate
