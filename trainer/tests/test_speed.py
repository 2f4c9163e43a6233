"""Speed settings (:mod:`booth_trainer.speed`): what runs where, and the asynchronous loss reader."""

from __future__ import annotations

import importlib.util
import sys
import unittest
from typing import Any, Dict, List, Optional, Tuple

from .helpers import minimal_spec

SKIP = None if importlib.util.find_spec("torch") else "speed tests skipped: torch is not importable"


@unittest.skipIf(SKIP is not None, SKIP or "")
class SpeedSettings(unittest.TestCase):
    def test_compile_mode(self):
        import torch

        from booth_trainer.speed import AUTO_COMPILE_MIN_STEPS, compile_mode

        cpu, cuda = torch.device("cpu"), torch.device("cuda")
        self.assertIsNone(compile_mode({"compile": "off"}, cuda, 10**6))
        self.assertIsNone(compile_mode({"compile": "auto"}, cpu, 10**6), "auto never compiles on the CPU")
        self.assertIsNone(compile_mode({"compile": "auto"}, cuda, AUTO_COMPILE_MIN_STEPS - 1))
        self.assertEqual(compile_mode({"compile": "default"}, cpu, 1), "default", "an explicit mode compiles anywhere")
        self.assertEqual(compile_mode({"compile": "max-autotune-no-cudagraphs"}, cuda, 1), "max-autotune-no-cudagraphs")

    def test_graph_blockers_name_each_reason(self):
        import torch

        from booth_trainer.speed import graph_blockers

        spec = dict(minimal_spec(), optimizer={"type": "adamw"}, cacheLatents=True, gradientCheckpointing=False)
        self.assertEqual(graph_blockers(spec, torch.device("cuda"), False, False), [])
        reasons = graph_blockers(dict(spec, optimizer={"type": "adamw8bit"}, cacheLatents=False, gradientCheckpointing=True), torch.device("cpu"), True, True)
        joined = "; ".join(reasons)
        for word in ("CUDA device", "several processes", "cacheLatents", "text encoder", "adamw8bit", "gradient checkpointing"):
            self.assertIn(word, joined)

    def test_loss_reader_reports_every_step_in_order_with_its_loss(self):
        import torch

        from booth_trainer.speed import LossReader

        seen: List[Tuple[int, float]] = []

        def report(fields: Dict[str, Any], loss: float) -> None:
            seen.append((fields["step"], loss))

        reader = LossReader(torch.device("cpu"), 2, report)
        for step in range(1, 6):
            reader.push({"step": step}, torch.tensor(step / 10))
        reader.flush()
        self.assertEqual([s for s, _ in seen], [1, 2, 3, 4, 5])
        self.assertEqual([round(v, 6) for _, v in seen], [0.1, 0.2, 0.3, 0.4, 0.5])

    @unittest.skipUnless(importlib.util.find_spec("torch") and __import__("torch").cuda.is_available(), "needs a CUDA GPU (scripts/bench-gpu.py --phases graphcheck covers the graph on a GPU host)")
    def test_loss_reader_on_cuda_waits_only_when_too_many_steps_are_queued(self):
        import torch

        from booth_trainer.speed import LossReader

        seen: List[int] = []
        reader = LossReader(torch.device("cuda"), 2, lambda f, v: seen.append(f["step"]))
        for step in range(1, 8):
            reader.push({"step": step}, torch.ones((), device="cuda") * step)
            self.assertLessEqual(len(reader.queue), 2)
        reader.flush()
        self.assertEqual(seen, list(range(1, 8)))


def load_tests(loader: unittest.TestLoader, tests: unittest.TestSuite, pattern: Optional[str]) -> unittest.TestSuite:
    if SKIP:
        print(SKIP, file=sys.stderr)
    return tests
