"""The command line without torch: check, --help, bad command lines and bad specs."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

from .helpers import fixture_spec, with_change

TRAINER_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=TRAINER_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "booth_trainer", *args], capture_output=True, text=True, env=env, timeout=timeout)
    events = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return p.returncode, events, p.stderr


class Commands(unittest.TestCase):
    def test_check_prints_one_json_line_and_exits_0(self):
        code, events, _ = run("check")
        self.assertEqual(code, 0)
        self.assertEqual(len(events), 1)
        r = events[0]
        self.assertEqual((r["event"], r["protocol"]), ("check", 1))
        for key in ("python", "torch", "cuda", "diffusers", "transformers", "accelerate", "peft", "bitsandbytes", "bf16", "gpus", "problems"):
            self.assertIn(key, r)
        self.assertIsInstance(r["gpus"], list)
        if not HAS_TORCH:
            self.assertIsNone(r["torch"])
            self.assertIn("torch is not installed: run scripts/setup-gpu-host.sh", r["problems"])

    def test_check_names_the_diffusers_release_a_flow_base_needs(self):
        from unittest import mock

        from booth_trainer import check
        from booth_trainer.check import _version_tuple

        self.assertEqual([_version_tuple(v) for v in ("0.31.0.dev0", "0.30.2", "1.2rc1")], [(0, 31, 0), (0, 30, 2), (1, 2)])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "spec.json")
            with open(path, "w") as f:
                json.dump(fixture_spec("face-lora-flux"), f)
            versions = {"torch": None, "diffusers": "0.30.3"}
            with mock.patch.object(check, "package_version", lambda name: versions.get(name, "1.0")):
                old = check.run_check(path)["problems"]
                versions["diffusers"] = "0.40.0"
                new = check.run_check(path)["problems"]
        self.assertTrue(any("flux models need diffusers 0.31.0 or newer (this host has 0.30.3)" in p for p in old), old)
        self.assertFalse(any("need diffusers" in p for p in new), new)

    def test_check_reports_an_invalid_spec_as_a_problem(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "spec.json")
            with open(path, "w") as f:
                json.dump(with_change(fixture_spec("face-sd15"), "resolution", 100), f)
            code, events, _ = run("check", "--spec", path)
        self.assertEqual(code, 0)
        self.assertTrue(any("resolution: must be >= 256" in p for p in events[0]["problems"]), events[0]["problems"])

    def test_help_teaches(self):
        p = subprocess.run([sys.executable, "-m", "booth_trainer", "train", "--help"], capture_output=True, text=True, cwd=TRAINER_ROOT)
        self.assertEqual(p.returncode, 0)
        for needle in ("--resume auto|none|PATH", "exit codes", "state/<step>/", "SIGTERM"):
            self.assertIn(needle, p.stdout)

    def test_bad_command_line_is_exit_2_with_an_error_event(self):
        code, events, err = run("train", "--spec", "x.json")
        self.assertEqual(code, 2)
        self.assertEqual(events[-1]["event"], "error")
        self.assertEqual(events[-1]["kind"], "spec")
        self.assertIn("--work", events[-1]["message"])

    def test_invalid_spec_is_exit_2_naming_the_field(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "spec.json")
            with open(path, "w") as f:
                json.dump(with_change(fixture_spec("face-lora-sdxl"), "mode.rank", 0), f)
            code, events, err = run("train", "--spec", path, "--work", d)
        self.assertEqual(code, 2)
        [e] = events
        self.assertEqual((e["event"], e["kind"], e["step"]), ("error", "spec", None))
        self.assertIn("mode.rank: must be > 0 (got 0)", e["message"])
        self.assertIn("mode.rank", err)

    def test_missing_spec_file(self):
        with tempfile.TemporaryDirectory() as d:
            code, events, _ = run("train", "--spec", os.path.join(d, "nope.json"), "--work", d)
        self.assertEqual(code, 2)
        self.assertIn("no such file", events[0]["message"])

    @unittest.skipIf(HAS_TORCH, "torch is installed here; the tiny-pipeline test covers training")
    def test_valid_spec_without_torch_is_an_environment_error(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "spec.json")
            with open(path, "w") as f:
                json.dump(fixture_spec("face-sd15"), f)
            code, events, _ = run("train", "--spec", path, "--work", d)
        self.assertEqual(code, 1)
        self.assertEqual(events[-1]["kind"], "environment")
        self.assertIn("setup-gpu-host.sh", events[-1]["message"])


if __name__ == "__main__":
    unittest.main()
