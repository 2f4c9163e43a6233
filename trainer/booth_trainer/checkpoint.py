"""Writing and reading the torch files of a resume state (see :mod:`.state` for the layout).

``trainable.safetensors`` holds the weights trained so far, keyed ``<component>.<parameter>``
(``unet.conv_in.weight``, ``transformer.…``, ``text_encoder.text_model...``; for LoRA only the
adapter tensors, ``unet....to_q.lora_A.default.weight``). The optimizer's large per-parameter
tensors (AdamW's ``exp_avg`` and ``exp_avg_sq``) are in one ``optimizer-<name>.safetensors`` per
name, keyed by parameter index; ``optimizer.pt`` holds the rest of the optimizer's state dict
(hyperparameters, step counters; a moved tensor is the string ``"@optimizer-<name>.safetensors"``)
and the fp16 gradient scaler's state. ``scheduler.pt`` holds the ``LambdaLR`` state dict,
``rng.pt`` the Python, NumPy, torch CPU and CUDA generator states. Everything in the ``.pt`` files
is plain tensors, numbers, strings and lists, so they load with ``torch.load(weights_only=True)``.

Large files are cut into shards of at most :data:`SHARD_BYTES` (``trainable.safetensors``,
``trainable-2.safetensors``, …; ``optimizer-exp_avg.safetensors``, ``optimizer-exp_avg-2…``),
which are written concurrently, one thread each, while their SHA-256 is computed
(:mod:`.tensorio`); the marker reuses those checksums. Why shards: SHA-256 runs at a few hundred
MB/s per core without SHA extensions (about 0.4 GB/s per thread on the H200 host measured in
docs/benchmarks.md), so one thread per 3.4 GB file made hashing the bound of a 10 GiB save.
States of format 1 (everything of the optimizer inside ``optimizer.pt``) still load.
"""

from __future__ import annotations

import os
import random
import re
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
    """Tensors to save, keyed ``<component>.<name>``: whole state dicts, or only LoRA tensors.
    They stay where they are (the writer copies them from the GPU in chunks)."""
    out: Dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for name, t in module.state_dict().items():
            if lora and "lora_" not in name:
                continue
            out[f"{prefix}.{name}"] = t.detach()
    return out


#: Optimizer state tensors with at least this many elements go to their own safetensors files.
SPLIT_NUMEL = 1024
#: Largest shard of a state's safetensors files (one writer and hashing thread per shard).
SHARD_BYTES = 512 << 20

_TRAINABLE = re.compile(r"^trainable(-[0-9]+)?\.safetensors$")


def shard(tensors: Dict[str, torch.Tensor], base: str, limit: Optional[int] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """Cuts ``tensors`` (in key order) into files of at most ``limit`` bytes (default
    :data:`SHARD_BYTES`; a larger tensor gets a file of its own):
    ``{"<base>.safetensors": …, "<base>-2.safetensors": …}``."""
    limit = SHARD_BYTES if limit is None else limit
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    current: Dict[str, torch.Tensor] = {}
    size = 0
    for key in sorted(tensors):
        t = tensors[key]
        n = t.numel() * t.element_size()
        if current and size + n > limit:
            out[f"{base}.safetensors" if not out else f"{base}-{len(out) + 1}.safetensors"] = current
            current, size = {}, 0
        current[key] = t
        size += n
    if current or not out:
        out[f"{base}.safetensors" if not out else f"{base}-{len(out) + 1}.safetensors"] = current
    return out


def split_optimizer_state(sd: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, torch.Tensor]]]:
    """Moves the large tensors of an optimizer state dict into per-name groups.

    :returns: ``(rest, files)``: the state dict with each moved tensor replaced by
        ``"@<file>"``, and ``{file: {str(param_index): tensor}}``.
    """
    by_name: Dict[str, Dict[str, torch.Tensor]] = {}
    state: Dict[Any, Dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        kept: Dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.numel() >= SPLIT_NUMEL:
                by_name.setdefault(name, {})[str(pid)] = value.detach()
                kept[name] = None  # filled with the shard's name below
            else:
                kept[name] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
        state[pid] = kept
    files: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, tensors in by_name.items():
        for fname, part in shard(tensors, f"optimizer-{name}").items():
            files[fname] = part
            for pid_text in part:
                pid: Any = int(pid_text) if int(pid_text) in state else pid_text
                state[pid][name] = "@" + fname
    return {"state": state, "param_groups": sd["param_groups"]}, files


def load_optimizer_state(folder: str, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """``optimizer.pt`` of a state with the moved tensors read back (onto ``device`` directly).

    :returns: ``{"optimizer": state_dict, "grad_scaler": ... or None}``.
    :raises ValueError: when a referenced file or tensor is missing.
    """
    from .tensorio import read_safetensors

    data = load_torch_file(folder, "optimizer.pt")
    sd = data["optimizer"]
    cache: Dict[str, Dict[str, torch.Tensor]] = {}
    for pid, entry in sd["state"].items():
        for name, value in list(entry.items()):
            if isinstance(value, str) and value.startswith("@"):
                fname = value[1:]
                if "/" in fname or fname.startswith("."):
                    raise ValueError(f"optimizer.pt names a bad file {fname!r}")
                if fname not in cache:
                    cache[fname] = read_safetensors(os.path.join(folder, fname), device or torch.device("cpu"))[0]
                if str(pid) not in cache[fname]:
                    raise ValueError(f"{fname} has no tensor for parameter {pid}")
                entry[name] = cache[fname][str(pid)]
    return data


def load_trainable(path: str, modules: Dict[str, torch.nn.Module], lora: bool, device: Optional[torch.device] = None) -> List[str]:
    """Loads ``trainable.safetensors`` and its further shards (``trainable-<n>.safetensors`` in
    the same folder) into the named modules.

    :param path: the state's ``trainable.safetensors``.
    :param device: where to read the tensors to (the modules' device: no host copy in between).
    :returns: the component names found in the file.
    :raises ValueError: when a tensor belongs to no known component, or a module's keys do not
        match (a state from another model or mode).
    """
    from .tensorio import read_safetensors

    folder = os.path.dirname(path)
    tensors: Dict[str, torch.Tensor] = {}
    for name in sorted(n for n in os.listdir(folder) if _TRAINABLE.match(n)):
        tensors.update(read_safetensors(os.path.join(folder, name), device or torch.device("cpu"))[0])
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
    known = write_shared_files(folder, meta, modules, lora, optimizer, scheduler, scaler)
    return folder, finalize_state(folder, step, known)


def write_shared_files(
    folder: str,
    meta: Dict[str, Any],
    modules: Dict[str, torch.nn.Module],
    lora: bool,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Optional[Any],
    cuda_device: Optional[int] = None,
) -> Dict[str, Tuple[int, str]]:
    """Writes every file of a state but ``COMPLETE`` and the other ranks' RNG files: weights,
    optimizer, scheduler, this process's RNG as ``rng.pt`` and ``state.json`` (rank 0's part).

    The large files are written concurrently (:class:`.tensorio.ParallelWriter`).

    :param cuda_device: passed to :func:`capture_rng` (multi-process runs).
    :returns: ``{file name: (size, sha256)}`` of the files whose checksum was computed while
        writing (for :func:`.state.finalize_state`).
    """
    from .tensorio import ParallelWriter

    rest, files = split_optimizer_state(optimizer.state_dict())
    files.update(shard(trainable_tensors(modules, lora), "trainable"))
    writer = ParallelWriter(workers=min(len(files), os.cpu_count() or 1, 16))
    for fname, tensors in files.items():
        writer.add(os.path.join(folder, fname), tensors, {"format": "pt"})
    try:
        # The small files are written while the threads copy and hash the large ones.
        torch.save({"optimizer": rest, "grad_scaler": scaler.state_dict() if scaler is not None else None}, os.path.join(folder, "optimizer.pt"))
        torch.save(scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))
        torch.save(capture_rng(cuda_device), os.path.join(folder, "rng.pt"))
        write_json_atomic(os.path.join(folder, "state.json"), dict(meta, format=STATE_FORMAT))
    finally:
        done = writer.wait()
    return {os.path.basename(p): v for p, v in done.items()}


def write_rank_rng(folder: str, name: str, cuda_device: Optional[int] = None) -> None:
    """Writes this rank's RNG states as ``name`` (``rng-<rank>.pt``) in a state folder being saved."""
    torch.save(capture_rng(cuda_device), os.path.join(folder, name))


def load_torch_file(folder: str, name: str) -> Any:
    """``torch.load`` of one state file on the CPU with ``weights_only=True``."""
    return torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
