"""Resume-state tensor files (:mod:`booth_trainer.tensorio`, :mod:`booth_trainer.checkpoint`):
sharded safetensors written with their checksums, read back exactly, older formats still load."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import sys
import tempfile
import unittest
from typing import Optional

SKIP = None if importlib.util.find_spec("torch") and importlib.util.find_spec("safetensors") else "state I/O tests skipped: torch or safetensors is not importable"


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@unittest.skipIf(SKIP is not None, SKIP or "")
class TensorFiles(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def test_written_file_is_safetensors_with_the_checksum_computed_while_writing(self):
        import torch
        from safetensors.torch import load_file

        from booth_trainer.tensorio import write_safetensors

        tensors = {
            "b": torch.randn(3, 5),
            "a": torch.arange(7, dtype=torch.int64),
            "h": torch.randn(2, 2).to(torch.bfloat16),
            "scalar": torch.tensor(1.5),
            "cl": torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last),
        }
        path = os.path.join(self.tmp.name, "x.safetensors")
        size, digest = write_safetensors(path, tensors, {"format": "pt"})
        self.assertEqual(size, os.path.getsize(path))
        self.assertEqual(digest, sha256(path))
        back = load_file(path)
        self.assertEqual(sorted(back), sorted(tensors))
        for k, t in tensors.items():
            self.assertTrue(torch.equal(back[k], t), k)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        self.assertEqual(header["__metadata__"], {"format": "pt"})
        self.assertEqual(n % 8, 0)

    def test_a_failed_write_leaves_no_file(self):
        import torch

        from booth_trainer.tensorio import write_safetensors

        path = os.path.join(self.tmp.name, "bad.safetensors")
        with self.assertRaisesRegex(ValueError, "cannot store"):
            write_safetensors(path, {"c": torch.zeros(2, dtype=torch.complex64)})
        self.assertFalse(os.path.exists(path))

    def test_sharded_state_round_trips_and_complete_lists_every_shard(self):
        import torch

        from booth_trainer import checkpoint
        from booth_trainer.state import begin_state, finalize_state, verify_state

        def model() -> torch.nn.Module:
            torch.manual_seed(1)
            return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Conv2d(4, 8, 3), torch.nn.Linear(64, 32))

        m = model()
        opt = torch.optim.AdamW(m.parameters())
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        old = checkpoint.SHARD_BYTES
        checkpoint.SHARD_BYTES = 8 << 10
        try:
            folder = begin_state(self.tmp.name, 3)
            known = checkpoint.write_shared_files(folder, {"step": 3}, {"unet": m}, False, opt, sched, None)
            total = finalize_state(folder, 3, known)
        finally:
            checkpoint.SHARD_BYTES = old
        names = sorted(os.listdir(folder))
        self.assertIn("trainable-2.safetensors", names)
        self.assertIn("optimizer-exp_avg-2.safetensors", names)
        with open(os.path.join(folder, "COMPLETE")) as f:
            marker = json.load(f)
        for name in names:
            if name != "COMPLETE":
                self.assertEqual(marker["files"][name]["sha256"], sha256(os.path.join(folder, name)), name)
        self.assertEqual(total, sum(os.path.getsize(os.path.join(folder, n)) for n in names))
        self.assertIsNone(verify_state(folder))
        # The optimizer file holds no moments itself, only references to the shards.
        rest = torch.load(os.path.join(folder, "optimizer.pt"), weights_only=True)
        refs = {v for entry in rest["optimizer"]["state"].values() for v in entry.values() if isinstance(v, str)}
        self.assertTrue(refs and all(r.startswith("@optimizer-") for r in refs), refs)

        m2 = model()
        for p in m2.parameters():
            torch.nn.init.zeros_(p)
        self.assertEqual(checkpoint.load_trainable(os.path.join(folder, "trainable.safetensors"), {"unet": m2}, False), ["unet"])
        for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
            self.assertTrue(torch.equal(a, b))
        opt2 = torch.optim.AdamW(m2.parameters())
        opt2.load_state_dict(checkpoint.load_optimizer_state(folder)["optimizer"])
        for a, b in zip(m.parameters(), m2.parameters()):
            for k in ("exp_avg", "exp_avg_sq", "step"):
                self.assertTrue(torch.equal(opt.state[a][k], opt2.state[b][k]), k)
        # A changed shard is found by the marker.
        with open(os.path.join(folder, "trainable-2.safetensors"), "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
        self.assertIn("trainable-2.safetensors does not match", verify_state(folder) or "")

    def test_format_1_optimizer_file_with_inline_moments_still_loads(self):
        import torch

        from booth_trainer.checkpoint import load_optimizer_state

        p = torch.nn.Parameter(torch.randn(4, 4))
        opt = torch.optim.AdamW([p])
        p.grad = torch.randn_like(p)
        opt.step()
        torch.save({"optimizer": opt.state_dict(), "grad_scaler": None}, os.path.join(self.tmp.name, "optimizer.pt"))
        data = load_optimizer_state(self.tmp.name)
        self.assertTrue(torch.equal(data["optimizer"]["state"][0]["exp_avg"], opt.state[p]["exp_avg"]))

    def test_loaded_moments_take_the_parameter_layout(self):
        import torch

        from booth_trainer.train import match_param_layout

        p = torch.nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last))
        opt = torch.optim.AdamW([p])
        p.grad = torch.randn_like(p)
        opt.step()
        sd = opt.state_dict()
        sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].contiguous()  # as read from safetensors
        opt2 = torch.optim.AdamW([p])
        opt2.load_state_dict(sd)
        self.assertNotEqual(opt2.state[p]["exp_avg"].stride(), p.stride())
        match_param_layout(opt2)
        self.assertEqual(opt2.state[p]["exp_avg"].stride(), p.stride())
        self.assertTrue(torch.equal(opt2.state[p]["exp_avg"], sd["state"][0]["exp_avg"]))


def load_tests(loader: unittest.TestLoader, tests: unittest.TestSuite, pattern: Optional[str]) -> unittest.TestSuite:
    if SKIP:
        print(SKIP, file=sys.stderr)
    return tests
