"""Resume-state bookkeeping: COMPLETE written last with checksums, verification, selection."""

import hashlib
import io
import json
import os
import tempfile
import unittest

from booth_trainer.state import (
    MARKER,
    REQUIRED_FILES,
    begin_state,
    finalize_state,
    list_steps,
    load_candidate,
    relative_state_path,
    select_latest,
    state_path,
    verify_state,
)


def write_state(work, step, payload=b"weights", stage="unet"):
    folder = begin_state(work, step)
    for name in REQUIRED_FILES:
        if name == "state.json":
            data = json.dumps({"format": 1, "step": step, "stage": stage, "stage_step": step, "epoch": 0, "position": 1, "seed": 42, "spec_sha256": "x"}).encode()
        else:
            data = payload + name.encode()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return folder, finalize_state(folder, step)


class Marker(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.work = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_complete_lists_every_file_with_size_and_sha256(self):
        folder, nbytes = write_state(self.work, 500)
        self.assertEqual(folder, state_path(self.work, 500))
        self.assertEqual(relative_state_path(500), "state/500")
        with open(os.path.join(folder, MARKER)) as f:
            marker = json.load(f)
        self.assertEqual(marker["step"], 500)
        self.assertEqual(sorted(marker["files"]), sorted(REQUIRED_FILES))
        for name, meta in marker["files"].items():
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            self.assertEqual(meta, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        total = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        self.assertEqual(nbytes, total)
        self.assertIsNone(verify_state(folder))
        self.assertFalse([n for n in os.listdir(folder) if n.endswith(".tmp")])

    def test_incomplete_and_corrupt_states_are_rejected(self):
        folder, _ = write_state(self.work, 10)
        os.remove(os.path.join(folder, MARKER))
        self.assertEqual(verify_state(folder), "no COMPLETE marker (the save did not finish)")

        folder, _ = write_state(self.work, 20)
        with open(os.path.join(folder, "optimizer.pt"), "ab") as f:
            f.write(b"!")
        self.assertIn("optimizer.pt has", verify_state(folder))

        folder, _ = write_state(self.work, 30)
        with open(os.path.join(folder, "rng.pt"), "r+b") as f:
            f.write(b"X")
        self.assertEqual(verify_state(folder), "rng.pt does not match its SHA-256 in COMPLETE")

        folder, _ = write_state(self.work, 40)
        os.remove(os.path.join(folder, "scheduler.pt"))
        self.assertEqual(verify_state(folder), "scheduler.pt is missing")

        folder, _ = write_state(self.work, 50)
        with open(os.path.join(folder, MARKER), "w") as f:
            f.write("{not json")
        self.assertIn("COMPLETE is not readable JSON", verify_state(folder))

        folder, _ = write_state(self.work, 60)
        os.rename(folder, state_path(self.work, 61))
        self.assertEqual(verify_state(state_path(self.work, 61)), "COMPLETE says step 60 but the folder is 61")

    def test_newest_valid_state_is_selected_and_broken_ones_fall_back(self):
        self.assertIsNone(select_latest(self.work, log=io.StringIO()))
        write_state(self.work, 250)
        write_state(self.work, 500)
        broken, _ = write_state(self.work, 750)
        with open(os.path.join(broken, "trainable.safetensors"), "ab") as f:
            f.write(b"truncated download")
        half = begin_state(self.work, 1000)
        with open(os.path.join(half, "state.json"), "w") as f:
            f.write("{}")
        os.makedirs(os.path.join(self.work, "state", "tmp-upload"))
        self.assertEqual(list_steps(self.work), [1000, 750, 500, 250])
        log = io.StringIO()
        cand = select_latest(self.work, log=log)
        self.assertEqual((cand.step, cand.path), (500, state_path(self.work, 500)))
        self.assertEqual(cand.data["stage"], "unet")
        self.assertIn("ignoring resume state state/1000: no COMPLETE marker", log.getvalue())
        self.assertIn("ignoring resume state state/750: trainable.safetensors has", log.getvalue())

    def test_state_json_of_an_unknown_format_is_unusable(self):
        folder = begin_state(self.work, 5)
        for name in REQUIRED_FILES:
            with open(os.path.join(folder, name), "w") as f:
                f.write(json.dumps({"format": 99}) if name == "state.json" else "x")
        finalize_state(folder, 5)
        cand, reason = load_candidate(folder)
        self.assertIsNone(cand)
        self.assertIn("format 99", reason)

    def test_rewriting_a_step_removes_the_old_marker_first(self):
        folder, _ = write_state(self.work, 7)
        with open(os.path.join(folder, "stale.bin"), "w") as f:
            f.write("old")
        again = begin_state(self.work, 7)
        self.assertEqual(os.listdir(again), [])
        self.assertIsNotNone(verify_state(again))


if __name__ == "__main__":
    unittest.main()
