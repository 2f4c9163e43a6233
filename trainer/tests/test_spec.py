"""Spec validation against the real generated spec.schema.json, defaults, stages, fingerprint."""

import json
import unittest

from booth_trainer.errors import TrainerError
from booth_trainer.spec import changed_fields, fingerprint, load_schema, parse_spec, stage_at, stages_of, total_steps, training_fields

from .helpers import fixture_spec, minimal_spec, with_change


class PresetFixtures(unittest.TestCase):
    def test_every_preset_validates_unchanged(self):
        for name in ("face-sd15", "object-sd15", "face-lora-sdxl", "face-sd15-extended", "face-lora-flux", "face-sd35-medium"):
            with self.subTest(name=name):
                raw = fixture_spec(name)
                # presetSpec output has every default filled already: validation must not change it.
                self.assertEqual(parse_spec(raw, name), raw)

    def test_preset_stages_match_the_typescript_plan(self):
        self.assertEqual([s.to_event() for s in stages_of(fixture_spec("face-sd15"))], [{"name": "text_encoder", "steps": 350, "start": 0}, {"name": "unet", "steps": 1500, "start": 350}])
        self.assertEqual([s.to_event() for s in stages_of(fixture_spec("object-sd15"))], [{"name": "unet", "steps": 1200, "start": 0}])
        self.assertEqual([s.to_event() for s in stages_of(fixture_spec("face-lora-sdxl"))], [{"name": "joint", "steps": 1500, "start": 0}])
        self.assertEqual(total_steps(fixture_spec("face-sd15-extended")), 2350)
        flux = stages_of(fixture_spec("face-lora-flux"))
        self.assertEqual([(s.name, s.steps, s.denoiser_lr, s.text_encoder_lr) for s in flux], [("joint", 1500, 1e-4, 0.0)])

    def test_extension_keeps_the_fingerprint(self):
        self.assertEqual(fingerprint(fixture_spec("face-sd15")), fingerprint(fixture_spec("face-sd15-extended")))


class Defaults(unittest.TestCase):
    def test_minimal_spec_gets_every_default(self):
        spec = parse_spec(minimal_spec())
        self.assertEqual(spec["batchSize"], 1)
        self.assertEqual(spec["gradientAccumulation"], 1)
        self.assertEqual(spec["mixedPrecision"], "fp16")
        self.assertIs(spec["minSnrGamma"], None)
        self.assertEqual(spec["seed"], 42)
        self.assertEqual(spec["data"], {"instancePrompt": "photo of ohwx woman", "instanceDir": "dataset", "captions": "files", "randomFlip": False})
        self.assertEqual(spec["optimizer"], {"type": "adamw8bit", "beta1": 0.9, "beta2": 0.999, "weightDecay": 0.01, "epsilon": 1e-8, "maxGradNorm": 1})
        self.assertEqual(spec["lrScheduler"], {"type": "linear", "warmupSteps": 0})
        self.assertEqual(spec["resumeState"], {"every": 250, "keep": 2})
        self.assertEqual(spec["samples"]["steps"], 25)
        self.assertIs(spec["cacheLatents"], True)
        self.assertNotIn("prior", spec)

    def test_nested_defaults_inside_a_union_branch(self):
        spec = parse_spec(with_change(minimal_spec(), "mode", {"type": "lora", "rank": 8, "alpha": 8, "textEncoder": True}))
        self.assertEqual(spec["mode"], {"type": "lora", "rank": 8, "alpha": 8, "dropout": 0, "textEncoder": True})
        spec = parse_spec(with_change(minimal_spec(), "prior", {"enabled": True, "classPrompt": "photo of a woman"}))
        self.assertEqual(spec["prior"]["classImages"], 200)
        self.assertEqual(spec["prior"]["classDir"], "class")

    def test_input_is_not_modified(self):
        raw = minimal_spec()
        before = json.dumps(raw, sort_keys=True)
        parse_spec(raw)
        self.assertEqual(json.dumps(raw, sort_keys=True), before)


class BadSpecs(unittest.TestCase):
    def assertBad(self, spec, *needles):
        with self.assertRaises(TrainerError) as cm:
            parse_spec(spec, "spec.json")
        self.assertEqual(cm.exception.kind, "spec")
        for n in needles:
            self.assertIn(n, cm.exception.message)
        self.assertTrue(cm.exception.message.startswith("spec.json is invalid: "), cm.exception.message)

    def test_wrong_enum_names_the_field_and_the_allowed_values(self):
        self.assertBad(with_change(minimal_spec(), "base.architecture", "sd4"), "base.architecture: must be one of 'sd1', 'sd2', 'sdxl', 'flux', 'sd3' (got 'sd4')")

    def test_missing_required(self):
        self.assertBad(with_change(minimal_spec(), "data.instancePrompt", ...), "data.instancePrompt: is required")
        self.assertBad(with_change(minimal_spec(), "resolution", ...), "resolution: is required")

    def test_unknown_field(self):
        self.assertBad(with_change(minimal_spec(), "optimizer.momentum", 0.9), "optimizer.momentum: is not a known field")

    def test_numbers(self):
        self.assertBad(with_change(minimal_spec(), "resolution", 500), "resolution: must be a multiple of 64 (got 500)")
        self.assertBad(with_change(minimal_spec(), "resolution", 128), "resolution: must be >= 256")
        self.assertBad(with_change(minimal_spec(), "schedule.unet.steps", -1), "schedule.unet.steps: must be >= 0 (got -1)")
        self.assertBad(with_change(minimal_spec(), "schedule.unet.learningRate", 0), "schedule.unet.learningRate: must be > 0")
        self.assertBad(with_change(minimal_spec(), "optimizer.beta2", 1), "optimizer.beta2: must be < 1")
        self.assertBad(with_change(minimal_spec(), "batchSize", 1.5), "batchSize: expected integer, got number")
        self.assertBad(with_change(minimal_spec(), "gradientCheckpointing", 1), "gradientCheckpointing: expected boolean, got integer")
        self.assertBad(with_change(minimal_spec(), "version", 2), "version: must be 1 (got 2)")

    def test_integral_float_counts_as_integer(self):
        self.assertEqual(parse_spec(with_change(minimal_spec(), "batchSize", 2.0))["batchSize"], 2)

    def test_discriminated_union_reports_the_named_branch(self):
        self.assertBad(with_change(minimal_spec(), "mode", {"type": "lora", "rank": 0, "alpha": 8}), "mode.rank: must be > 0 (got 0)")
        self.assertBad(with_change(minimal_spec(), "mode", {"type": "lora", "alpha": 8}), "mode.rank: is required")
        self.assertBad(with_change(minimal_spec(), "mode", {"type": "dreambooth"}), "mode.type: must be one of 'full', 'lora' (got 'dreambooth')")
        self.assertBad(with_change(minimal_spec(), "schedule", {"type": "joint", "steps": 0, "unetLearningRate": 1e-4}), "schedule.steps: must be > 0")

    def test_nullable_union(self):
        self.assertEqual(parse_spec(with_change(minimal_spec(), "minSnrGamma", 5))["minSnrGamma"], 5)
        self.assertBad(with_change(minimal_spec(), "minSnrGamma", 0), "minSnrGamma: must be > 0")
        self.assertBad(with_change(minimal_spec(), "minSnrGamma", "5"), "minSnrGamma")

    def test_array_items_and_length(self):
        self.assertBad(with_change(minimal_spec(), "samples", {"prompts": ["ok", ""]}), "samples.prompts.1: must have at least 1 characters")
        self.assertBad(with_change(minimal_spec(), "samples", {"prompts": ["p"] * 17}), "samples.prompts: must have at most 16 items (got 17)")

    def test_every_problem_is_listed(self):
        spec = with_change(with_change(minimal_spec(), "resolution", 500), "seed", -3)
        self.assertBad(spec, "resolution:", "seed: must be >= 0")

    def test_nothing_to_train(self):
        spec = with_change(minimal_spec(), "schedule.textEncoder.steps", 0)
        spec = with_change(spec, "schedule.unet.steps", 0)
        self.assertBad(spec, "schedule: every stage has 0 steps")

    def test_lora_text_encoder_stage_without_text_encoder_adapters(self):
        spec = with_change(minimal_spec(), "mode", {"type": "lora", "rank": 8, "alpha": 8})
        self.assertBad(spec, "schedule.textEncoder.steps: is 350 but mode.textEncoder is false")
        ok = with_change(spec, "mode.textEncoder", True)
        self.assertEqual([s.name for s in stages_of(parse_spec(ok))], ["text_encoder", "unet"])

    def test_schema_is_the_generated_one(self):
        schema = load_schema()
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")
        self.assertFalse(schema["additionalProperties"])


class StagesAndFingerprint(unittest.TestCase):
    def test_two_stage_without_text_encoder_steps(self):
        spec = parse_spec(with_change(minimal_spec(), "schedule.textEncoder.steps", 0))
        [st] = stages_of(spec)
        self.assertEqual((st.name, st.start, st.steps, st.denoiser_lr, st.text_encoder_lr), ("unet", 0, 1500, 2e-6, 0.0))

    def test_joint_learning_rates(self):
        spec = parse_spec(with_change(minimal_spec(), "schedule", {"type": "joint", "steps": 10, "unetLearningRate": 1e-4, "textEncoderLearningRate": 5e-5}))
        [st] = stages_of(spec)
        self.assertEqual((st.denoiser_lr, st.text_encoder_lr), (1e-4, 5e-5))
        lora = parse_spec(with_change(spec, "mode", {"type": "lora", "rank": 4, "alpha": 4}))
        self.assertEqual(stages_of(lora)[0].text_encoder_lr, 0.0, "LoRA without mode.textEncoder leaves the text encoder frozen")

    def test_stage_at(self):
        stages = stages_of(parse_spec(minimal_spec()))
        self.assertEqual(stage_at(stages, 1).name, "text_encoder")
        self.assertEqual(stage_at(stages, 350).name, "text_encoder")
        self.assertEqual(stage_at(stages, 351).name, "unet")
        self.assertIsNone(stage_at(stages, 1851))

    def test_fingerprint_ignores_bookkeeping_and_names_real_changes(self):
        a = parse_spec(minimal_spec())
        b = parse_spec(with_change(with_change(minimal_spec(), "resumeState", {"every": 10}), "samples", {"prompts": ["x"]}))
        self.assertEqual(fingerprint(a), fingerprint(b))
        c = parse_spec(with_change(minimal_spec(), "schedule.unet.learningRate", 1e-5))
        self.assertNotEqual(fingerprint(a), fingerprint(c))
        self.assertEqual(changed_fields(training_fields(a), training_fields(c)), ["schedule.unet.learningRate"])
        d = parse_spec(with_change(minimal_spec(), "schedule.textEncoder.steps", 100))
        self.assertNotEqual(fingerprint(a), fingerprint(d), "only the last stage may grow")


if __name__ == "__main__":
    unittest.main()
