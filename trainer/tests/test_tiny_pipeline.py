"""The real trainer on tiny random Stable Diffusion models, through ``python -m booth_trainer train``.

Builds SD 1.5- and SDXL-shaped pipelines from the configs in ``../shared/models`` (scaled down,
real CLIP tokenizer files) into a temporary folder and trains them on the CPU or a GPU: full
two-stage, joint, LoRA with text-encoder adapters, prior preservation with class-image
generation, SDXL, exact resume after SIGTERM (same LR per step, same losses as an uninterrupted
run), a broken newer state ignored, extend, samples and a loadable model.

Skips with a printed reason where torch, diffusers, transformers, peft or ``../shared/models``
is missing (CI has no torch). With the packages in an extra folder::

    PYTHONPATH=/path/to/site python3 -m unittest discover -s trainer/tests -t trainer -p test_tiny_pipeline.py -v
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import unittest
from typing import Any, Dict, Optional

from .helpers import tiny_spec
from .runner import TrainerRuns
from .tiny_models import SHARED_MODELS

NEEDED = ("torch", "diffusers", "transformers", "peft", "safetensors", "PIL", "numpy")


def skip_reason() -> Optional[str]:
    missing = [n for n in NEEDED if importlib.util.find_spec(n) is None]
    if missing:
        return f"tiny-pipeline training test skipped: {', '.join(missing)} not importable (install the trainer's packages or put them on PYTHONPATH)"
    if not os.path.isdir(os.path.join(SHARED_MODELS, "sd15")) or not os.path.isdir(os.path.join(SHARED_MODELS, "clip-tokenizer")):
        return f"tiny-pipeline training test skipped: {SHARED_MODELS} (../shared/models) is missing"
    return None


SKIP = skip_reason()


def base_spec(model: str, arch: str, **over: Any) -> Dict[str, Any]:
    """The shared tiny spec in bf16, which these tests use unless they say otherwise."""
    return tiny_spec(model, arch, **{"mixedPrecision": "bf16", **over})


@unittest.skipIf(SKIP is not None, SKIP or "")
class TinyPipeline(TrainerRuns):
    tmp: tempfile.TemporaryDirectory
    sd15: str
    sdxl: str

    @classmethod
    def setUpClass(cls) -> None:
        from PIL import Image

        from .tiny_models import build_sd15, build_sdxl

        cls.tmp = tempfile.TemporaryDirectory(prefix="booth-tiny-")
        root = cls.tmp.name
        cls.sd15 = build_sd15(os.path.join(root, "sd15"))
        cls.sdxl = build_sdxl(os.path.join(root, "sdxl"))
        cls.dataset = os.path.join(root, "dataset")
        os.makedirs(cls.dataset)
        for i in range(3):
            Image.new("RGB", (300 + 40 * i, 260), (60 * i, 120, 200 - 50 * i)).save(os.path.join(cls.dataset, f"{i:04d}.png"))
            if i < 2:  # the third falls back to the instance prompt
                with open(os.path.join(cls.dataset, f"{i:04d}.txt"), "w", encoding="utf-8") as f:
                    f.write(f"photo of ohwx man, pose {i}")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    # ----------------------------------------------------------------- tests

    def test_full_two_stage_sd15_samples_states_and_loadable_model(self):
        import torch
        from diffusers import StableDiffusionPipeline

        from booth_trainer.state import verify_state

        work = self.work("two-stage")
        spec = base_spec(
            self.sd15,
            "sd1",
            schedule={"type": "two-stage", "textEncoder": {"steps": 2, "learningRate": 1e-3}, "unet": {"steps": 3, "learningRate": 1e-3}},
            resumeState={"every": 2},
            samples={"prompts": ["photo of ohwx man"], "every": 2, "steps": 2},
            gradientCheckpointing=True,
        )
        r = self.train(work, spec)
        self.assertEqual(r.code, 0)
        started = r.of("started")[0]
        self.assertEqual((started["total_steps"], started["start_step"], started["resumed_from"]), (5, 0, None))
        self.assertEqual(started["stages"], [{"name": "text_encoder", "steps": 2, "start": 0}, {"name": "unet", "steps": 3, "start": 2}])
        steps = r.of("step")
        self.assertEqual([s["step"] for s in steps], [1, 2, 3, 4, 5])
        self.assertEqual([s["stage"] for s in steps], ["text_encoder"] * 2 + ["unet"] * 3)
        self.assertEqual([s["stage_step"] for s in steps], [1, 2, 1, 2, 3])
        self.assertEqual([(e["step"], e["reason"]) for e in r.of("resume_state")], [(2, "stage_end"), (4, "interval"), (5, "final")])
        self.assertEqual([(e["stage"], e["step"]) for e in r.of("stage_done")], [("text_encoder", 2), ("unet", 5)])
        self.assertEqual([e["path"] for e in r.of("sample")], ["samples/2/0.png", "samples/4/0.png", "samples/5/0.png"])
        for e in r.of("sample"):
            self.assertTrue(os.path.getsize(os.path.join(work, e["path"])) > 0)
        for e in r.of("resume_state"):
            self.assertIsNone(verify_state(os.path.join(work, e["path"])))
        self.assertEqual(r.names()[-1], "done")
        self.assertLess(r.names().index("resume_state", r.names().index("stage_done", 3)), r.names().index("done"))
        self.assertEqual(r.of("done")[0]["format"], "diffusers")
        self.assertIn("warning: 0002.png has no caption", r.stderr)

        trained = StableDiffusionPipeline.from_pretrained(os.path.join(work, "model"), safety_checker=None)
        base = StableDiffusionPipeline.from_pretrained(self.sd15, safety_checker=None)
        for name in ("unet", "text_encoder"):
            a = dict(getattr(trained, name).named_parameters())
            b = dict(getattr(base, name).named_parameters())
            self.assertTrue(any(not torch.equal(a[k], b[k]) for k in a), f"{name} did not change")
        va, vb = trained.vae.state_dict(), base.vae.state_dict()
        self.assertTrue(all(torch.equal(va[k], vb[k]) for k in va), "the VAE must be the base VAE")
        out = trained(prompt="photo of ohwx man", num_inference_steps=2, height=256, width=256, output_type="np").images
        self.assertEqual(out.shape, (1, 256, 256, 3))

    def test_resume_after_sigterm_is_exact_then_extend(self):
        spec = base_spec(self.sd15, "sd1", schedule={"type": "joint", "steps": 6, "unetLearningRate": 1e-3, "textEncoderLearningRate": 5e-4}, noiseOffset=0.05, minSnrGamma=5)
        ref = self.train(self.work("reference"), spec)
        self.assertEqual(ref.code, 0)

        work = self.work("interrupted")
        first = self.train(work, spec, stop_after=2)
        self.assertEqual(first.code, 75, first.stderr[-2000:])
        pre = first.of("preempted")[0]
        k = pre["step"]
        self.assertEqual(pre["signal"], "SIGTERM")
        self.assertEqual(pre["state"], f"state/{k}")
        self.assertIn(k, (2, 3))
        self.assertEqual(first.of("resume_state")[-1]["reason"], "signal")
        self.assertEqual(first.names()[-1], "preempted")
        # A newer but incomplete state (no COMPLETE) must be ignored.
        os.makedirs(os.path.join(work, "state", "5"))
        with open(os.path.join(work, "state", "5", "state.json"), "w") as f:
            f.write("{}")

        second = self.train(work, spec)
        self.assertEqual(second.code, 0)
        started = second.of("started")[0]
        self.assertEqual((started["start_step"], started["resumed_from"]), (k, f"state/{k}"))
        self.assertIn("ignoring resume state state/5", second.stderr)
        combined = first.of("step") + second.of("step")
        self.assertEqual([s["step"] for s in combined], list(range(1, 7)), "no step done twice or skipped")
        for a, b in zip(ref.of("step"), combined):
            self.assertEqual(a["lr"], b["lr"], f"lr of step {a['step']}")
            self.assertEqual(a["lr_text_encoder"], b["lr_text_encoder"])
            self.assertEqual(a["epoch"], b["epoch"])
            self.assertAlmostEqual(a["loss"], b["loss"], delta=1e-4 * max(1.0, abs(a["loss"])), msg=f"loss of step {a['step']}")

        longer = dict(spec, schedule=dict(spec["schedule"], steps=9))
        third = self.train(work, longer)
        self.assertEqual(third.code, 0)
        self.assertEqual(third.of("started")[0]["start_step"], 6)
        steps = third.of("step")
        self.assertEqual([s["step"] for s in steps], [7, 8, 9])
        # linear with 1 warmup step over the longer 9-step stage: factor (9 - 6) / (9 - 1) at step 7.
        self.assertAlmostEqual(steps[0]["lr"], 1e-3 * 3 / 8, places=12)
        self.assertEqual(third.of("done")[0]["step"], 9)

    def test_lora_with_text_encoder_and_prior_preservation(self):
        from diffusers import StableDiffusionPipeline
        from safetensors import safe_open

        work = self.work("lora-prior")
        spec = base_spec(
            self.sd15,
            "sd1",
            mode={"type": "lora", "rank": 4, "alpha": 8, "textEncoder": True},
            schedule={"type": "joint", "steps": 3, "unetLearningRate": 1e-3, "textEncoderLearningRate": 1e-4},
            prior={"enabled": True, "classPrompt": "photo of a man", "classImages": 2, "lossWeight": 0.5, "generationSteps": 2},
            mixedPrecision="fp16",
            gradientAccumulation=2,
            samples={"prompts": ["photo of ohwx man"], "steps": 2},
        )
        r = self.train(work, spec)
        self.assertEqual(r.code, 0)
        ci = r.of("class_images")
        self.assertEqual((ci[0]["done"], ci[-1]["done"], ci[-1]["total"], ci[-1]["dir"]), (0, 2, 2, "class"))
        self.assertLess(r.names().index("started"), r.names().index("class_images"))
        self.assertEqual(sorted(os.listdir(os.path.join(work, "class"))), ["class-00000.png", "class-00001.png"])
        done = r.of("done")[0]
        self.assertEqual(done["format"], "lora")
        path = os.path.join(work, "model", "pytorch_lora_weights.safetensors")
        self.assertEqual(os.listdir(os.path.join(work, "model")), ["pytorch_lora_weights.safetensors"])
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            meta = f.metadata()
        self.assertEqual((meta["booth.lora_rank"], meta["booth.lora_alpha"]), ("4", "8"))
        self.assertTrue(all(k.startswith(("unet.", "text_encoder.")) for k in keys), keys[:5])
        self.assertTrue(all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys), keys[:5])
        self.assertTrue(any(".to_q.lora_A.weight" in k for k in keys))
        self.assertTrue(any(k.startswith("text_encoder.") and ".q_proj.lora_B.weight" in k for k in keys))
        pipe = StableDiffusionPipeline.from_pretrained(self.sd15, safety_checker=None)
        pipe.load_lora_weights(os.path.join(work, "model"), adapter_name="booth")
        self.assertEqual(pipe.unet.peft_config["booth"].lora_alpha, 8)
        self.assertEqual(pipe.unet.peft_config["booth"].r, 4)
        self.assertEqual(pipe.text_encoder.peft_config["booth"].lora_alpha, 8)

    def test_sdxl_lora_v_prediction_and_sdxl_full(self):
        from diffusers import StableDiffusionXLPipeline

        work = self.work("sdxl-lora")
        spec = base_spec(
            self.sdxl,
            "sdxl",
            mode={"type": "lora", "rank": 4, "alpha": 4},
            schedule={"type": "joint", "steps": 2, "unetLearningRate": 1e-3},
            samples={"prompts": ["photo of ohwx man"], "steps": 2, "negativePrompt": "blurry"},
            minSnrGamma=5,
            gradientCheckpointing=True,
        )
        spec["base"]["predictionType"] = "v_prediction"
        r = self.train(work, spec)
        self.assertEqual(r.code, 0)
        self.assertTrue(os.path.exists(os.path.join(work, "samples", "2", "0.png")))
        pipe = StableDiffusionXLPipeline.from_pretrained(self.sdxl)
        pipe.load_lora_weights(os.path.join(work, "model"))

        work = self.work("sdxl-full")
        spec = base_spec(self.sdxl, "sdxl", schedule={"type": "two-stage", "textEncoder": {"steps": 1, "learningRate": 1e-4}, "unet": {"steps": 1, "learningRate": 1e-4}}, cacheLatents=False)
        r = self.train(work, spec)
        self.assertEqual([s["stage"] for s in r.of("step")], ["text_encoder", "unet"])
        pipe = StableDiffusionXLPipeline.from_pretrained(os.path.join(work, "model"))
        self.assertEqual(pipe.scheduler.config.prediction_type, "epsilon")


def load_tests(loader: unittest.TestLoader, tests: unittest.TestSuite, pattern: Optional[str]) -> unittest.TestSuite:
    if SKIP:
        print(SKIP, file=sys.stderr)
    return tests
