"""Stop signals: SIGTERM and SIGUSR1 ask the trainer to save a resume state and exit 75.

The handler behaves by phase:

- ``early`` (loading models, generating class images, caching latents): there is nothing to
  save yet, so it raises :class:`~.errors.Preempted` at once and the trainer exits 75 without a
  state (docs/progress-protocol.md, "Signals and exit codes").
- ``training``: it only records the signal; the loop finishes the optimizer step in progress,
  then saves a state (reason ``signal``), prints ``preempted`` and exits 75.
- ``saving``: a second signal while a state is written is ignored (the first one is kept).

Python runs signal handlers in the main thread between bytecodes, so recording a flag is safe;
the loop polls :attr:`StopSignals.requested` after every step.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Dict, Iterator, Optional

from .errors import Preempted

SIGNALS = ("SIGTERM", "SIGUSR1")


class StopSignals:
    """Installs and tracks the stop handlers.

    :ivar phase: ``early``, ``training`` or ``saving``.
    :ivar requested: name of the first stop signal received, or None.
    """

    def __init__(self) -> None:
        self.phase = "early"
        self.requested: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> "StopSignals":
        """Installs the handlers for SIGTERM and SIGUSR1 (main thread only); returns self."""
        for name in SIGNALS:
            num = getattr(signal, name, None)
            if num is not None:
                self._previous[num] = signal.signal(num, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers that were there before :meth:`install`."""
        for num, prev in self._previous.items():
            signal.signal(num, prev)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
        if self.phase == "early":
            raise Preempted(self.requested)

    def start_training(self) -> None:
        """Enters the ``training`` phase; a signal recorded before (but not raised) stays pending."""
        self.phase = "training"

    def check_early(self) -> None:
        """Raises :class:`Preempted` when a stop was requested (for polling during early work)."""
        if self.requested is not None:
            raise Preempted(self.requested)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Context in which further signals are recorded but never raise."""
        previous = self.phase
        self.phase = "saving"
        try:
            yield
        finally:
            self.phase = previous

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Early-phase work that must not be interrupted halfway (writing a file): a signal
        arriving inside is raised when the block ends."""
        previous = self.phase
        self.phase = "saving"
        try:
            yield
        finally:
            self.phase = previous
        if previous == "early":
            self.check_early()
