"""LR schedule math and its continuity across a resume and an extension."""

import math
import unittest

from booth_trainer.lr import lr_factor, make_lambda


class Factors(unittest.TestCase):
    def test_constant(self):
        self.assertEqual([lr_factor("constant", s, 10, 3) for s in range(3)], [1.0, 1.0, 1.0])

    def test_warmup_then_constant(self):
        self.assertEqual([lr_factor("constant_with_warmup", s, 10, 4) for s in range(6)], [0.0, 0.25, 0.5, 0.75, 1.0, 1.0])

    def test_linear_without_warmup_is_fast_dreambooth(self):
        got = [lr_factor("linear", s, 4) for s in range(5)]
        self.assertEqual(got, [1.0, 0.75, 0.5, 0.25, 0.0])

    def test_linear_with_warmup(self):
        self.assertEqual([lr_factor("linear", s, 6, 2) for s in range(7)], [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])

    def test_cosine(self):
        self.assertAlmostEqual(lr_factor("cosine", 0, 10), 1.0)
        self.assertAlmostEqual(lr_factor("cosine", 5, 10), 0.5)
        self.assertAlmostEqual(lr_factor("cosine", 10, 10), 0.0)
        self.assertAlmostEqual(lr_factor("cosine", 3, 10, 2), 0.5 * (1 + math.cos(math.pi * 1 / 8)))
        self.assertEqual(lr_factor("cosine", 12, 10), 0.0)

    def test_unknown(self):
        with self.assertRaises(ValueError):
            lr_factor("step", 0, 10)


class Continuity(unittest.TestCase):
    def test_resume_uses_the_same_factor_as_the_uninterrupted_run(self):
        # LambdaLR semantics: the LR used for 1-based stage step k is factor(k - 1); a state
        # saved after step k stores last_epoch = k, so the resumed run uses factor(k) for k + 1.
        lam = make_lambda("linear", 100, 10)
        uninterrupted = [lam(i) for i in range(100)]
        k = 37
        resumed = [lam(i) for i in range(k, 100)]
        self.assertEqual(uninterrupted[k:], resumed)
        self.assertNotEqual(resumed[0], lam(0), "restarting at 0 (the anchors' bug) would differ")

    def test_extension_evaluates_the_longer_schedule(self):
        old, new = make_lambda("linear", 100, 0), make_lambda("linear", 150, 0)
        self.assertEqual(old(100), 0.0)
        self.assertAlmostEqual(new(100), 50 / 150)

    def test_lambda_is_a_plain_function(self):
        # LambdaLR pickles callable objects' __dict__ into its state; a function is left out,
        # so a restored scheduler always uses the current spec's stage length.
        import types

        self.assertIsInstance(make_lambda("cosine", 10, 0), types.FunctionType)


if __name__ == "__main__":
    unittest.main()
