"""Runs ``python -m booth_trainer train`` in a subprocess for the torch tests and collects its events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from typing import Any, Dict, List, Optional

TRAINER_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Run:
    """Result of one trainer process."""

    def __init__(self, code: int, events: List[Dict[str, Any]], stderr: str) -> None:
        self.code, self.events, self.stderr = code, events, stderr

    def of(self, name: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def names(self) -> List[str]:
        return [e["event"] for e in self.events]


class TrainerRuns(unittest.TestCase):
    """A test case with a temporary folder (``tmp``), a dataset folder and :meth:`train`."""

    tmp: tempfile.TemporaryDirectory
    dataset: str

    def work(self, name: str) -> str:
        path = os.path.join(self.tmp.name, "work-" + name)
        if not os.path.exists(path):
            os.makedirs(path)
            shutil.copytree(self.dataset, os.path.join(path, "dataset"))
        return path

    def train(self, work: str, spec: Dict[str, Any], stop_after: Optional[int] = None, resume: str = "auto") -> Run:
        with open(os.path.join(work, "spec.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f)
        env = dict(os.environ, PYTHONPATH=TRAINER_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        device = ["--device", os.environ["BOOTH_TEST_DEVICE"]] if os.environ.get("BOOTH_TEST_DEVICE") else []
        cmd = [sys.executable, "-m", "booth_trainer", "train", "--spec", os.path.join(work, "spec.json"), "--work", work, "--resume", resume, *device]
        with tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            events = []
            sent = False
            assert p.stdout is not None
            for line in p.stdout:
                e = json.loads(line)  # stdout must carry only protocol events
                events.append(e)
                if stop_after is not None and not sent and e["event"] == "step" and e["step"] >= stop_after:
                    p.send_signal(signal.SIGTERM)
                    sent = True
            p.stdout.close()
            code = p.wait(timeout=600)
            err.seek(0)
            stderr = err.read()
        run = Run(code, events, stderr)
        if code not in (0, 75):
            self.fail(f"trainer exited {code}: {events[-1] if events else ''}\n{stderr[-3000:]}")
        for e in events:
            self.assertIn("time", e)
        return run

