"""The job spec as the trainer reads it.

The spec is written by the control plane (``src/training/spec.ts``, zod) and validated here again
against the generated ``spec.schema.json`` (see :mod:`.schema`), which also fills defaults, so
both sides agree on one contract. This module adds what JSON Schema cannot say (a spec that
trains nothing, LoRA text-encoder stage without text-encoder adapters) and the derived values
the loop needs: the stage plan (same rule as ``stagesOf`` in spec.ts), the total step count and
the fingerprint of the training-relevant fields that a resume state must match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .errors import TrainerError
from .schema import SchemaError, validate

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec.schema.json")

Spec = Dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One training stage in execution order.

    :ivar name: ``text_encoder``, ``unet`` (two-stage) or ``joint``.
    :ivar steps: optimizer steps in the stage.
    :ivar start: global step at which the stage starts (the number of steps before it).
    :ivar denoiser_lr: learning rate of the denoiser, the UNet or the FLUX.1/SD 3.5 transformer
        (0 when it is frozen in this stage).
    :ivar text_encoder_lr: learning rate of the text encoder(s) (0 when frozen).
    """

    name: str
    steps: int
    start: int
    denoiser_lr: float
    text_encoder_lr: float

    @property
    def end(self) -> int:
        """Global step of the stage's last step."""
        return self.start + self.steps

    def to_event(self) -> Dict[str, Any]:
        """The stage as the ``started`` event lists it."""
        return {"name": self.name, "steps": self.steps, "start": self.start}


def load_schema() -> Dict[str, Any]:
    """Reads ``spec.schema.json`` next to this module.

    :raises TrainerError: kind ``environment`` when the file is missing (a broken install).
    """
    try:
        with open(SCHEMA_PATH, "r", encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise TrainerError("environment", f"the spec schema {SCHEMA_PATH} is missing ({e}); reinstall the trainer") from e


def parse_spec(value: Any, source: str = "job spec") -> Spec:
    """Validates a parsed spec and fills its defaults.

    :param value: parsed JSON.
    :param source: named in error messages (a path, ``preset face-sd15``).
    :returns: the spec with every default filled.
    :raises TrainerError: kind ``spec``, naming every bad field (``schedule.unet.steps: must be >= 0``).
    """
    try:
        spec = validate(load_schema(), value)
    except SchemaError as e:
        raise TrainerError("spec", f"{source} is invalid: {e}") from e
    problems = semantic_problems(spec)
    if problems:
        raise TrainerError("spec", f"{source} is invalid: " + "; ".join(problems))
    return spec


def load_spec(path: str) -> Spec:
    """Reads and validates the spec file at ``path``.

    :raises TrainerError: kind ``spec`` when the file is missing, is not JSON or is invalid.
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise TrainerError("spec", f"--spec {path}: no such file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainerError("spec", f"--spec {path} is not readable JSON: {e}") from e
    return parse_spec(raw, source=path)


#: Architectures whose denoiser is a transformer trained by flow matching.
FLOW_ARCHITECTURES = ("flux", "sd3")


def is_flow(spec: Spec) -> bool:
    """True for FLUX.1 and SD 3.5 specs (flow matching, transformer denoiser)."""
    return spec["base"]["architecture"] in FLOW_ARCHITECTURES


def family_problems(spec: Spec) -> List[str]:
    """The rules that tie fields to the architecture family (``familyProblem`` in spec.ts)."""
    arch = spec["base"]["architecture"]
    flow = arch in FLOW_ARCHITECTURES
    s = spec["schedule"]
    if s["type"] == "joint":
        want, other = ("transformerLearningRate", "unetLearningRate") if flow else ("unetLearningRate", "transformerLearningRate")
        if other in s:
            return [f"schedule.{other}: a {arch} model's denoiser is {'a transformer' if flow else 'a UNet'}; name its learning rate schedule.{want}"]
        if want not in s:
            return [f"schedule.{want}: required (the learning rate of the {'transformer' if flow else 'UNet'})"]
    if flow:
        if arch == "flux" and spec["mode"]["type"] != "lora":
            return ["mode.type: FLUX.1 is trained as a LoRA (a full fine-tune of its 12-billion-parameter transformer needs about 190 GB for weights and AdamW alone); set mode.type to lora"]
        if s["type"] != "joint":
            return [f"schedule.type: {arch} runs train the transformer only; use the joint schedule with transformerLearningRate"]
        if float(s.get("textEncoderLearningRate", 0) or 0) > 0:
            return [f"schedule.textEncoderLearningRate: {arch} runs keep the text encoders frozen (their embeddings are computed once and T5 is freed); set it to 0"]
        if spec["base"].get("predictionType") is not None:
            return [f"base.predictionType: {arch} transformers predict the flow velocity; leave predictionType out"]
    elif spec.get("flow") is not None:
        return [f"flow: flow-matching settings apply to FLUX.1 and SD 3.5 only, not to {arch}"]
    return []


def semantic_problems(spec: Spec) -> List[str]:
    """Rules JSON Schema cannot express; each entry names the field.

    - the family rules of :func:`family_problems`;
    - every stage has 0 steps (same rule as ``parseJobSpec`` in spec.ts);
    - a LoRA two-stage schedule whose text-encoder stage has steps but ``mode.textEncoder`` is
      false would train nothing in that stage.
    """
    out: List[str] = family_problems(spec)
    if out:
        return out
    if total_steps(spec) == 0:
        out.append("schedule: every stage has 0 steps; give the UNet stage some steps")
    mode, sched = spec["mode"], spec["schedule"]
    if mode["type"] == "lora" and not mode.get("textEncoder") and sched["type"] == "two-stage" and sched["textEncoder"]["steps"] > 0:
        out.append(
            "schedule.textEncoder.steps: is %d but mode.textEncoder is false, so a LoRA run has no text-encoder "
            "adapters to train in that stage; set mode.textEncoder to true or schedule.textEncoder.steps to 0" % sched["textEncoder"]["steps"]
        )
    return out


def stages_of(spec: Spec) -> List[Stage]:
    """The stages of a spec in order with their global offsets; stages with 0 steps are left out.

    A joint stage trains the text encoder only when its learning rate is non-zero (and, for
    LoRA, when ``mode.textEncoder`` is true).
    """
    s = spec["schedule"]
    lora = spec["mode"]["type"] == "lora"
    if s["type"] == "joint":
        te_lr = float(s.get("textEncoderLearningRate", 0) or 0)
        if lora and not spec["mode"].get("textEncoder"):
            te_lr = 0.0
        denoiser_lr = s.get("transformerLearningRate", s.get("unetLearningRate"))
        return [Stage("joint", int(s["steps"]), 0, float(denoiser_lr or 0), te_lr)]
    out: List[Stage] = []
    start = 0
    te, unet = s["textEncoder"], s["unet"]
    if te["steps"] > 0:
        out.append(Stage("text_encoder", int(te["steps"]), start, 0.0, float(te["learningRate"])))
    start += int(te["steps"])
    if unet["steps"] > 0:
        out.append(Stage("unet", int(unet["steps"]), start, float(unet["learningRate"]), 0.0))
    return out


def total_steps(spec: Spec) -> int:
    """Total optimizer steps over all stages (``total`` in ``step`` events)."""
    return sum(st.steps for st in stages_of(spec))


def stage_at(stages: List[Stage], step: int) -> Optional[Stage]:
    """The stage that runs global step ``step`` (1-based: the step about to be done), or None past the end."""
    for st in stages:
        if st.start < step <= st.end:
            return st
    return None


def training_fields(spec: Spec) -> Dict[str, Any]:
    """The spec fields that change what a step computes, for the resume fingerprint.

    Left out: identity (``session``, ``run``, ``version``), bookkeeping (``resumeState``,
    ``samples``), ``gradientCheckpointing`` and ``performance`` (same math, other speed or
    memory) and the length of the last stage, which ``booth extend`` raises.
    """
    keep = {k: v for k, v in spec.items() if k not in ("version", "session", "run", "resumeState", "samples", "gradientCheckpointing", "performance")}
    sched = json.loads(json.dumps(spec["schedule"]))
    if sched["type"] == "joint":
        sched.pop("steps", None)
    else:
        sched["unet"].pop("steps", None)
    keep["schedule"] = sched
    return keep


def fingerprint(spec: Spec) -> str:
    """SHA-256 (hex) of :func:`training_fields` in canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(training_fields(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_fields(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted paths where two :func:`training_fields` dicts differ (to explain a refused resume)."""
    out: List[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, None), new.get(key, None)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(changed_fields(a, b, name + "."))
        elif a != b:
            out.append(name)
    return out
