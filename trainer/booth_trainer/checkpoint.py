"""Writing and reading the torch files of a resume state (see :mod:`.state` for the layout).

``trainable.safetensors`` holds the weights trained so far, keyed ``<component>.<parameter>``
(``unet.conv_in.weight``, ``text_encoder.text_model...``; for LoRA only the adapter tensors,
``unet....to_q.lora_A.default.weight``). ``optimizer.pt`` holds the optimizer's state dict and
the fp16 gradient scaler's, ``scheduler.pt`` the ``LambdaLR`` state dict, ``rng.pt`` the Python,
NumPy, torch CPU and CUDA generator states. Everything in the ``.pt`` files is plain tensors,
numbers and lists, so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Optional, Tuple

import torch

from .state import STATE_FORMAT, begin_state, finalize_state, write_json_atomic


def capture_rng(cuda_device: Optional[int] = None) -> Dict[str, Any]:
    """The generator states of Python, NumPy, torch CPU and every CUDA device.

    :param cuda_device: with several processes, only this rank's GPU (touching the others
        would create a CUDA context on every GPU in every rank).
    """
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if cuda_device is not None:
        out["cuda"] = [torch.cuda.get_rng_state(cuda_device)] if torch.cuda.is_available() else []
        out["cuda_device"] = cuda_device
    return out


def restore_rng(data: Dict[str, Any]) -> None:
    """Restores what :func:`capture_rng` captured (CUDA only when the device count matches)."""
    import numpy as np

    py = data["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(data["torch"])
    cuda = data.get("cuda") or []
    if "cuda_device" in data:
        # A rank's own GPU stream (multi-process): restored onto this rank's current device.
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda[0], torch.cuda.current_device())
        return
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def trainable_tensors(modules: Dict[str, torch.nn.Module], lora: bool) -> Dict[str, torch.Tensor]:
    """Tensors to save, keyed ``<component>.<name>``: whole state dicts, or only LoRA tensors."""
    out: Dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for name, t in module.state_dict().items():
            if lora and "lora_" not in name:
                continue
            out[f"{prefix}.{name}"] = t.detach().to("cpu").contiguous()
    return out


def load_trainable(path: str, modules: Dict[str, torch.nn.Module], lora: bool) -> List[str]:
    """Loads ``trainable.safetensors`` into the named modules.

    :returns: the component names found in the file.
    :raises ValueError: when a tensor belongs to no known component, or a module's keys do not
        match (a state from another model or mode).
    """
    from safetensors.torch import load_file

    tensors = load_file(path, device="cpu")
    groups: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in modules:
            raise ValueError(f"trainable.safetensors has weights for {prefix!r}, which this run does not train")
        groups.setdefault(prefix, {})[name] = t
    for prefix, sd in groups.items():
        module = modules[prefix]
        if lora:
            result = module.load_state_dict(sd, strict=False)
            missing = [k for k in result.missing_keys if "lora_" in k]
            if missing or result.unexpected_keys:
                raise ValueError(f"LoRA weights of {prefix} do not match the model (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
        else:
            module.load_state_dict(sd, strict=True)
    return sorted(groups)


def save_resume_state(
    work: str,
    step: int,
    meta: Dict[str, Any],
    modules: Dict[str, torch.nn.Module],
    lora: bool,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Optional[Any],
) -> Tuple[str, int]:
    """Writes ``state/<step>/`` with ``COMPLETE`` last.

    :param meta: the ``state.json`` fields (step, stage, cursor, fingerprint, ...).
    :param modules: components trained so far, by component name.
    :returns: ``(folder, bytes)``.
    """
    folder = begin_state(work, step)
    write_shared_files(folder, meta, modules, lora, optimizer, scheduler, scaler)
    return folder, finalize_state(folder, step)


def write_shared_files(
    folder: str,
    meta: Dict[str, Any],
    modules: Dict[str, torch.nn.Module],
    lora: bool,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Optional[Any],
    cuda_device: Optional[int] = None,
) -> None:
    """Writes every file of a state but ``COMPLETE`` and the other ranks' RNG files: weights,
    optimizer, scheduler, this process's RNG as ``rng.pt`` and ``state.json`` (rank 0's part).

    :param cuda_device: passed to :func:`capture_rng` (multi-process runs).
    """
    from safetensors.torch import save_file

    save_file(trainable_tensors(modules, lora), os.path.join(folder, "trainable.safetensors"), metadata={"format": "pt"})
    torch.save({"optimizer": optimizer.state_dict(), "grad_scaler": scaler.state_dict() if scaler is not None else None}, os.path.join(folder, "optimizer.pt"))
    torch.save(scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))
    torch.save(capture_rng(cuda_device), os.path.join(folder, "rng.pt"))
    write_json_atomic(os.path.join(folder, "state.json"), dict(meta, format=STATE_FORMAT))


def write_rank_rng(folder: str, name: str, cuda_device: Optional[int] = None) -> None:
    """Writes this rank's RNG states as ``name`` (``rng-<rank>.pt``) in a state folder being saved."""
    torch.save(capture_rng(cuda_device), os.path.join(folder, name))


def load_torch_file(folder: str, name: str) -> Any:
    """``torch.load`` of one state file on the CPU with ``weights_only=True``."""
    return torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
