"""Errors the trainer reports through the ``error`` event.

Every failure the trainer anticipates is a :class:`TrainerError` with a ``kind`` taken from the
protocol (``spec``, ``data``, ``environment``, ``oom``, ``internal``); the command line turns it
into one ``error`` event and an exit code (2 for ``spec``, 1 otherwise). :class:`Preempted` is a
``BaseException`` so that library code catching ``Exception`` cannot swallow a stop request.
"""

from __future__ import annotations

from typing import Optional

KINDS = ("spec", "data", "environment", "oom", "internal")


class TrainerError(Exception):
    """A failure with a protocol ``kind`` and a message meant for a person.

    :param kind: one of :data:`KINDS`.
    :param message: names the field, file or package at fault and what to do.
    :raises ValueError: when ``kind`` is not a protocol kind.
    """

    def __init__(self, kind: str, message: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message


class Preempted(BaseException):
    """Raised when a stop signal arrives before training started (nothing to save yet).

    :param signal_name: ``SIGTERM`` or ``SIGUSR1``.
    """

    def __init__(self, signal_name: str, state: Optional[str] = None) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.state = state
