"""Progress events: one flushed JSON line each, event and time first, no NaN."""

import io
import json
import re
import unittest

from booth_trainer.progress import Emitter, Throughput, utc_now

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class FlushCounter(io.StringIO):
    flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


class Events(unittest.TestCase):
    def test_one_line_per_event_flushed(self):
        out = FlushCounter()
        e = Emitter(out)
        e.emit("step", step=1, total=10, stage="unet", stage_step=1, stage_total=10, loss=0.12, lr=2e-6, it_per_s=None, eta_s=None, vram_gb=None, epoch=0)
        e.emit("sample", step=1, index=0, prompt='photo of "ohwx"\nman', path="samples/1/0.png")
        lines = out.getvalue().split("\n")
        self.assertEqual(lines[-1], "")
        self.assertEqual(len(lines), 3)
        self.assertEqual(out.flushes, 2)
        first = json.loads(lines[0])
        self.assertEqual(list(first)[:2], ["event", "time"])
        self.assertEqual(first["event"], "step")
        self.assertRegex(first["time"], TIME)
        self.assertIsNone(first["it_per_s"])
        self.assertEqual(json.loads(lines[1])["prompt"], 'photo of "ohwx"\nman')

    def test_non_finite_numbers_become_null(self):
        out = io.StringIO()
        Emitter(out, clock=lambda: "T").emit("step", loss=float("nan"), lr=float("inf"), nested={"x": [float("-inf"), 1.5]})
        self.assertEqual(json.loads(out.getvalue()), {"event": "step", "time": "T", "loss": None, "lr": None, "nested": {"x": [None, 1.5]}})

    def test_unicode_is_kept_readable(self):
        out = io.StringIO()
        Emitter(out, clock=lambda: "T").emit("sample", prompt="Foto von ohwx Mann, Café")
        self.assertIn("Café", out.getvalue())

    def test_utc_now_format(self):
        self.assertRegex(utc_now(), TIME)


class Speed(unittest.TestCase):
    def test_first_step_only_starts_the_clock_then_ema(self):
        t = [0.0]
        th = Throughput(alpha=0.5, clock=lambda: t[0])
        th.tick()  # first step (warm-up) not measured
        self.assertIsNone(th.it_per_s())
        self.assertIsNone(th.eta_s(10))
        t[0] = 2.0
        th.tick()
        self.assertAlmostEqual(th.it_per_s(), 0.5)
        t[0] = 3.0
        th.tick()  # dt 1.0 -> avg 1.5
        self.assertAlmostEqual(th.it_per_s(), 1 / 1.5)
        self.assertAlmostEqual(th.eta_s(3), 4.5)
        t[0] = 100.0
        th.restart()  # a pause (samples, saving) is not a slow step
        t[0] = 101.5
        th.tick()
        self.assertAlmostEqual(th.it_per_s(), 1 / 1.5)


if __name__ == "__main__":
    unittest.main()
