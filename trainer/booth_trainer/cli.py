"""Command line of the trainer: ``check`` and ``train`` (docs/progress-protocol.md).

stdout carries only protocol events (one JSON object per line); everything for people goes to
stderr. Exit codes: 0 done, 1 failed (``error`` printed), 2 bad command line or spec, 75
preempted by SIGTERM/SIGUSR1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import List, NoReturn, Optional

from . import EXIT_FAILED, EXIT_PREEMPTED, EXIT_USAGE, PROTOCOL_VERSION, __version__
from .errors import Preempted, TrainerError
from .progress import Emitter, log

DESCRIPTION = """\
Booth's DreamBooth trainer (protocol %d). It reads a job spec, trains a Stable Diffusion model
(SD 1.x, SD 2.x or SDXL; full fine-tune or LoRA) on the instance images of a work directory and
prints one JSON progress event per line on stdout. It never talks to object storage: the Booth
worker prepares the work directory, relays the events and uploads what the trainer writes.
""" % PROTOCOL_VERSION

EPILOG = """\
work directory (--work):
  spec.json                 the job spec (usually also --spec)
  dataset/                  instance images with same-named .txt captions
  class/                    class images for prior preservation (missing ones are generated)
  cache/                    cached latents and text embeddings (safe to delete)
  state/<step>/             resume states; COMPLETE is written last
  samples/<step>/<i>.png    sample images
  model/                    final Diffusers folder, or pytorch_lora_weights.safetensors

exit codes: 0 done, 1 failed, 2 invalid command line or spec, 75 preempted (resumable).
SIGTERM or SIGUSR1 finishes the current step, saves a resume state and exits 75.

examples:
  python -m booth_trainer check --spec work/spec.json
  python -m booth_trainer train --spec work/spec.json --work work
  python -m booth_trainer train --spec work/spec.json --work work --resume none --device cpu

The full contract is docs/progress-protocol.md; the loop is described in docs/trainer.md.
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are also a protocol ``error`` event (kind ``spec``)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        Emitter().emit("error", message=f"invalid command line: {message}", kind="spec", step=None)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m booth_trainer`` parser with its ``check`` and ``train`` commands."""
    p = _Parser(prog="python -m booth_trainer", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"booth_trainer {__version__} (protocol {PROTOCOL_VERSION})")
    sub = p.add_subparsers(dest="command", required=True, metavar="{check,train}", parser_class=_Parser)
    c = sub.add_parser(
        "check",
        help="print one JSON line describing this host (Python, packages, CUDA, GPUs) and exit 0",
        description="Prints {\"event\":\"check\",...} with package versions (null when missing), CUDA, bf16 support, "
        "GPUs with total/free GiB and a list of problems, then exits 0 even when something is missing.",
    )
    c.add_argument("--spec", metavar="PATH", help="also validate this job spec and check that the host can run it")
    t = sub.add_parser(
        "train",
        help="train according to a job spec in a work directory",
        description="Validates the spec against spec.schema.json, loads the base model, generates missing class images, "
        "caches latents, trains the stages and writes resume states, samples and the final model into --work.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--spec", required=True, metavar="PATH", help="the job spec JSON (usually WORK/spec.json)")
    t.add_argument("--work", required=True, metavar="DIR", help="the work directory (dataset/, class/, state/, samples/, model/)")
    t.add_argument(
        "--resume",
        default="auto",
        metavar="auto|none|PATH",
        help="auto (default): continue from the newest complete resume state under WORK/state/; none: start at step 0; "
        "PATH: continue from that state folder (an error if it is incomplete)",
    )
    t.add_argument("--device", choices=("cuda", "cpu", "mps"), default=None, help="where to train (default: cuda when available, else cpu)")
    return p


def cmd_check(args: argparse.Namespace, emitter: Emitter) -> int:
    """Runs ``check``: one JSON line, exit 0."""
    from .check import run_check

    report = run_check(args.spec)
    report.pop("event", None)
    emitter.emit("check", **report)
    return 0


def cmd_train(args: argparse.Namespace, emitter: Emitter) -> int:
    """Runs ``train`` and maps its outcome to the protocol's exit codes."""
    from .signals import StopSignals
    from .spec import load_spec

    signals = StopSignals().install()
    step: Optional[int] = None
    try:
        spec = load_spec(args.spec)
        try:
            from .train import Trainer
        except ImportError as e:  # torch/diffusers missing: the worker shows this to the person
            raise TrainerError("environment", f"the training packages are not importable ({e}); run scripts/setup-gpu-host.sh or point BOOTH_PYTHON at its venv") from e
        trainer = Trainer(spec=spec, work=os.path.abspath(args.work), resume=args.resume, device=args.device, emitter=emitter, signals=signals)
        try:
            return trainer.run()
        finally:
            step = trainer.step
    except Preempted as p:
        log(f"stopped by {p.signal_name} before training started; nothing to save")
        emitter.emit("preempted", step=step or 0, signal=p.signal_name, state=p.state)
        return EXIT_PREEMPTED
    except TrainerError as e:
        log(f"error ({e.kind}): {e.message}")
        emitter.emit("error", message=e.message, kind=e.kind, step=step)
        return EXIT_USAGE if e.kind == "spec" else EXIT_FAILED
    except Exception as e:  # anything unexpected: keep the traceback on stderr for the worker's tail
        traceback.print_exc(file=sys.stderr)
        emitter.emit("error", message=f"{type(e).__name__}: {e}", kind="internal", step=step)
        return EXIT_FAILED
    finally:
        signals.uninstall()


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m booth_trainer``; returns the exit code."""
    args = build_parser().parse_args(argv)
    emitter = Emitter()
    if args.command == "check":
        return cmd_check(args, emitter)
    return cmd_train(args, emitter)
