"""Shared helpers for the pure tests (standard library only)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture_spec(name: str) -> Dict[str, Any]:
    """A spec produced once by ``presetSpec`` in src/training/spec.ts (see fixtures/README.md)."""
    with open(os.path.join(FIXTURES, f"spec-{name}.json"), "r", encoding="utf-8") as f:
        return json.load(f)


def minimal_spec() -> Dict[str, Any]:
    """The smallest valid spec: required fields only, every default left out."""
    return {
        "version": 1,
        "session": "alice",
        "run": "r1",
        "base": {"model": "/models/sd15", "architecture": "sd1"},
        "mode": {"type": "full"},
        "data": {"instancePrompt": "photo of ohwx woman"},
        "resolution": 512,
        "schedule": {"type": "two-stage", "textEncoder": {"steps": 350, "learningRate": 1e-6}, "unet": {"steps": 1500, "learningRate": 2e-6}},
        "optimizer": {"type": "adamw8bit"},
        "lrScheduler": {"type": "linear"},
    }


def with_change(spec: Dict[str, Any], path: str, value: Any) -> Dict[str, Any]:
    """A deep copy of ``spec`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    out = copy.deepcopy(spec)
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[p]
    if value is ...:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


def tiny_spec(model: str, arch: str, **over: Any) -> Dict[str, Any]:
    """A small joint-schedule spec for the tiny-pipeline tests (256 px, 6 steps, fp32 unless overridden)."""
    spec: Dict[str, Any] = {
        "version": 1,
        "session": "tiny",
        "run": "r1",
        "base": {"model": model, "architecture": arch},
        "mode": {"type": "full"},
        "data": {"instancePrompt": "photo of ohwx man"},
        "resolution": 256,
        "schedule": {"type": "joint", "steps": 6, "unetLearningRate": 1e-3},
        "optimizer": {"type": "adamw"},
        "lrScheduler": {"type": "linear", "warmupSteps": 1},
        "mixedPrecision": "no",
        "resumeState": {"every": 100},
        "samples": {"prompts": [], "every": 0, "steps": 2},
    }
    spec.update(over)
    return spec
