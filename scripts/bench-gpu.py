#!/usr/bin/env python3
"""GPU benchmark: Booth's trainer against diffusers' reference DreamBooth scripts, in one run.

Builds full-size models with random weights from the published configs (speed and memory do
not depend on weight values), runs diffusers' example scripts and Booth's trainer with the same
settings one after the other on the same GPU, and writes what it measured:

- ``graphcheck``: a tiny SD 1.5 on CUDA, fp16: per-step losses with and without the CUDA graph
  (and after a resume from a state saved under the graph) must agree;
- ``sd15``: full SD 1.5 UNet fine-tune at 512 px, batch 1, fp16, text encoder frozen (the UNet
  stage of the ``face-sd15`` preset, with AdamW) against ``train_dreambooth.py``; Booth's run ends
  with its 10 GiB resume state, whose save time is recorded;
- ``save``: writing and loading that resume state with today's writer against the previous one
  (``torch.save`` of the optimizer + a second read of every file for its SHA-256);
- ``flux``: FLUX.1 [dev] LoRA (rank 16) at 1024 px, bf16, gradient checkpointing against
  ``train_dreambooth_lora_flux.py``;
- ``sdxl``: SDXL LoRA (the ``face-lora-sdxl`` preset: rank 16, bf16, gradient checkpointing, 1024
  px) against ``train_dreambooth_lora_sdxl.py``.

Figures per run: steady it/s (median-free: steps after warm-up over their wall time), peak GPU
memory (``torch.cuda.max_memory_allocated`` in the training process, and the peak of NVML's
``memory.used`` sampled every 0.2 s, the same method for both), time from process start to the
first step, and for Booth the time to its last step. Results: ``OUT/results.json``,
``OUT/summary.md``, and the tails of every log in ``OUT/logs.txt``.

Usage (on a GPU host; diffusers' source tree is not a dependency of Booth, point to a checkout)::

    python3 scripts/bench-gpu.py --diffusers /path/to/diffusers --shared-models ../shared/models --out /tmp/bench

The reference scripts are run unmodified from ``DIFFUSERS/examples/dreambooth`` through a small
wrapper that records the time and memory of every optimizer step (a global optimizer-step hook)
and ends the process after the requested number of steps, so neither side pays for writing a
final model.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(REPO, "trainer")
FIXTURE_MODELS = os.path.join(REPO, "test", "fixtures", "models")
PROMPT = "photo of ohwx man"


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class GpuMemory:
    """Samples the GPU's used memory (NVML, else nvidia-smi) every 0.2 s while running."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self.base_mib = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._read = self._reader()

    @staticmethod
    def _reader() -> Callable[[], float]:
        try:
            import pynvml  # type: ignore

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            return lambda: pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
        except Exception:
            def smi() -> float:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=10).stdout
                return float(out.strip().splitlines()[0])

            return smi

    def _safe(self) -> float:
        try:
            return self._read()
        except Exception:  # no GPU tools (a dry run on the CPU)
            return 0.0

    def __enter__(self) -> "GpuMemory":
        self.base_mib = self._safe()
        self.peak_mib = self.base_mib

        def loop() -> None:
            while not self._stop.wait(0.2):
                self.peak_mib = max(self.peak_mib, self._safe())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def peak_gib(self) -> float:
        return round((self.peak_mib - self.base_mib) / 1024, 2)


class Logs:
    """Keeps the tail of each subprocess log for OUT/logs.txt."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.parts: List[str] = []

    def add(self, name: str, path: str, tail: int = 60_000) -> None:
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return
        self.parts.append(f"\n===== {name} ({len(text)} chars, last {tail}) =====\n{text[-tail:]}")
        with open(os.path.join(self.folder, "logs.txt"), "w", encoding="utf-8") as f:
            f.write("".join(self.parts)[-12_000_000:])


def env_for(diffusers_src: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TRAINER, os.path.join(diffusers_src, "src"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def steady(times: List[float], skip: int) -> Optional[float]:
    """Steps per second over the steps after ``skip`` (their count over their span)."""
    if len(times) <= skip + 1:
        return None
    span = times[-1] - times[skip]
    return (len(times) - 1 - skip) / span if span > 0 else None


# ----------------------------------------------------------------------- subcommands


def cmd_build(kind: str, folder: str, shared: str, dry: bool = False) -> None:
    """Writes a full-size model with random weights (built on the GPU) as a Diffusers folder;
    with ``dry`` a tiny one on the CPU (to rehearse the benchmark without a GPU)."""
    import torch

    sys.path.insert(0, TRAINER)
    os.environ["BOOTH_SHARED_MODELS"] = shared
    t0 = time.time()
    if dry:
        from tests import tiny_models

        {"sd15": tiny_models.build_sd15, "sdxl": tiny_models.build_sdxl, "flux": tiny_models.build_flux}[kind](folder)
        print(json.dumps({"built_s": round(time.time() - t0, 1), "saved_s": 0}), flush=True)
        return

    def cfg(root: str, *parts: str) -> Dict[str, Any]:
        with open(os.path.join(root, *parts)) as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}

    clip_tok = os.path.join(shared, "clip-tokenizer")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def text_cfg(c: Dict[str, Any]) -> CLIPTextConfig:
        for k in ("architectures", "model_type", "torch_dtype", "transformers_version"):
            c.pop(k, None)
        return CLIPTextConfig(**c)

    with torch.device("cuda"):
        if kind == "sd15":
            from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

            root = os.path.join(shared, "sd15")
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**cfg(root, "vae", "config.json")),
                text_encoder=CLIPTextModel(text_cfg(cfg(root, "text_encoder", "config.json"))),
                tokenizer=CLIPTokenizer.from_pretrained(clip_tok),
                unet=UNet2DConditionModel(**cfg(root, "unet", "config.json")),
                scheduler=DDPMScheduler.from_config(cfg(root, "scheduler", "scheduler_config.json")),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        elif kind == "sdxl":
            from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

            root = os.path.join(shared, "sdxl-base")
            torch.set_default_dtype(torch.float16)
            unet = UNet2DConditionModel(**cfg(root, "unet", "config.json"))
            te2 = CLIPTextModelWithProjection(text_cfg(cfg(root, "text_encoder_2", "config.json")))
            torch.set_default_dtype(torch.float32)
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**cfg(root, "vae", "config.json")),
                text_encoder=CLIPTextModel(text_cfg(cfg(root, "text_encoder", "config.json"))).half(),
                text_encoder_2=te2,
                tokenizer=CLIPTokenizer.from_pretrained(clip_tok),
                tokenizer_2=CLIPTokenizer.from_pretrained(clip_tok),
                unet=unet,
                scheduler=EulerDiscreteScheduler.from_config(cfg(root, "scheduler", "scheduler_config.json")),
            )
        elif kind == "flux":
            from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
            from transformers import T5Config, T5EncoderModel

            from tests.tiny_models import build_t5_tokenizer

            root = os.path.join(FIXTURE_MODELS, "flux1-dev")
            torch.set_default_dtype(torch.bfloat16)
            transformer = FluxTransformer2DModel(**cfg(root, "transformer", "config.json"))
            t5cfg = cfg(root, "text_encoder_2", "config.json")
            for k in ("architectures", "model_type"):
                t5cfg.pop(k, None)
            if os.environ.get("BENCH_SMALL_T5"):
                # Not enough scratch space for the 9.5 GB T5-XXL: same width, 2 of 24 layers
                # (it only encodes the prompt once; training speed does not depend on it).
                t5cfg.update(num_layers=2, num_decoder_layers=2)
            t5 = T5EncoderModel(T5Config(**t5cfg))
            clip = CLIPTextModel(text_cfg(cfg(root, "text_encoder", "config.json")))
            torch.set_default_dtype(torch.float32)
            # PyTorch's default init (uniform, fan-in) makes a 57-block stack overflow in bf16;
            # trained transformers have small weights: normal(0, 0.02), zero biases.
            with torch.no_grad():
                for mod in (transformer, t5):
                    for layer in mod.modules():
                        if isinstance(layer, torch.nn.Linear):
                            layer.weight.normal_(0.0, 0.02)
                            if layer.bias is not None:
                                layer.bias.zero_()
            tok_dir = os.path.join(folder, "_t5")
            pipe = FluxPipeline(
                scheduler=FlowMatchEulerDiscreteScheduler.from_config(cfg(root, "scheduler", "scheduler_config.json")),
                vae=AutoencoderKL(**cfg(root, "vae", "config.json")),
                text_encoder=clip,
                tokenizer=CLIPTokenizer.from_pretrained(clip_tok),
                text_encoder_2=t5,
                tokenizer_2=build_t5_tokenizer(tok_dir),
                transformer=transformer,
            )
        else:
            raise SystemExit(f"unknown model kind {kind}")
    built = time.time() - t0
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size="100GB")
    shutil.rmtree(os.path.join(folder, "_t5"), ignore_errors=True)
    print(json.dumps({"built_s": round(built, 1), "saved_s": round(time.time() - t0 - built, 1)}), flush=True)


def cmd_data(folder: str, resolution: int, count: int) -> None:
    """Writes ``count`` smooth random RGB images of ``resolution`` px."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.random((8, 8, 3)) * 255
        img = Image.fromarray(small.astype("uint8")).resize((resolution, resolution), Image.BICUBIC)
        # Images only: the reference scripts open every file of the folder as an image.
        img.save(os.path.join(folder, f"{i:04d}.png"))


def cmd_reference(script: str, steps: int, out_json: str, argv: List[str]) -> None:
    """Runs a diffusers example script in this process, timing each optimizer step, and exits
    after ``steps`` steps (before the script writes its final model)."""
    import torch

    times: List[float] = []
    start = float(os.environ.get("BENCH_T0", time.time()))
    cuda = torch.cuda.is_available()

    def hook(_opt: Any, _args: Any, _kwargs: Any) -> None:
        times.append(time.time())
        if len(times) >= steps:
            if cuda:
                torch.cuda.synchronize()
            times[-1] = time.time()
            with open(out_json, "w") as f:
                json.dump({"start": start, "step_times": times, "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}, f)
            os._exit(0)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(hook)
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


def cmd_save_bench(folder: str, shared: str, dry: bool = False) -> None:
    """Saves and loads a full SD 1.5 UNet resume state (fp32 weights + AdamW moments) with the
    previous writer (safetensors from host copies, ``torch.save`` of the whole optimizer state,
    then every file read again for SHA-256) and with Booth's current one, on the same disk."""
    import hashlib

    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, TRAINER)
    from booth_trainer.checkpoint import load_optimizer_state, load_trainable, write_shared_files
    from booth_trainer.state import begin_state, finalize_state, verify_state

    with open(os.path.join(shared, "sd15", "unet", "config.json")) as f:
        ucfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    dev = torch.device("cpu" if dry else "cuda")
    if dry:
        ucfg.update(block_out_channels=[32, 64, 64, 64], layers_per_block=1, cross_attention_dim=64, attention_head_dim=2, norm_num_groups=8)
    with dev:
        unet = UNet2DConditionModel(**ucfg)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, fused=not dry)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sync = (lambda: None) if dry else torch.cuda.synchronize
    sync()
    out: Dict[str, Any] = {}

    def sha(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    return h.hexdigest()
                h.update(b)

    # The previous writer, as it was before this change.
    old = os.path.join(folder, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.makedirs(old)
    t = time.time()
    from safetensors.torch import save_file

    save_file({f"unet.{k}": v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}, os.path.join(old, "trainable.safetensors"), metadata={"format": "pt"})
    torch.save({"optimizer": opt.state_dict(), "grad_scaler": None}, os.path.join(old, "optimizer.pt"))
    torch.save(sched.state_dict(), os.path.join(old, "scheduler.pt"))
    files = {}
    for name in sorted(os.listdir(old)):
        p = os.path.join(old, name)
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
        files[name] = {"size": os.path.getsize(p), "sha256": sha(p)}
    out["previous_save_s"] = round(time.time() - t, 2)
    out["state_gib"] = round(sum(v["size"] for v in files.values()) / 2**30, 2)

    # Today's writer.
    t = time.time()
    new = begin_state(folder, 1)
    known = write_shared_files(new, {"step": 1}, {"unet": unet}, False, opt, sched, None)
    finalize_state(new, 1, known)
    out["booth_save_s"] = round(time.time() - t, 2)
    out["save_ratio"] = round(out["booth_save_s"] / out["previous_save_s"], 3)
    try:  # best effort: loads from the disk, not the page cache
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        out["page_cache_dropped"] = True
    except OSError:
        out["page_cache_dropped"] = False

    # Loads: previous (sequential hashing, host tensors, torch.load) vs today's.
    t = time.time()
    for name in sorted(os.listdir(old)):
        sha(os.path.join(old, name))
    from safetensors.torch import load_file

    sd = load_file(os.path.join(old, "trainable.safetensors"), device="cpu")
    unet.load_state_dict({k[5:]: v for k, v in sd.items()})
    ost = torch.load(os.path.join(old, "optimizer.pt"), map_location="cpu", weights_only=True)
    opt.load_state_dict(ost["optimizer"])
    sync()
    out["previous_load_s"] = round(time.time() - t, 2)
    t = time.time()
    reason = verify_state(new, required=("trainable.safetensors", "optimizer.pt", "scheduler.pt"))
    load_trainable(os.path.join(new, "trainable.safetensors"), {"unet": unet}, False, dev)
    opt.load_state_dict(load_optimizer_state(new, dev)["optimizer"])
    sync()
    out["booth_load_s"] = round(time.time() - t, 2)
    out["load_ratio"] = round(out["booth_load_s"] / out["previous_load_s"], 3)
    out["verify"] = reason or "ok"
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- phases


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out
        self.work = args.work
        self.t_end = time.time() + args.budget_s
        self.env = env_for(args.diffusers)
        self.logs = Logs(self.out)
        self.results: Dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "phases": {}}
        self.examples = os.path.join(args.diffusers, "examples", "dreambooth")
        self.dry = bool(args.dry_run)
        #: In a dry run: 256 px, float32 on the CPU, a few steps, no CUDA graphs.
        self.px = (lambda res: 256) if self.dry else (lambda res: res)
        self.mp = (lambda mp: "no") if self.dry else (lambda mp: mp)

    def left(self) -> float:
        return self.t_end - time.time()

    def save(self) -> None:
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=2)

    def run(self, name: str, cmd: List[str], timeout: float, on_event: Optional[Callable[[Dict[str, Any], subprocess.Popen], None]] = None, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
        """Runs a command; JSON lines on stdout are events (Booth's) with a receive time."""
        log_path = os.path.join(self.work, f"{name}.log")
        env = dict(env or self.env)
        t0 = time.time()
        env["BENCH_T0"] = repr(t0)
        events: List[Dict[str, Any]] = []
        with open(log_path, "w") as err, GpuMemory() as mem:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=self.work, start_new_session=True)
            timer = threading.Timer(max(5.0, timeout), lambda: os.killpg(p.pid, signal.SIGKILL))
            timer.start()
            assert p.stdout is not None
            for line in p.stdout:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        e = json.loads(line)
                    except ValueError:
                        err.write(line + "\n")
                        continue
                    e["_t"] = time.time()
                    events.append(e)
                    if on_event:
                        on_event(e, p)
                else:
                    err.write(line + "\n")
            code = p.wait()
            timer.cancel()
        self.logs.add(name, log_path)
        return {"code": code, "events": events, "t0": t0, "wall_s": round(time.time() - t0, 1), "gpu_peak_gib": mem.peak_gib, "timed_out": time.time() - t0 >= timeout - 1}

    def build(self, kind: str) -> Optional[str]:
        folder = os.path.join(self.work, f"model-{kind}")
        if os.path.isdir(folder):
            return folder
        env = dict(self.env)
        if kind == "flux" and shutil.disk_usage(self.work).free < 45 * 2**30 and not self.dry:
            env["BENCH_SMALL_T5"] = "1"
            self.results["flux_t5"] = "2-layer T5 (scratch space under 45 GB)"
        r = self.run(f"build-{kind}", [sys.executable, __file__, "build", kind, folder, "--shared-models", self.args.shared_models, *(["--dry-run"] if self.dry else [])], timeout=min(300, self.left()), env=env)
        info = next((e for e in r["events"] if "built_s" in e), None)
        self.results.setdefault("builds", {})[kind] = info or {"code": r["code"]}
        return folder if r["code"] == 0 else None

    def data(self, res: int) -> str:
        res = self.px(res)
        folder = os.path.join(self.work, f"data-{res}")
        if not os.path.isdir(folder):
            cmd_data(folder, res, 5)
        return folder

    def reference(self, name: str, script: str, steps: int, argv: List[str], timeout: float) -> Dict[str, Any]:
        out_json = os.path.join(self.work, f"{name}.json")
        cmd = [sys.executable, __file__, "reference", os.path.join(self.examples, script), str(steps), out_json, "--", *argv]
        env = dict(self.env)
        if os.environ.get("BENCH_REFERENCE_PYTHONPATH"):
            # A dry run's stand-ins for packages only the reference scripts import (torchvision).
            env["PYTHONPATH"] = os.environ["BENCH_REFERENCE_PYTHONPATH"] + os.pathsep + env["PYTHONPATH"]
        r = self.run(name, cmd, timeout, env=env)
        res: Dict[str, Any] = {"code": r["code"], "wall_s": r["wall_s"], "gpu_peak_gib": r["gpu_peak_gib"]}
        if os.path.exists(out_json):
            d = json.load(open(out_json))
            times = d["step_times"]
            res.update(steps=len(times), first_step_s=round(times[0] - r["t0"], 1), it_s=steady(times, min(20, len(times) // 4)), max_allocated_gib=d["max_allocated_gib"], last_step_s=round(times[-1] - r["t0"], 1))
        return res

    def booth(self, name: str, spec: Dict[str, Any], data: str, timeout: float, stop_after_save: bool = True, resume: str = "none", work: Optional[str] = None) -> Dict[str, Any]:
        work = work or os.path.join(self.work, f"work-{name}")
        if resume == "none":
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            shutil.copytree(data, os.path.join(work, "dataset"))
        with open(os.path.join(work, "spec.json"), "w") as f:
            json.dump(spec, f)
        total = spec["schedule"].get("steps") or spec["schedule"]["unet"]["steps"]

        def on_event(e: Dict[str, Any], p: subprocess.Popen) -> None:
            if stop_after_save and e.get("event") == "resume_state" and e.get("step") == total:
                os.killpg(p.pid, signal.SIGKILL)

        cmd = [sys.executable, "-m", "booth_trainer", "train", "--spec", os.path.join(work, "spec.json"), "--work", work, "--resume", resume]
        r = self.run(name, cmd, timeout, on_event)
        if stop_after_save:
            shutil.rmtree(os.path.join(work, "state"), ignore_errors=True)  # scratch space for the next phase
        ev = r["events"]
        steps = [e for e in ev if e.get("event") == "step"]
        started = next((e for e in ev if e.get("event") == "started"), None)
        res: Dict[str, Any] = {"code": r["code"], "wall_s": r["wall_s"], "gpu_peak_gib": r["gpu_peak_gib"], "steps": len(steps)}
        if steps:
            times = [e["_t"] for e in steps]
            res.update(
                started_s=round(started["_t"] - r["t0"], 1) if started else None,
                first_step_s=round(times[0] - r["t0"], 1),
                last_step_s=round(times[-1] - r["t0"], 1),
                it_s=steady(times, min(30, len(times) // 4)),
                max_allocated_gib=max((e.get("vram_gb") or 0) for e in steps),
                losses=[e.get("loss") for e in steps],
            )
        for e in ev:
            if e.get("event") == "resume_state":
                res.setdefault("states", []).append({"step": e["step"], "bytes": e["bytes"]})
            if e.get("event") == "error":
                res["error"] = e.get("message")
        try:
            text = open(os.path.join(self.work, f"{name}.log")).read()
            res["log_lines"] = [ln for ln in text.splitlines() if ln.startswith(("speed:", "compiled", "captured", "saved ", "loaded ", "ready", "encoded", "warning: CUDA", "warning: torch.compile"))][:20]
        except OSError:
            pass
        return res

    # ---- phases

    def phase_graphcheck(self) -> Dict[str, Any]:
        folder = os.path.join(self.work, "model-tiny-sd15")
        if not os.path.isdir(folder):
            code = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {TRAINER!r}); from tests.tiny_models import build_sd15; build_sd15({folder!r})"], env=dict(self.env, BOOTH_SHARED_MODELS=self.args.shared_models), cwd=self.work).returncode
            if code != 0:
                return {"error": "tiny model build failed"}
        data = self.data(256)
        base = {
            "version": 1, "session": "gc", "run": "r1", "base": {"model": folder, "architecture": "sd1"}, "mode": {"type": "full"},
            "data": {"instancePrompt": PROMPT, "captions": "prompt"}, "resolution": 256,
            "schedule": {"type": "joint", "steps": 8, "unetLearningRate": 1e-4}, "optimizer": {"type": "adamw"}, "lrScheduler": {"type": "linear"},
            "mixedPrecision": "fp16", "resumeState": {"every": 4, "keep": 5}, "samples": {"prompts": []}, "minSnrGamma": 5,
        }
        eager = self.booth("gc-eager", dict(base, performance={"compile": "off", "cudaGraph": "off"}), data, 120, stop_after_save=False) if not self.args.skip_eager_check else {}
        on = "off" if self.dry else "on"
        if self.dry:
            base["mixedPrecision"] = "no"
        graph = self.booth("gc-graph", dict(base, performance={"compile": "off", "cudaGraph": on}), data, 120, stop_after_save=False)
        work = os.path.join(self.work, "work-gc-graph")
        shutil.rmtree(os.path.join(work, "state", "8"), ignore_errors=True)
        shutil.rmtree(os.path.join(work, "model"), ignore_errors=True)
        resumed = self.booth("gc-resume", dict(base, performance={"compile": "off", "cudaGraph": on}), data, 120, stop_after_save=False, resume="auto", work=work)
        a, b, c = eager.get("losses") or [], graph.get("losses") or [], resumed.get("losses") or []
        out: Dict[str, Any] = {"eager": a, "graph": b, "resumed_5_8": c, "graph_log": graph.get("log_lines"), "codes": [eager["code"], graph["code"], resumed["code"]]}
        if len(a) == 8 and len(b) == 8:
            out["max_abs_diff_graph_vs_eager"] = max(abs(x - y) for x, y in zip(a, b))
        if len(b) == 8 and len(c) == 4:
            out["max_abs_diff_resume_vs_uninterrupted"] = max(abs(x - y) for x, y in zip(b[4:], c))
        return out

    def sd15_spec(self, model: str, steps: int, perf: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "version": 1, "session": "bench", "run": "sd15", "base": {"model": model, "architecture": "sd1"}, "mode": {"type": "full"},
            "data": {"instancePrompt": PROMPT, "captions": "prompt"}, "resolution": self.px(512),
            "schedule": {"type": "two-stage", "textEncoder": {"steps": 0, "learningRate": 1e-6}, "unet": {"steps": steps, "learningRate": 2e-6}},
            "optimizer": {"type": "adamw"}, "lrScheduler": {"type": "linear"}, "mixedPrecision": self.mp("fp16"),
            "resumeState": {"every": 100000}, "samples": {"prompts": []}, "performance": perf,
        }

    def phase_sd15(self) -> Dict[str, Any]:
        model = self.build("sd15")
        if not model:
            return {"error": "build failed"}
        data = self.data(512)
        ref_steps = self.args.sd15_ref_steps
        ref = self.reference("sd15-ref", "train_dreambooth.py", ref_steps, [
            "--pretrained_model_name_or_path", model, "--instance_data_dir", data, "--instance_prompt", PROMPT,
            "--output_dir", os.path.join(self.work, "out-sd15-ref"), "--resolution", str(self.px(512)), "--train_batch_size", "1",
            "--learning_rate", "2e-6", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_train_steps", str(ref_steps + 10),
            "--mixed_precision", self.mp("fp16"), "--seed", "0", "--checkpointing_steps", "100000",
        ], timeout=min(180, self.left()))
        out: Dict[str, Any] = {"reference": ref}
        self.results["phases"]["sd15"] = out
        self.save()
        steps = self.args.sd15_steps
        out["booth"] = self.booth("sd15-booth", self.sd15_spec(model, steps, {}), data, timeout=min(300, self.left()))
        b, r = out["booth"], ref
        if b.get("it_s") and r.get("it_s"):
            out["it_s_ratio"] = round(b["it_s"] / r["it_s"], 2)
            # Time to 500 steps: the reference's measured start-up plus 500 steps at its steady rate
            # (it ran fewer steps), Booth's measured when it ran 500.
            out["ref_time_to_500_s"] = round(r["first_step_s"] + 499 / r["it_s"], 1)
            out["booth_time_to_500_s"] = b["last_step_s"] if b["steps"] >= 500 else round(b["first_step_s"] + 499 / b["it_s"], 1)
        return out

    def phase_sd15_graph(self) -> Dict[str, Any]:
        """Booth with the CUDA graph but without torch.compile (no compile time)."""
        model = self.build("sd15")
        data = self.data(512)
        return self.booth("sd15-graph", self.sd15_spec(model or "", self.args.sd15_steps, {"compile": "off"}), data, timeout=min(150, self.left()))

    def phase_sd15_eager(self) -> Dict[str, Any]:
        model = self.build("sd15")
        data = self.data(512)
        return self.booth("sd15-eager", self.sd15_spec(model or "", 150, {"compile": "off", "cudaGraph": "off"}), data, timeout=min(150, self.left()))

    def phase_save(self) -> Dict[str, Any]:
        folder = os.path.join(self.args.disk, "booth-save-bench")
        os.makedirs(folder, exist_ok=True)
        r = self.run("save", [sys.executable, __file__, "save-bench", folder, "--shared-models", self.args.shared_models, *(["--dry-run"] if self.dry else [])], timeout=min(240, self.left()))
        shutil.rmtree(folder, ignore_errors=True)
        info = next((e for e in r["events"] if "booth_save_s" in e), None)
        return info or {"code": r["code"]}

    def phase_flux(self) -> Dict[str, Any]:
        model = self.build("flux")
        if not model:
            return {"error": "build failed"}
        data = self.data(1024)
        steps = self.args.flux_steps
        layers = "attn.to_k,attn.to_q,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_q_proj,attn.add_v_proj,attn.to_add_out,ff.net.0.proj,ff.net.2,ff_context.net.0.proj,ff_context.net.2,proj_mlp,proj_out"
        ref = self.reference("flux-ref", "train_dreambooth_lora_flux.py", steps, [
            "--pretrained_model_name_or_path", model, "--instance_data_dir", data, "--instance_prompt", PROMPT,
            "--output_dir", os.path.join(self.work, "out-flux-ref"), "--resolution", str(self.px(1024)), "--train_batch_size", "1",
            "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_train_steps", str(steps + 10),
            "--mixed_precision", self.mp("bf16"), "--rank", "16", "--lora_alpha", "16", "--gradient_checkpointing", "--cache_latents",
            "--guidance_scale", "1", "--seed", "0", "--checkpointing_steps", "100000", "--lora_layers", layers,
        ], timeout=min(240, self.left()))
        out: Dict[str, Any] = {"reference": ref}
        self.results["phases"]["flux"] = out
        self.save()
        spec = {
            "version": 1, "session": "bench", "run": "flux", "base": {"model": model, "architecture": "flux"},
            "mode": {"type": "lora", "rank": 16, "alpha": 16, "targets": "attention-mlp"},
            "data": {"instancePrompt": PROMPT, "captions": "prompt"}, "resolution": self.px(1024),
            "schedule": {"type": "joint", "steps": steps, "transformerLearningRate": 1e-4}, "optimizer": {"type": "adamw"},
            "lrScheduler": {"type": "constant"}, "mixedPrecision": self.mp("bf16"), "gradientCheckpointing": True,
            "resumeState": {"every": 100000}, "samples": {"prompts": []}, "flow": {"guidanceScale": 1},
        }
        out["booth"] = self.booth("flux-booth", spec, data, timeout=min(240, self.left()))
        shutil.rmtree(model, ignore_errors=True)  # 34 GB of scratch space
        b = out["booth"]
        if b.get("it_s") and ref.get("it_s"):
            out["it_s_ratio"] = round(b["it_s"] / ref["it_s"], 2)
        return out

    def phase_sdxl(self) -> Dict[str, Any]:
        model = self.build("sdxl")
        if not model:
            return {"error": "build failed"}
        data = self.data(1024)
        steps = self.args.sdxl_steps
        ref = self.reference("sdxl-ref", "train_dreambooth_lora_sdxl.py", steps, [
            "--pretrained_model_name_or_path", model, "--instance_data_dir", data, "--instance_prompt", PROMPT,
            "--output_dir", os.path.join(self.work, "out-sdxl-ref"), "--resolution", str(self.px(1024)), "--train_batch_size", "1",
            "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_train_steps", str(steps + 10),
            "--mixed_precision", self.mp("bf16"), "--rank", "16", "--gradient_checkpointing", "--seed", "0", "--checkpointing_steps", "100000",
        ], timeout=min(180, self.left()))
        out: Dict[str, Any] = {"reference": ref}
        self.results["phases"]["sdxl"] = out
        self.save()
        spec = {
            "version": 1, "session": "bench", "run": "sdxl", "base": {"model": model, "architecture": "sdxl"},
            "mode": {"type": "lora", "rank": 16, "alpha": 16}, "data": {"instancePrompt": PROMPT, "captions": "prompt"}, "resolution": self.px(1024),
            "schedule": {"type": "joint", "steps": steps, "unetLearningRate": 1e-4}, "optimizer": {"type": "adamw"},
            "lrScheduler": {"type": "constant"}, "mixedPrecision": self.mp("bf16"), "gradientCheckpointing": True,
            "resumeState": {"every": 100000}, "samples": {"prompts": []},
        }
        out["booth"] = self.booth("sdxl-booth", spec, data, timeout=min(240, self.left()))
        b = out["booth"]
        if b.get("it_s") and ref.get("it_s"):
            out["it_s_ratio"] = round(b["it_s"] / ref["it_s"], 2)
        return out

    def go(self) -> None:
        try:
            import torch

            self.results["gpu"] = torch.cuda.get_device_name(0)
            self.results["torch"] = torch.__version__
        except Exception as e:
            self.results["gpu"] = f"unknown ({e})"
        for phase in self.args.phases.split(","):
            if self.left() < 30:
                self.results["phases"][phase] = {"skipped": "out of time budget"}
                continue
            log(f"phase {phase} ({self.left():.0f} s left)")
            t = time.time()
            try:
                self.results["phases"][phase] = getattr(self, f"phase_{phase.replace('-', '_')}")()
            except Exception as e:  # one phase's failure must not lose the others' figures
                self.results["phases"][phase] = {"error": f"{type(e).__name__}: {e}"}
            self.results["phases"][phase]["phase_s"] = round(time.time() - t, 1)
            self.save()
            log(f"phase {phase}: {json.dumps({k: v for k, v in self.results['phases'][phase].items() if k not in ('losses',)}, default=str)[:1500]}")
        self.summary()

    def summary(self) -> None:
        rows = ["| phase | run | it/s | first step s | peak alloc GiB | GPU peak GiB | steps |", "|---|---|---|---|---|---|---|"]
        for name, ph in self.results["phases"].items():
            for who in ("reference", "booth"):
                r = ph.get(who) if isinstance(ph, dict) else None
                if isinstance(r, dict):
                    it = r.get("it_s")
                    rows.append(f"| {name} | {who} | {it:.2f} |" if it else f"| {name} | {who} | - |")
                    rows[-1] += f" {r.get('first_step_s')} | {r.get('max_allocated_gib')} | {r.get('gpu_peak_gib')} | {r.get('steps')} |"
        text = "\n".join(rows) + "\n\n```\n" + json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("reference", "booth", "eager", "graph", "resumed_5_8")} if isinstance(v, dict) else v for k, v in self.results["phases"].items()}, indent=1, default=str) + "\n```\n"
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(text)
        print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("build")
    b.add_argument("kind")
    b.add_argument("folder")
    b.add_argument("--shared-models", required=True)
    b.add_argument("--dry-run", action="store_true")
    r = sub.add_parser("reference")
    r.add_argument("script")
    r.add_argument("steps", type=int)
    r.add_argument("out_json")
    r.add_argument("rest", nargs=argparse.REMAINDER)
    s = sub.add_parser("save-bench")
    s.add_argument("folder")
    s.add_argument("--shared-models", required=True)
    s.add_argument("--dry-run", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with tiny models, 256 px, a few steps, float32")
    ap.add_argument("--diffusers", help="a diffusers checkout (src/ and examples/dreambooth/)")
    ap.add_argument("--shared-models", default=os.path.join(REPO, "..", "shared", "models"), help="SD configs and the CLIP tokenizer (../shared/models)")
    ap.add_argument("--out", default="/tmp/booth-bench-out")
    ap.add_argument("--work", default=None, help="scratch folder for models and runs (default: /dev/shm when it has 80 GB free, else /tmp)")
    ap.add_argument("--disk", default="/tmp", help="folder on the real disk for the save benchmark")
    ap.add_argument("--phases", default="graphcheck,sd15,flux,save,sd15-eager,sdxl")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--sd15-steps", type=int, default=500)
    ap.add_argument("--sd15-ref-steps", type=int, default=100)
    ap.add_argument("--flux-steps", type=int, default=10)
    ap.add_argument("--skip-eager-check", action="store_true", help="graphcheck: only the graph run and its resume")
    ap.add_argument("--sdxl-steps", type=int, default=40)
    args = ap.parse_args()
    if args.cmd == "build":
        return cmd_build(args.kind, args.folder, args.shared_models, args.dry_run)
    if args.cmd == "reference":
        rest = args.rest[1:] if args.rest and args.rest[0] == "--" else args.rest
        return cmd_reference(args.script, args.steps, args.out_json, rest)
    if args.cmd == "save-bench":
        return cmd_save_bench(args.folder, args.shared_models, args.dry_run)
    if not args.diffusers:
        ap.error("--diffusers is required: a diffusers source checkout (its src/ and examples/dreambooth/)")
    args.shared_models = os.path.abspath(args.shared_models)
    args.diffusers = os.path.abspath(args.diffusers)
    if args.work is None:
        st = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
        args.work = "/dev/shm/booth-bench" if st and st.free > 50 * 2**30 else "/tmp/booth-bench"
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    log(f"scratch {args.work} ({shutil.disk_usage(args.work).free / 2**30:.0f} GiB free), disk {args.disk} ({shutil.disk_usage(args.disk).free / 2**30:.0f} GiB free)")
    Bench(args).go()


if __name__ == "__main__":
    main()
