"""Flow-matching math (:mod:`booth_trainer.flow`) against the formulas it cites."""

from __future__ import annotations

import importlib.util
import math
import sys
import unittest
from typing import Optional

SKIP = None if importlib.util.find_spec("torch") else "flow-math tests skipped: torch is not importable"


@unittest.skipIf(SKIP is not None, SKIP or "")
class FlowMath(unittest.TestCase):
    def test_pack_and_unpack_are_inverse_and_keep_2x2_patches_together(self):
        import torch

        from booth_trainer.flow import pack_latents, unpack_latents

        x = torch.randn(2, 16, 8, 6)
        packed = pack_latents(x)
        self.assertEqual(tuple(packed.shape), (2, 4 * 3, 64))
        # Token (row 1, col 2) holds channel 0's 2x2 patch first, in row-major order.
        token = packed[0, 1 * 3 + 2]
        self.assertTrue(torch.equal(token[:4], x[0, 0, 2:4, 4:6].reshape(-1)))
        self.assertTrue(torch.equal(unpack_latents(packed, 8, 6), x))

    def test_image_ids_are_row_and_column_and_text_ids_zero(self):
        import torch

        from booth_trainer.flow import image_ids, text_ids

        ids = image_ids(4, 6, torch.device("cpu"), torch.float32)
        self.assertEqual(tuple(ids.shape), (6, 3))
        self.assertEqual(ids[4].tolist(), [0.0, 1.0, 1.0])  # second row, second column
        self.assertTrue(torch.equal(ids[:, 0], torch.zeros(6)))
        self.assertEqual(float(text_ids(5, torch.device("cpu"), torch.float32).abs().sum()), 0.0)

    def test_noising_and_velocity(self):
        import torch

        from booth_trainer.flow import noised, velocity

        x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
        s = torch.tensor([0.0, 0.25, 1.0])
        xt = noised(x0, eps, s)
        self.assertTrue(torch.allclose(xt[0], x0[0]))
        self.assertTrue(torch.allclose(xt[2], eps[2]))
        self.assertTrue(torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * eps[1]))
        # The target is d x_sigma / d sigma (a finite difference of the noising path).
        h = 1e-2
        x64, e64 = x0.double(), eps.double()
        deriv = (noised(x64, e64, s.double() + h) - noised(x64, e64, s.double())) / h
        self.assertTrue(torch.allclose(velocity(x0, eps).double(), deriv, atol=1e-6))

    def test_sampling_schemes_stay_inside_the_unit_interval_with_their_shapes(self):
        import torch

        from booth_trainer.flow import sample_sigmas

        torch.manual_seed(0)
        ln = sample_sigmas(20000, "logit_normal", torch.device("cpu"))
        self.assertTrue(bool(((ln > 0) & (ln < 1)).all()))
        self.assertAlmostEqual(float(ln.median()), 0.5, delta=0.02)  # sigmoid(N(0,1)) has median 1/2
        shifted = sample_sigmas(20000, "logit_normal", torch.device("cpu"), logit_mean=1.0)
        self.assertAlmostEqual(float(shifted.median()), 1 / (1 + math.exp(-1)), delta=0.02)
        mode = sample_sigmas(20000, "mode", torch.device("cpu"), mode_scale=1.29)
        self.assertTrue(bool(((mode >= 0) & (mode <= 1)).all()))
        uni = sample_sigmas(20000, "uniform", torch.device("cpu"))
        self.assertAlmostEqual(float(uni.mean()), 0.5, delta=0.01)
        with self.assertRaisesRegex(ValueError, "logit_normal, mode or uniform"):
            sample_sigmas(2, "cosine", torch.device("cpu"))

    def test_shifts(self):
        import torch

        from booth_trainer.flow import apply_shift, resolution_mu, shift_constant, shift_exponential

        s = torch.tensor([0.1, 0.5, 0.9])
        self.assertTrue(torch.allclose(shift_constant(s, 1.0), s))
        self.assertTrue(torch.allclose(shift_constant(s, 3.0), 3 * s / (1 + 2 * s)))
        self.assertAlmostEqual(resolution_mu(256), 0.5)
        self.assertAlmostEqual(resolution_mu(4096), 1.15)
        self.assertAlmostEqual(resolution_mu(4096, {"max_shift": 1.0}), 1.0)
        # mu = log(3) is the constant shift 3 (e^mu / (e^mu + 1/s - 1) = 3s / (3s + 1 - s)).
        self.assertTrue(torch.allclose(shift_exponential(s, math.log(3.0)), shift_constant(s, 3.0)))
        self.assertTrue(torch.allclose(apply_shift(s, "resolution", 1024), shift_exponential(s, resolution_mu(1024))))
        self.assertTrue(torch.allclose(apply_shift(s, None, 1024), s))
        self.assertTrue(bool((apply_shift(s, 3.0, 1024) > s).all()), "a shift > 1 moves sigma towards noise")

    def test_loss_weights(self):
        import torch

        from booth_trainer.flow import loss_weights

        s = torch.tensor([0.25, 0.5])
        self.assertIsNone(loss_weights("none", s))
        self.assertTrue(torch.allclose(loss_weights("sigma_sqrt", s), torch.tensor([16.0, 4.0])))
        self.assertTrue(torch.allclose(loss_weights("cosmap", s), 2 / (math.pi * (1 - 2 * s + 2 * s**2))))
        with self.assertRaises(ValueError):
            loss_weights("edm", s)


def load_tests(loader: unittest.TestLoader, tests: unittest.TestSuite, pattern: Optional[str]) -> unittest.TestSuite:
    if SKIP:
        print(SKIP, file=sys.stderr)
    return tests
