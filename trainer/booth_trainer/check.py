"""``python -m booth_trainer check``: what the worker needs to know about this host.

Prints one JSON object (``event: check``) and exits 0 even when things are missing, so the
worker can explain the problem (docs/progress-protocol.md). Package versions come from the
installed distributions; a package importable without distribution metadata (a source tree on
``PYTHONPATH``) is imported to read its ``__version__``. GPU sizes are GiB (2^30 bytes).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import platform
import re
import sys
from typing import Any, Dict, List, Optional

from . import PROTOCOL_VERSION

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "bitsandbytes")
#: The first diffusers release with each family's classes as the trainer uses them: FLUX.1
#: (``FluxTransformer2DModel`` with 2-D position ids) and SD 3.5 (QK-norm and dual attention in
#: ``SD3Transformer2DModel``).
MIN_DIFFUSERS = {"flux": "0.31.0", "sd3": "0.31.0"}


def _version_tuple(v: str) -> tuple:
    """``"0.31.0.dev0"`` -> ``(0, 31, 0)`` (leading numeric parts only)."""
    out = []
    for part in v.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.end() < len(part):  # "2rc1": a pre-release ends the numeric part
            break
    return tuple(out)
REQUIRED = ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors")


def package_version(name: str) -> Optional[str]:
    """Installed version of ``name``, or None when it cannot be imported."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        pass
    try:
        mod = importlib.import_module(name)
    except Exception:  # a broken install is reported as missing
        return None
    return str(getattr(mod, "__version__", "unknown"))


def gpu_report() -> Dict[str, Any]:
    """CUDA version, bf16 support and the visible GPUs (empty without torch or CUDA)."""
    out: Dict[str, Any] = {"cuda": None, "bf16": False, "gpus": []}
    try:
        import torch
    except Exception:
        return out
    if not torch.cuda.is_available():
        return out
    out["cuda"] = torch.version.cuda
    try:
        out["bf16"] = bool(torch.cuda.is_bf16_supported())
    except Exception:
        out["bf16"] = False
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, total = torch.cuda.mem_get_info(i)
        except Exception:
            free, total = 0, props.total_memory
        out["gpus"].append({"index": i, "name": props.name, "total_gb": round(total / 2**30, 1), "free_gb": round(free / 2**30, 1)})
    return out


def run_check(spec_path: Optional[str] = None) -> Dict[str, Any]:
    """Builds the ``check`` report.

    :param spec_path: when given, the spec is validated and its needs (bf16, 8-bit AdamW, CUDA)
        are compared with the host; problems are listed, never raised.
    :returns: the report object (without ``time``; the command adds nothing else).
    """
    versions = {name: package_version(name) for name in PACKAGES}
    problems: List[str] = []
    if sys.version_info < (3, 10):
        problems.append(f"Python {platform.python_version()} is too old: the trainer needs Python 3.10 or newer")
    for name in REQUIRED:
        if versions[name] is None:
            problems.append(f"{name} is not installed: run scripts/setup-gpu-host.sh")
    gpu = gpu_report() if versions["torch"] else {"cuda": None, "bf16": False, "gpus": []}
    if versions["torch"] and not gpu["gpus"]:
        problems.append("no CUDA GPU is visible to torch (check the NVIDIA driver, CUDA_VISIBLE_DEVICES and that torch was installed with CUDA)")
    if spec_path:
        from .errors import TrainerError
        from .spec import load_spec

        try:
            spec = load_spec(spec_path)
        except TrainerError as e:
            problems.append(e.message)
        else:
            if spec["optimizer"]["type"] == "adamw8bit" and versions["bitsandbytes"] is None:
                problems.append("optimizer.type is adamw8bit but bitsandbytes is not installed: run scripts/setup-gpu-host.sh without --no-8bit, or use adamw")
            if spec.get("mixedPrecision") == "bf16" and gpu["gpus"] and not gpu["bf16"]:
                problems.append("mixedPrecision is bf16 but this GPU does not support bf16; use fp16")
            need = MIN_DIFFUSERS.get(spec["base"]["architecture"])
            have = versions.get("diffusers")
            if need and have and _version_tuple(have) < _version_tuple(need):
                problems.append(f"{spec['base']['architecture']} models need diffusers {need} or newer (this host has {have}): run scripts/setup-gpu-host.sh")
    report: Dict[str, Any] = {"event": "check", "protocol": PROTOCOL_VERSION, "python": platform.python_version()}
    report.update(versions)
    report.update(gpu)
    report["problems"] = problems
    return report
