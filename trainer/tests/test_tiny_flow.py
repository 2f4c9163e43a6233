"""The real trainer on tiny FLUX.1- and SD 3.5-shaped models (flow matching), end to end.

Builds small-width models from the published configs in ``test/fixtures/models`` (real classes,
config keys and folder layout; CLIP tokenizer from ``../shared/models``, a small T5-style
tokenizer) and trains them through ``python -m booth_trainer train`` on the CPU: a FLUX.1 LoRA
with SIGTERM and an exact resume (same losses and learning rates as an uninterrupted run), the
cached prompt embeddings that let a resumed run skip T5, a LoRA file that diffusers loads with
the same effect as the trained adapter; SD 3.5 full fine-tuning and LoRA.

Skips with a printed reason where torch, diffusers, transformers, peft or ``../shared/models``
is missing (CI has no torch).
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
from .tiny_models import FIXTURE_MODELS, SHARED_MODELS

NEEDED = ("torch", "diffusers", "transformers", "peft", "safetensors", "PIL", "numpy", "tokenizers")


def skip_reason() -> Optional[str]:
    missing = [n for n in NEEDED if importlib.util.find_spec(n) is None]
    if missing:
        return f"tiny flow-matching tests skipped: {', '.join(missing)} not importable (install the trainer's packages or put them on PYTHONPATH)"
    if not os.path.isdir(os.path.join(SHARED_MODELS, "clip-tokenizer")):
        return f"tiny flow-matching tests skipped: {SHARED_MODELS} (../shared/models) is missing"
    if not os.path.isdir(os.path.join(FIXTURE_MODELS, "flux1-dev")):
        return f"tiny flow-matching tests skipped: {FIXTURE_MODELS} is missing"
    return None


SKIP = skip_reason()


def flow_spec(model: str, arch: str, **over: Any) -> Dict[str, Any]:
    """A 6-step joint spec for a flow-matching base (float32 on the CPU)."""
    spec = tiny_spec(model, arch, schedule={"type": "joint", "steps": 6, "transformerLearningRate": 1e-3}, mode={"type": "lora", "rank": 4, "alpha": 8})
    spec.update(over)
    return spec


@unittest.skipIf(SKIP is not None, SKIP or "")
class TinyFlow(TrainerRuns):
    flux: str
    sd35: str

    @classmethod
    def setUpClass(cls) -> None:
        from PIL import Image

        from .tiny_models import build_flux, build_sd35

        cls.tmp = tempfile.TemporaryDirectory(prefix="booth-tiny-flow-")
        root = cls.tmp.name
        cls.flux = build_flux(os.path.join(root, "flux"))
        cls.sd35 = build_sd35(os.path.join(root, "sd35"))
        cls.dataset = os.path.join(root, "dataset")
        os.makedirs(cls.dataset)
        for i in range(3):
            Image.new("RGB", (280 + 30 * i, 256), (70 * i, 100, 180 - 40 * i)).save(os.path.join(cls.dataset, f"{i:04d}.png"))
            with open(os.path.join(cls.dataset, f"{i:04d}.txt"), "w", encoding="utf-8") as f:
                f.write("a close-up photo of ohwx man" if i else "photo of ohwx man, smiling")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def test_flux_lora_resume_is_exact_embeddings_are_cached_and_the_lora_loads_with_its_effect(self):
        import torch
        from diffusers import FluxPipeline
        from peft import LoraConfig
        from safetensors.torch import load_file

        from booth_trainer.flow_models import lora_targets

        spec = flow_spec(self.flux, "flux", flow={"guidanceScale": 1.0, "timestepSampling": "logit_normal", "lossWeighting": "cosmap"}, samples={"prompts": ["photo of ohwx man"], "every": 3, "steps": 2, "guidanceScale": 3.5})
        ref = self.train(self.work("flux-ref"), spec)
        self.assertEqual(ref.code, 0, ref.stderr[-2000:])
        self.assertIn("encoded 3 prompts (T5 512 tokens)", ref.stderr)

        work = self.work("flux-interrupted")
        first = self.train(work, spec, stop_after=2)
        self.assertEqual(first.code, 75)
        second = self.train(work, spec)
        self.assertEqual(second.code, 0)
        self.assertIn("text encoders not loaded: embeddings of 3 prompts", second.stderr)
        combined = first.of("step") + second.of("step")
        self.assertEqual([s["step"] for s in combined], list(range(1, 7)))
        for a, b in zip(ref.of("step"), combined):
            self.assertEqual(a["lr"], b["lr"])
            self.assertAlmostEqual(a["loss"], b["loss"], delta=1e-5 * max(1.0, abs(a["loss"])), msg=f"loss of step {a['step']}")
        self.assertEqual([e["path"] for e in ref.of("sample")], ["samples/3/0.png", "samples/6/0.png"])

        lora_path = os.path.join(work, "model", "pytorch_lora_weights.safetensors")
        keys = list(load_file(lora_path))
        self.assertTrue(all(k.startswith("transformer.") for k in keys), keys[:3])
        for part in ("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.ff.net.0.proj", "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.attn.to_k"):
            self.assertTrue(any(part + ".lora_A" in k for k in keys), part)
        self.assertFalse(any(k.startswith("transformer.proj_out.") for k in keys), "the final projection is not a LoRA target")

        # diffusers' loader gives the same transformer as the trained adapter put on the base by hand.
        pipe = FluxPipeline.from_pretrained(self.flux)
        pipe.load_lora_weights(lora_path)
        manual = FluxPipeline.from_pretrained(self.flux).transformer
        manual.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets("flux", "attention-mlp")))
        state = load_file(os.path.join(work, "state", "6", "trainable.safetensors"))
        result = manual.load_state_dict({k[len("transformer."):]: v for k, v in state.items()}, strict=False)
        self.assertFalse(result.unexpected_keys)
        torch.manual_seed(0)
        x = torch.randn(1, 16 * 16, 64)
        kw = dict(hidden_states=x, timestep=torch.tensor([0.5]), guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32), encoder_hidden_states=torch.randn(1, 7, 32), txt_ids=torch.zeros(7, 3), img_ids=torch.zeros(256, 3), return_dict=False)
        with torch.no_grad():
            a = pipe.transformer(**kw)[0]
            b = manual(**kw)[0]
            base = FluxPipeline.from_pretrained(self.flux).transformer(**kw)[0]
        self.assertTrue(torch.allclose(a, b, atol=1e-5), float((a - b).abs().max()))
        self.assertFalse(torch.allclose(a, base, atol=1e-6), "the LoRA must change the output")

    def test_sd35_full_and_lora(self):
        from diffusers import StableDiffusion3Pipeline

        work = self.work("sd35-full")
        spec = flow_spec(self.sd35, "sd3", mode={"type": "full"}, schedule={"type": "joint", "steps": 3, "transformerLearningRate": 1e-3}, samples={"prompts": ["photo of ohwx man"], "steps": 2, "guidanceScale": 5.0, "negativePrompt": "blurry"})
        r = self.train(work, spec)
        self.assertEqual(r.code, 0)
        self.assertEqual(r.of("done")[0]["format"], "diffusers")
        trained = StableDiffusion3Pipeline.from_pretrained(os.path.join(work, "model"))
        base = StableDiffusion3Pipeline.from_pretrained(self.sd35)
        a, b = trained.transformer.state_dict(), base.transformer.state_dict()
        self.assertTrue(any(not a[k].equal(b[k]) for k in a), "the transformer did not change")
        t3a, t3b = trained.text_encoder_3.state_dict(), base.text_encoder_3.state_dict()
        self.assertTrue(all(t3a[k].equal(t3b[k]) for k in t3a), "T5 must be the base one")

        work = self.work("sd35-lora")
        prior = {"enabled": True, "classPrompt": "photo of a man", "classImages": 2, "lossWeight": 0.5, "generationSteps": 2}
        r = self.train(work, flow_spec(self.sd35, "sd3", schedule={"type": "joint", "steps": 2, "transformerLearningRate": 1e-3}, prior=prior))
        self.assertEqual(r.code, 0)
        # Prior preservation: class images rendered by the base from the cached class-prompt embedding.
        self.assertEqual(sorted(os.listdir(os.path.join(work, "class"))), ["class-00000.png", "class-00001.png"])
        self.assertIn("encoded 4 prompts", r.stderr)  # 2 captions, the class prompt, the empty negative prompt
        pipe = StableDiffusion3Pipeline.from_pretrained(self.sd35)
        pipe.load_lora_weights(os.path.join(work, "model", "pytorch_lora_weights.safetensors"))
        self.assertEqual(pipe.transformer.peft_config["default_0"].r, 4)


def load_tests(loader: unittest.TestLoader, tests: unittest.TestSuite, pattern: Optional[str]) -> unittest.TestSuite:
    if SKIP:
        print(SKIP, file=sys.stderr)
    return tests
