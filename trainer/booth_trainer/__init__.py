"""Booth's DreamBooth trainer.

The package is split so that everything the worker and the tests need without a GPU imports
without torch: spec loading and validation (:mod:`.spec`, :mod:`.schema`), dataset pairing
(:mod:`.dataset`), data order (:mod:`.order`), LR schedule math (:mod:`.lr`), resume-state
bookkeeping (:mod:`.state`), progress events (:mod:`.progress`), signal handling
(:mod:`.signals`) and the host check (:mod:`.check`). The training loop itself lives in
:mod:`.train` and its torch helpers (:mod:`.models`, :mod:`.losses`, :mod:`.checkpoint`,
:mod:`.sampling`, :mod:`.export`), which import torch and diffusers lazily.

The contract with the worker is ``docs/progress-protocol.md``.
"""

__version__ = "0.1.0"

#: Version of the progress protocol this trainer speaks (``started.protocol``).
PROTOCOL_VERSION = 1

#: Exit code after stopping on SIGTERM/SIGUSR1 (``EX_TEMPFAIL`` from sysexits.h).
EXIT_PREEMPTED = 75
#: Exit code for an invalid command line or spec.
EXIT_USAGE = 2
#: Exit code for any other failure (an ``error`` event was printed).
EXIT_FAILED = 1
