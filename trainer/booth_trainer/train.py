"""The training loop (torch): from a validated spec and a work directory to ``model/``.

One :class:`Trainer` run goes through these phases (docs/trainer.md has the why of each):

1. pick the device and precision; find the resume state (``--resume``) and check that it was
   saved by the same training-relevant spec (:func:`.spec.fingerprint`);
2. load the base model's parts (:mod:`.models`), emit ``started``;
3. generate missing class images with the *base* model (prior preservation), before any
   trained weight is loaded, so a resumed run on a fresh host renders the same prior;
4. set dtypes (trained-ever modules float32, the rest half precision), LoRA adapters, gradient
   checkpointing; load the resume state's weights;
5. cache latents (VAE posterior mean and std per image, once; ``WORK/cache/``);
6. run the stages: per stage a fresh optimizer and ``LambdaLR`` over the stage's own steps, or,
   when resuming inside a stage, the saved optimizer/scheduler/scaler; the RNG streams are
   restored right before the first step; a frozen text encoder's embeddings are computed once;
7. save resume states (interval, stage end, signal, final), samples, and the final model.

The family of the base model (UNet: SD 1.x/2.x/SDXL; flow matching: FLUX.1, SD 3.5) decides only
what a micro-batch computes (:mod:`.families`) and how the parts load and render
(:mod:`.models`, :mod:`.flow_models`). The flow families' text encoders are frozen: every prompt
is encoded once (and cached on disk), then the encoders are freed before anything else.

Speed (:mod:`.speed`, ``spec.performance``): the loss of a step is read asynchronously, the
denoiser may be compiled, and a stage with static shapes may run each step as one CUDA graph.

The only signal-handling work here is polling :attr:`.signals.StopSignals.requested` after each
optimizer step; the phases before training raise :class:`~.errors.Preempted` from the handler.

With ``WORLD_SIZE`` > 1 (``accelerate launch``/torchrun) every process runs this same loop on its
own GPU (:mod:`.distributed`): each rank takes its slice of the same global batch, gradients are
averaged by an all-reduce before the optimizer step, the stop flag and the loss are agreed once
per step, and only rank 0 prints events and writes outputs (docs/trainer.md, "Several GPUs").
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import EXIT_PREEMPTED, PROTOCOL_VERSION
from .check import package_version
from .dataset import Item, missing_class_names, scan_class_images, scan_instances
from .errors import TrainerError
from .families import Family, family_for
from .lr import make_lambda
from .models import (
    TEXT_LORA_TARGETS,
    UNET_LORA_TARGETS,
    UNET_LORA_TARGETS_MLP,
    Components,
    add_lora,
    attention_backends,
    check_lora_targets,
    encode_text,
    load_components,
    load_image,
    sdxl_time_ids,
    token_ids,
)
from .distributed import Collective, World, rank_seed, reseed_after_world_change, rng_file, stop_with_launcher, world_from_env
from .order import DataOrder
from .progress import Emitter, Throughput, log
from .signals import StopSignals
from .spec import Spec, Stage, changed_fields, fingerprint, is_flow, stages_of, total_steps, training_fields
from .speed import LossReader, StepGraph, compile_mode, compiled, configure_backends, graph_blockers, log_speed_plan
from .state import Candidate, load_candidate, read_state_json, relative_state_path, select_latest, state_path


#: Eager steps at the start of a stage before its CUDA graph is captured (the first compiles
#: and creates the optimizer state; PyTorch's graph documentation asks for warm-up steps).
GRAPH_WARMUP_STEPS = 2

Batch = Dict[str, torch.Tensor]


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Gives each loaded optimizer state tensor its parameter's memory layout.

    safetensors stores row-major bytes, so a moment of a channels-last convolution weight comes
    back contiguous, and the fused AdamW kernel refuses parameters and moments of different
    layouts. Shapes are unchanged; only the strides are made equal to the parameter's.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for k, v in list(state.items()):
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


@dataclass
class Example:
    """One image ready for training: cached latent posterior or pixels, caption, SDXL time ids
    (a list, and the same as a float32 tensor on the training device)."""

    item: Item
    mean: Optional[torch.Tensor]
    std: Optional[torch.Tensor]
    time_ids: List[float]
    time_ids_t: Optional[torch.Tensor] = None


class Trainer:
    """Runs one ``train`` command.

    :param spec: the validated spec (defaults filled).
    :param work: absolute work directory.
    :param resume: ``auto``, ``none`` or a state folder path.
    :param device: ``cuda``, ``cpu``, ``mps`` or None (cuda when available).
    :param emitter: progress event writer.
    :param signals: the installed stop-signal handlers.
    """

    def __init__(self, spec: Spec, work: str, resume: str, device: Optional[str], emitter: Emitter, signals: StopSignals) -> None:
        self.spec = spec
        self.work = work
        self.resume = resume
        self.device_arg = device
        self.emitter = emitter
        self.signals = signals
        self.step: Optional[int] = None
        self.lora = spec["mode"]["type"] == "lora"
        self.stages: List[Stage] = stages_of(spec)
        self.total = total_steps(spec)
        self._last_saved: Optional[Tuple[int, str]] = None
        self.world = World()
        #: The process group's operations; None in a single-process run (every use is guarded).
        self.dist: Optional[Collective] = None
        self.perf: Dict[str, Any] = dict(spec.get("performance") or {})
        #: Prompt embeddings of the flow families (every prompt, computed once before training).
        self.flow_embeds: Dict[str, Dict[str, torch.Tensor]] = {}
        self._t0 = time.monotonic()

    # ----------------------------------------------------------------- setup

    def _pick_device(self) -> torch.device:
        want = self.device_arg
        if want is None:
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise TrainerError("environment", "--device cuda was asked for but torch sees no CUDA GPU (check the driver and that torch was installed with CUDA)")
        if want == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise TrainerError("environment", "--device mps was asked for but MPS is not available")
        if self.world.distributed:
            if want == "mps":
                raise TrainerError("environment", "several trainer processes need CUDA GPUs (or the CPU for tests), not MPS")
            if want == "cuda":
                count = torch.cuda.device_count()
                if self.world.local_rank >= count:
                    raise TrainerError("environment", f"process {self.world.rank} has LOCAL_RANK {self.world.local_rank} but this host has {count} GPU(s); launch at most {count} processes")
                torch.cuda.set_device(self.world.local_rank)
                return torch.device("cuda", self.world.local_rank)
        return torch.device(want)

    def _pick_precision(self) -> None:
        mp = self.spec["mixedPrecision"]
        dev = self.device.type
        if mp != "no" and dev == "cpu":
            log(f"warning: mixedPrecision {mp} is not used on the CPU; training in float32")
            mp = "no"
        if mp == "bf16" and dev == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainerError("spec", "mixedPrecision is bf16 but this GPU does not support bfloat16; use fp16")
        if mp == "no" and dev == "cuda" and is_flow(self.spec):
            log("warning: mixedPrecision no keeps FLUX.1/SD 3.5 weights in float32 (twice the memory of bf16)")
        self.precision = mp
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler("cuda") if mp == "fp16" and dev == "cuda" else None

    def autocast(self) -> Any:
        """Autocast context for the precision in use (a no-op for float32). Its weight-cast cache
        is off: PyTorch requires that for CUDA graph capture, and a training forward uses each
        weight once anyway."""
        if self.precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.weight_dtype, cache_enabled=False)

    def _find_resume(self) -> Optional[Candidate]:
        if self.resume == "none":
            return None
        if self.resume == "auto":
            cand = select_latest(self.work)
        else:
            cand, reason = load_candidate(os.path.abspath(self.resume))
            if cand is None:
                raise TrainerError("data", f"--resume {self.resume} is not a usable resume state: {reason}")
        if cand is None:
            return None
        data = cand.data
        if data["spec_sha256"] != fingerprint(self.spec):
            changed = changed_fields(data.get("spec_fields") or {}, training_fields(self.spec))
            raise TrainerError(
                "spec",
                f"the resume state {relative_state_path(cand.step)} was saved with different training settings"
                f" ({', '.join(changed) or 'unknown fields'} changed); only the last stage's step count may change on resume"
                " (start a new run, or --resume none)",
            )
        if cand.step > self.total:
            raise TrainerError("spec", f"the resume state is at step {cand.step} but the spec has only {self.total} steps; a run can be extended, not shortened")
        return cand

    def _find_resume_shared(self) -> Optional[Candidate]:
        """:meth:`_find_resume` on rank 0 (verifying a state hashes every file: once is enough),
        its choice or error broadcast to the other ranks, which read only ``state.json``."""
        if self.dist is None:
            return self._find_resume()
        cand: Optional[Candidate] = None
        payload: Any = None
        if self.world.is_main:
            try:
                cand = self._find_resume()
                payload = ("ok", cand.step if cand else None)
            except TrainerError as e:
                payload = ("error", e.kind, e.message)
        payload = self.dist.broadcast_object(payload)
        if payload[0] == "error":
            raise TrainerError(payload[1], payload[2])
        if self.world.is_main or payload[1] is None:
            return cand
        folder = state_path(self.work, int(payload[1]))
        return Candidate(step=int(payload[1]), path=folder, data=read_state_json(folder))

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Trains to the end (exit 0) or until a stop signal (exit 75 after saving)."""
        self.world = world_from_env()
        if self.world.distributed:
            # A launcher killed by SIGUSR1/SIGKILL must not leave the ranks training as orphans.
            stop_with_launcher()
        self.device = self._pick_device()
        if self.world.distributed:
            self.dist = Collective(self.world, self.device)
            self.dist.init()
            log(f"process {self.world.rank} of {self.world.size} ({self.dist.backend}); global batch = batchSize x gradientAccumulation x {self.world.size}")
        code = self._run()
        if self.dist is not None:
            # Only after a normal end (0 or 75): on an error the launcher tears the group down.
            self.dist.close()
        return code

    def _run(self) -> int:
        self._pick_precision()
        cand = self._find_resume_shared()
        self.start_step = cand.step if cand else 0
        self.step = self.start_step
        log(f"device {self.device}, precision {self.precision}; " + (f"resuming from {relative_state_path(cand.step)}" if cand else "starting at step 0"))

        configure_backends(self.device, self.perf)
        if is_flow(self.spec):
            comps = self._load_flow()
        else:
            comps = load_components(self.spec)
        self.comps = comps
        self.family: Family = family_for(comps, self.spec, self.device, self.weight_dtype)
        self.signals.check_early()
        log(f"loaded {self.spec['base']['model']} ({comps.arch}, {comps.prediction_type}) in {time.monotonic() - self._t0:.1f} s since start; attention: {', '.join(attention_backends(comps.denoiser))}")
        self._plan_modules()
        self._place_modules(for_generation=True)
        self.emitter.emit(
            "started",
            protocol=PROTOCOL_VERSION,
            session=self.spec["session"],
            run=self.spec["run"],
            total_steps=self.total,
            start_step=self.start_step,
            resumed_from=relative_state_path(cand.step) if cand else None,
            stages=[s.to_event() for s in self.stages],
            device=str(self.device),
            precision=self.precision,
            versions={n: package_version(n) for n in ("torch", "diffusers", "transformers", "accelerate", "peft", "bitsandbytes")},
        )

        self.prior = self.spec.get("prior") if (self.spec.get("prior") or {}).get("enabled") else None
        if self.prior:
            self._generate_class_images()

        # Fresh runs start every RNG from the seed here, so LoRA init is reproducible too.
        seed = int(self.spec["seed"])
        random.seed(seed)
        import numpy as np

        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self._place_modules(for_generation=False)
        if cand:
            self._load_weights(cand)

        self._prepare_data()
        self.signals.check_early()
        if self.device.type == "cuda":
            # Step events report the training peak; loading (text encoders, VAE at full size) is logged here.
            log(f"peak GPU memory while loading: {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB")
            torch.cuda.reset_peak_memory_stats(self.device)
        log(f"ready to train {time.monotonic() - self._t0:.1f} s after start")
        return self._train(cand)

    # ---------------------------------------------------------- flow families

    def _flow_prompts(self) -> List[str]:
        """Every prompt a flow-family run encodes: instance captions, the class prompt, sample
        prompts and the negative prompt (SD 3.5 guidance; the empty prompt when none)."""
        data = self.spec["data"]
        listing = scan_instances(os.path.join(self.work, data["instanceDir"]), data["instancePrompt"], data["captions"])
        prompts = {it.caption for it in listing.items}
        prior = self.spec.get("prior") or {}
        if prior.get("enabled"):
            prompts.add(prior["classPrompt"])
        s = self.spec["samples"]
        prompts.update(s["prompts"])
        if self.spec["base"]["architecture"] == "sd3":
            prompts.add(s.get("negativePrompt") or "")
        return sorted(prompts)

    def _load_flow(self) -> Components:
        """Loads a FLUX.1/SD 3.5 model and the embeddings of every prompt, from the cache
        (``cache/text-<key>.safetensors``, which lets a resumed run skip T5) or by encoding them
        with the text encoders, which are then freed."""
        from .flow_models import embedding_cache_key, encode_prompts, load_embeddings, load_flow_components, max_sequence_length, save_embeddings

        prompts = self._flow_prompts()
        t5_len = max_sequence_length(self.spec)
        wd = self.weight_dtype
        path = os.path.join(self.work, "cache", f"text-{embedding_cache_key(self.spec, prompts, t5_len, wd)}.safetensors")
        cached = load_embeddings(path, self.device)
        have = cached is not None and all(p in cached for p in prompts)
        full = self.spec["mode"]["type"] == "full"
        comps = load_flow_components(self.spec, wd, with_text_encoders=not have, denoiser_dtype=torch.float32 if full else wd)
        if have:
            assert cached is not None
            self.flow_embeds = cached
            log(f"text encoders not loaded: embeddings of {len(prompts)} prompts from {os.path.relpath(path, self.work)}")
            return comps
        started = time.monotonic()
        encoders = [te.to(self.device) for te in comps.text_encoders]
        embeds: Dict[str, Dict[str, torch.Tensor]] = {}
        with torch.no_grad(), self.autocast():
            for i in range(0, len(prompts), 8):
                chunk = prompts[i : i + 8]
                out = encode_prompts(comps, chunk, self.device, t5_len)
                for j, p in enumerate(chunk):
                    embeds[p] = {k: v[j].detach().to(wd) for k, v in out.items()}
                self.signals.check_early()
        del encoders
        comps.text_encoders = [None] * len(comps.text_encoders)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.world.is_main:
            save_embeddings(path, embeds)
        self.flow_embeds = embeds
        log(f"encoded {len(prompts)} prompts (T5 {t5_len} tokens) in {time.monotonic() - started:.1f} s; text encoders freed")
        return comps

    # -------------------------------------------------------------- modules

    def _plan_modules(self) -> None:
        """Which components are trained in some stage (full) or carry adapters (LoRA)."""
        comps = self.comps
        self.trains_denoiser = any(s.denoiser_lr > 0 for s in self.stages)
        self.trains_te = any(s.text_encoder_lr > 0 for s in self.stages)
        self.components: Dict[str, torch.nn.Module] = {comps.denoiser_name: comps.denoiser}
        for name, te in zip(comps.te_names, comps.text_encoders):
            if te is not None:
                self.components[name] = te
        ever = [comps.denoiser_name] if self.trains_denoiser else []
        if self.trains_te:
            ever += comps.te_names
        self.ever_trained = ever

    def _place_modules(self, for_generation: bool) -> None:
        """Moves modules to the device in their dtypes; on the second call adds LoRA adapters and
        gradient checkpointing. Trained-ever modules stay float32; the rest use the weight dtype
        (the SDXL VAE stays float32 in fp16 runs: it overflows in half precision)."""
        comps = self.comps
        wd = self.weight_dtype
        vae_dtype = torch.float32 if (comps.is_sdxl and wd == torch.float16 and not self.spec["base"].get("vae")) else wd
        if comps.is_flow:
            # 84 M parameters, used once per image and for samples: float32 costs nothing.
            vae_dtype = torch.float32
        if for_generation:
            comps.vae.to(self.device, dtype=vae_dtype)
            for name, m in self.components.items():
                keep_fp32 = name in self.ever_trained and not self.lora
                m.to(self.device, dtype=torch.float32 if keep_fp32 else wd)
            if self._channels_last():
                comps.denoiser.to(memory_format=torch.channels_last)
            return
        if self.lora:
            mode = self.spec["mode"]
            check_lora_targets(comps.denoiser)
            if self.trains_denoiser:
                add_lora(comps.denoiser, int(mode["rank"]), float(mode["alpha"]), float(mode.get("dropout", 0)), self._lora_targets())
            if self.trains_te:
                for te in comps.text_encoders:
                    add_lora(te, int(mode["rank"]), float(mode["alpha"]), float(mode.get("dropout", 0)), TEXT_LORA_TARGETS)
        if self.spec["gradientCheckpointing"]:
            comps.denoiser.enable_gradient_checkpointing()
            for te in comps.text_encoders:
                if self.trains_te and te is not None:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for m in self.components.values():
            m.requires_grad_(False)

    def _lora_targets(self) -> Any:
        """``mode.targets`` of a LoRA run as peft ``target_modules`` for this family (default:
        ``attention`` for the UNet, ``attention-mlp`` for FLUX.1 and SD 3.5)."""
        comps = self.comps
        which = self.spec["mode"].get("targets") or ("attention-mlp" if comps.is_flow else "attention")
        if comps.is_flow:
            from .flow_models import lora_targets

            return lora_targets(comps.arch, which)
        return UNET_LORA_TARGETS_MLP if which == "attention-mlp" else UNET_LORA_TARGETS

    def _channels_last(self) -> bool:
        """Channels-last layout for a UNet on CUDA (``performance.channelsLast``)."""
        return bool(self.perf.get("channelsLast", True)) and self.device.type == "cuda" and not self.comps.is_flow

    def _trainable_params(self, module: torch.nn.Module) -> List[torch.nn.Parameter]:
        if self.lora:
            return [p for n, p in module.named_parameters() if "lora_" in n]
        return list(module.parameters())

    def _saved_modules(self, stage_index: int) -> Dict[str, torch.nn.Module]:
        """Components whose weights a resume state holds: for LoRA every adapter, for full
        fine-tuning the components trained up to and including ``stage_index``."""
        names: List[str] = []
        den = self.comps.denoiser_name
        for st in self.stages[: stage_index + 1] if not self.lora else self.stages:
            if st.denoiser_lr > 0 and den not in names:
                names.append(den)
            if st.text_encoder_lr > 0:
                names += [n for n in self.comps.te_names if n not in names]
        return {n: self.components[n] for n in names}

    def _load_weights(self, cand: Candidate) -> None:
        from .checkpoint import load_trainable

        try:
            found = load_trainable(os.path.join(cand.path, "trainable.safetensors"), dict(self.components), self.lora, self.device)
        except (ValueError, RuntimeError) as e:
            raise TrainerError("data", f"the weights in {relative_state_path(cand.step)} do not fit this model: {e}") from e
        log(f"loaded trained weights of {', '.join(found) or 'nothing'} from {relative_state_path(cand.step)}")

    # ------------------------------------------------------------------ data

    def _generate_class_images(self) -> None:
        from .sampling import renderer, rendering, save_png

        prior = self.prior
        rel = prior["classDir"]
        folder = os.path.join(self.work, rel)
        os.makedirs(folder, exist_ok=True)
        total = int(prior["classImages"])
        names = missing_class_names(folder, total)
        if not names:
            return
        done = total - len(names)
        if self.dist is not None:
            # Every rank listed the same missing names before any rank writes one; each renders
            # its share (same seeds per name as a single process, so the same images).
            self.dist.barrier()
            names = names[self.world.rank :: self.world.size]
        log(f"generating {len(names)} class images for {prior['classPrompt']!r} into {rel}/")
        self.emitter.emit("class_images", done=done, total=total, dir=rel)
        render = renderer(self.comps, self.flow_embeds)
        batch = 4 if self.device.type == "cuda" else 1
        seed = int(self.spec["seed"])
        # The guidance of each family's reference pipelines: CFG 7.5 (SD), embedded 3.5 (FLUX.1 [dev]).
        guidance = 3.5 if self.comps.arch == "flux" else 7.5
        with rendering(self.comps, self.device, self.autocast):
            for i in range(0, len(names), batch):
                chunk = names[i : i + batch]
                seeds = [seed * 100003 + int(n.split("-")[1].split(".")[0]) for n in chunk]
                images = render([prior["classPrompt"]] * len(chunk), seeds, int(self.spec["resolution"]), int(prior["generationSteps"]), guidance, None)
                with self.signals.deferred():
                    for name, image in zip(chunk, images):
                        save_png(image, os.path.join(folder, name))
                if self.dist is not None:
                    # Rank 0 reports what all ranks have written so far (files appear atomically).
                    done = total - len(missing_class_names(folder, total))
                else:
                    done += len(chunk)
                self.emitter.emit("class_images", done=done, total=total, dir=rel)
        if self.dist is not None:
            self.dist.barrier()
            self.emitter.emit("class_images", done=total - len(missing_class_names(folder, total)), total=total, dir=rel)

    def _cache_key(self, items: List[Item]) -> str:
        h = hashlib.sha256()
        h.update(repr((self.spec["base"], self.spec["resolution"])).encode())
        for it in items:
            st = os.stat(it.path)
            h.update(f"{it.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:24]

    def _examples(self, items: List[Item], kind: str) -> List[Example]:
        """Decodes every image once (bad ones are reported and left out) and, with
        ``cacheLatents``, encodes it with the VAE: the posterior mean and std are kept, and a
        latent is drawn from them at each use (Kingma & Welling 2014 reparameterisation)."""
        res = int(self.spec["resolution"])
        cache = bool(self.spec["cacheLatents"])
        path = os.path.join(self.work, "cache", f"latents-{kind}-{self._cache_key(items)}.pt") if cache else None
        if path and os.path.exists(path):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                out = [Example(items[i], m.to(self.device), s.to(self.device), t, self._time_ids(t)) for i, m, s, t in zip(data["index"], data["mean"], data["std"], data["time_ids"])]
                log(f"using cached latents of {len(out)} {kind} images ({os.path.relpath(path, self.work)})")
                return out
            except Exception as e:  # a damaged cache is only slower
                log(f"warning: ignoring latent cache {path}: {e}")
        out: List[Example] = []
        vae = self.comps.vae
        for i, it in enumerate(items):
            try:
                pixels, orig, crop = load_image(it.path, res)
            except Exception as e:
                log(f"warning: leaving out {kind} image {it.name}: it cannot be decoded ({e})")
                continue
            tids = sdxl_time_ids(orig, crop, (res, res))
            ex = Example(it, None, None, tids, self._time_ids(tids))
            if cache:
                with torch.no_grad():
                    dist = vae.encode(pixels[None].to(self.device, dtype=vae.dtype)).latent_dist
                ex.mean, ex.std = dist.mean[0].float(), dist.std[0].float()
            out.append(ex)
            if (i + 1) % 25 == 0:
                self.signals.check_early()
        if not out:
            raise TrainerError("data", f"none of the {len(items)} {kind} images could be decoded")
        if path and self.world.is_main:  # every rank encodes; one writes the shared cache file
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            torch.save(
                {"index": [items.index(e.item) for e in out], "mean": [e.mean.cpu() for e in out], "std": [e.std.cpu() for e in out], "time_ids": [e.time_ids for e in out]},
                tmp,
            )
            os.replace(tmp, path)
        return out

    def _time_ids(self, values: List[float]) -> torch.Tensor:
        # float32: sizes such as 3023 px are not exact in bf16. Made once, not per step.
        return torch.tensor(values, device=self.device, dtype=torch.float32)

    def _prepare_data(self) -> None:
        data = self.spec["data"]
        listing = scan_instances(os.path.join(self.work, data["instanceDir"]), data["instancePrompt"], data["captions"])
        if self.spec["cacheLatents"] and data["randomFlip"]:
            log("warning: data.randomFlip is ignored with cacheLatents (each image is encoded once)")
        self.instances = self._examples(listing.items, "instance")
        self.classes: List[Example] = []
        if self.prior:
            items = scan_class_images(os.path.join(self.work, self.prior["classDir"]), self.prior["classPrompt"])[: int(self.prior["classImages"])]
            if not items:
                raise TrainerError("data", f"prior preservation is on but {self.prior['classDir']}/ has no class images")
            self.classes = self._examples(items, "class")
        log(f"{len(self.instances)} instance images" + (f", {len(self.classes)} class images" if self.prior else ""))

    def _latents(self, batch: Batch) -> torch.Tensor:
        """Latents (B, C, R/8, R/8) of a batch, ``(z - shift) * scale`` with the VAE's factors;
        with cached latents a fresh draw ``mean + std * eps`` from the posterior."""
        scale, shift = self.comps.latent_scale()
        if "latents" in batch:
            x = batch["latents"]
        else:
            mean, std = batch["mean"], batch["std"]
            x = mean + std * torch.randn_like(mean)
        if shift is not None:
            x = x - shift
        return x * scale

    def _encode_pixels(self, examples: List[Example]) -> torch.Tensor:
        """VAE posterior samples of images decoded now (without ``cacheLatents``), unscaled."""
        pixels = []
        for e in examples:
            p, _, _ = load_image(e.item.path, int(self.spec["resolution"]))
            if self.spec["data"]["randomFlip"] and random.random() < 0.5:
                p = torch.flip(p, dims=[2])
            pixels.append(p)
        vae = self.comps.vae
        with torch.no_grad():
            return vae.encode(torch.stack(pixels).to(self.device, dtype=vae.dtype)).latent_dist.sample().float()

    # --------------------------------------------------------------- stages

    def _configure_stage(self, stage: Stage) -> List[Dict[str, Any]]:
        """Sets requires_grad and train/eval per component; returns the optimizer's param groups."""
        comps = self.comps
        groups: List[Dict[str, Any]] = []
        for m in self.components.values():
            m.requires_grad_(False)
            m.eval()
        if stage.denoiser_lr > 0:
            params = self._trainable_params(comps.denoiser)
            for p in params:
                p.requires_grad_(True)
            comps.denoiser.train()
            groups.append({"params": params, "lr": stage.denoiser_lr})
        if stage.text_encoder_lr > 0:
            params = []
            for te in comps.text_encoders:
                ps = self._trainable_params(te)
                for p in ps:
                    p.requires_grad_(True)
                te.train()
                params += ps
            groups.append({"params": params, "lr": stage.text_encoder_lr})
        if not groups or not any(g["params"] for g in groups):
            raise TrainerError("spec", f"stage {stage.name} has nothing to train")
        return groups

    def _make_optimizer(self, groups: List[Dict[str, Any]], capturable: bool = False) -> torch.optim.Optimizer:
        """AdamW (fused on CUDA; ``capturable`` for a CUDA-graph stage) or bitsandbytes' 8-bit AdamW."""
        o = self.spec["optimizer"]
        betas = (float(o["beta1"]), float(o["beta2"]))
        if o["type"] == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as e:
                raise TrainerError(
                    "environment",
                    "optimizer.type is adamw8bit but bitsandbytes is not installed; run scripts/setup-gpu-host.sh (without --no-8bit) or set optimizer.type to adamw",
                ) from e
            if self.device.type != "cuda":
                raise TrainerError("environment", "optimizer.type adamw8bit needs a CUDA GPU; use adamw on this device")
            return bnb.optim.AdamW8bit(groups, betas=betas, eps=float(o["epsilon"]), weight_decay=float(o["weightDecay"]))
        kwargs: Dict[str, Any] = {}
        # The fused CUDA kernel does the whole update in one launch per parameter group; with
        # capturable its step counter and learning rate live on the device (graph replays).
        if self.device.type == "cuda":
            kwargs["fused"] = True
            if capturable:
                kwargs["capturable"] = True
        return torch.optim.AdamW(groups, betas=betas, eps=float(o["epsilon"]), weight_decay=float(o["weightDecay"]), **kwargs)

    def _precompute_embeddings(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """Text conditioning of every caption (``hidden``, and ``pooled`` for SDXL and the flow
        families), computed once while the text encoders are frozen."""
        if self.comps.is_flow:
            return self.flow_embeds
        captions = sorted({e.item.caption for e in self.instances} | {e.item.caption for e in self.classes})
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        with torch.no_grad(), self.autocast():
            for i in range(0, len(captions), 16):
                chunk = captions[i : i + 16]
                hidden, pooled = encode_text(self.comps, token_ids(self.comps, chunk, self.device))
                for j, c in enumerate(chunk):
                    out[c] = {"hidden": hidden[j].detach()}
                    if pooled is not None:
                        out[c]["pooled"] = pooled[j].detach()
        log(f"text encoder frozen: embeddings of {len(out)} distinct captions computed once")
        return out

    def _next_batch(self, embeds: Optional[Dict[str, Dict[str, torch.Tensor]]]) -> Batch:
        """The host's part of a micro-batch: takes the next examples of the data order and stacks
        their tensors on the device (latent posteriors or fresh latents, text conditioning or
        token ids, SDXL time ids). Queues device copies only; never waits for the GPU."""
        bs = int(self.spec["batchSize"])
        r, w = self.world.rank, self.world.size
        batch = [self.instances[i] for i in self.inst_order.take_shard(bs, r, w)]
        if self.prior:
            batch += [self.classes[i] for i in self.class_order.take_shard(bs, r, w)]
        out: Batch = {}
        if batch[0].mean is not None:
            out["mean"] = torch.stack([e.mean for e in batch])
            out["std"] = torch.stack([e.std for e in batch])
        else:
            out["latents"] = self._encode_pixels(batch)
        captions = [e.item.caption for e in batch]
        if embeds is not None:
            out["hidden"] = torch.stack([embeds[c]["hidden"] for c in captions])
            if "pooled" in embeds[captions[0]]:
                out["pooled"] = torch.stack([embeds[c]["pooled"] for c in captions])
        else:
            for i, ids in enumerate(token_ids(self.comps, captions, self.device)):
                out[f"ids{i}"] = ids
        if self.comps.is_sdxl:
            out["time_ids"] = torch.stack([e.time_ids_t for e in batch])
        return out

    def _batch_loss(self, batch: Batch) -> torch.Tensor:
        """The device's part of a micro-batch: the loss (prior term included), a 0-dim tensor."""
        latents = self._latents(batch)
        with self.autocast():
            if "hidden" in batch:
                cond = {k: batch[k] for k in ("hidden", "pooled", "time_ids") if k in batch}
            else:
                ids = [batch[f"ids{i}"] for i in range(len(self.comps.tokenizers))]
                hidden, pooled = encode_text(self.comps, ids)
                cond = {"hidden": hidden}
                if pooled is not None:
                    cond["pooled"] = pooled
                if "time_ids" in batch:
                    cond["time_ids"] = batch["time_ids"]
            losses = self.family.per_sample_loss(self.denoiser_fn, latents, cond)
        if self.prior:
            inst, prior = losses.chunk(2)
            # Ruiz et al. 2023, eq. 2: instance loss + lambda * prior-preservation loss.
            return inst.mean() + float(self.prior["lossWeight"]) * prior.mean()
        return losses.mean()

    def _step_compute(self, batches: List[Batch], optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter]) -> torch.Tensor:
        """One optimizer step on prepared micro-batches, all on the device: forward and backward
        of each, gradient average over processes, unscale (fp16), clip, update. This is what a
        CUDA graph captures. Returns the mean loss as a 0-dim device tensor."""
        accum = len(batches)
        total: Optional[torch.Tensor] = None
        for b in batches:
            loss = self._batch_loss(b)
            scaled = loss / accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.dist is not None:
            # Mean of the ranks' (still loss-scaled) gradients: every rank then unscales, clips
            # and steps on identical gradients, so the weights stay identical without a broadcast.
            self.dist.average_gradients(params)
        max_norm = float(self.spec["optimizer"]["maxGradNorm"])
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        assert total is not None
        return total / accum

    # ---------------------------------------------------------------- train

    def _train(self, cand: Optional[Candidate]) -> int:
        from .checkpoint import load_optimizer_state, load_torch_file

        seed = int(self.spec["seed"])
        mode = compile_mode(self.perf, self.device, self.total - self.step)
        self.compile_as = mode
        self._compile_ok = False
        self.denoiser_fn = compiled(self.comps.denoiser, mode) if mode else self.comps.denoiser
        inst_epoch, inst_pos, cls_epoch, cls_pos = 0, 0, 0, 0
        if cand:
            d = cand.data
            inst_epoch, inst_pos = int(d["epoch"]), int(d["position"])
            cls_epoch, cls_pos = int(d.get("class_epoch", 0)), int(d.get("class_position", 0))
            if d.get("instance_count") not in (None, len(self.instances)) or d.get("class_count") not in (None, len(self.classes)):
                raise TrainerError("data", f"the dataset changed since {relative_state_path(cand.step)} ({d.get('instance_count')} instance / {d.get('class_count')} class images then, {len(self.instances)} / {len(self.classes)} now); the data order cannot continue")
        self.inst_order = DataOrder(len(self.instances), seed, 0, inst_epoch, inst_pos)
        self.class_order = DataOrder(len(self.classes), seed, 1, cls_epoch, cls_pos) if self.classes else None

        self.throughput = Throughput()
        if cand:
            # A signal before the first resumed step names this state instead of rewriting it.
            self._last_saved = (cand.step, relative_state_path(cand.step))
        self.signals.start_training()
        rng_pending = cand is not None
        if cand is None and self.dist is not None:
            # Same initial weights on every rank (seeded above), then one random stream per rank
            # (noise, timesteps, latent draws differ between the ranks' samples).
            self._seed_all(rank_seed(seed, self.world.rank))
        if self.step >= self.total:
            log("no steps left to train; writing the model")
        for si, stage in enumerate(self.stages):
            if self.step >= stage.end:
                continue
            groups = self._configure_stage(stage)
            params = [p for g in groups for p in g["params"]]
            use_graph = self._graph_plan(stage)
            optimizer = self._make_optimizer(groups, capturable=use_graph)
            lam = make_lambda(self.spec["lrScheduler"]["type"], stage.steps, int(self.spec["lrScheduler"]["warmupSteps"]))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
            stage_step = self.step - stage.start
            if cand and stage_step > 0 and cand.data["stage"] == stage.name and cand.step == self.step:
                opt_state = load_optimizer_state(cand.path, self.device)
                optimizer.load_state_dict(opt_state["optimizer"])
                match_param_layout(optimizer)
                if use_graph:
                    # A state saved by an eager stage says capturable False; this stage replays a graph.
                    for g in optimizer.param_groups:
                        g["capturable"] = True
                if self.scaler is not None and opt_state.get("grad_scaler"):
                    self.scaler.load_state_dict(opt_state["grad_scaler"])
                scheduler.load_state_dict(load_torch_file(cand.path, "scheduler.pt"))
                if scheduler.last_epoch != stage_step:
                    raise TrainerError("data", f"{relative_state_path(cand.step)}: the LR scheduler is at stage step {scheduler.last_epoch}, expected {stage_step}")
                # Re-evaluate with this spec's stage length: equal to the saved LR unless the
                # stage was extended, where the longer schedule applies from here on.
                for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
                    g["lr"] = base * lam(scheduler.last_epoch)
                scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
            elif stage_step > 0:
                raise TrainerError("data", f"cannot resume inside stage {stage.name} at step {self.step} without its optimizer state")
            embeds = self._precompute_embeddings() if stage.text_encoder_lr == 0 else None
            if self.dist is not None:
                self.dist.broadcast_parameters(params)
            if rng_pending:
                self._restore_rng(cand)
                rng_pending = False
            self.throughput.restart()
            result = self._run_stage(si, stage, optimizer, scheduler, params, embeds, use_graph)
            if result is not None:
                return result
        return self._finish(cand)

    def _graph_plan(self, stage: Stage) -> bool:
        """Whether this stage replays a CUDA graph per step (``performance.cudaGraph``).

        :raises TrainerError: ``spec`` when ``cudaGraph`` is ``on`` but the stage cannot be captured.
        """
        want = self.perf.get("cudaGraph", "auto")
        reasons = graph_blockers(self.spec, self.device, self.dist is not None, stage.text_encoder_lr > 0)
        if want == "on" and reasons:
            raise TrainerError("spec", f"performance.cudaGraph is on but stage {stage.name} cannot be captured: {'; '.join(reasons)}; set it to auto")
        use = want != "off" and not reasons
        log_speed_plan(self.compile_as, use, reasons if want != "off" else ["performance.cudaGraph is off"], self._channels_last())
        return use

    @staticmethod
    def _seed_all(value: int) -> None:
        import numpy as np

        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)

    def _restore_rng(self, cand: Candidate) -> None:
        """This rank's saved RNG streams; new deterministic streams when the state was saved by
        another number of processes (docs/trainer.md, "Several GPUs")."""
        from .checkpoint import load_torch_file, restore_rng

        saved_world = int(cand.data.get("world_size", 1))
        if saved_world == self.world.size:
            name = rng_file(self.world.rank)
            if not os.path.isfile(os.path.join(cand.path, name)):
                raise TrainerError("data", f"{relative_state_path(cand.step)} has no {name} for process {self.world.rank} although it was saved by {saved_world} processes")
            restore_rng(load_torch_file(cand.path, name))
            return
        log(f"warning: {relative_state_path(cand.step)} was saved by {saved_world} process(es), this run has {self.world.size}: the data order continues at the same position, the random streams are reseeded (reproducible, but not the run an unchanged world would have given)")
        self._seed_all(reseed_after_world_change(int(self.spec["seed"]), cand.step, self.world.rank, self.world.size))

    def _meta(self, stage: Stage) -> Dict[str, Any]:
        ie, ip = self.inst_order.cursor()
        ce, cp = self.class_order.cursor() if self.class_order else (0, 0)
        return {
            "step": self.step,
            "stage": stage.name,
            "stage_step": self.step - stage.start,
            "epoch": ie,
            "position": ip,
            "class_epoch": ce,
            "class_position": cp,
            "instance_count": len(self.instances),
            "class_count": len(self.classes),
            "seed": int(self.spec["seed"]),
            "spec_sha256": fingerprint(self.spec),
            "spec_fields": training_fields(self.spec),
            "total_steps": self.total,
            "mode": self.spec["mode"]["type"],
            "architecture": self.comps.arch,
            # Only multi-process states say so: single-process states stay byte-for-byte as before.
            **({"world_size": self.world.size} if self.world.distributed else {}),
        }

    def _save(self, si: int, stage: Stage, optimizer: Any, scheduler: Any, reason: str) -> str:
        from .checkpoint import save_resume_state

        started = time.monotonic()
        with self.signals.saving():
            if self.dist is None:
                _folder, nbytes = save_resume_state(self.work, self.step, self._meta(stage), self._saved_modules(si), self.lora, optimizer, scheduler, self.scaler)
            else:
                nbytes = self._save_distributed(si, stage, optimizer, scheduler)
        rel = relative_state_path(self.step)
        self._last_saved = (self.step, rel)
        log(f"saved {rel} ({nbytes / 2**30:.2f} GiB) in {time.monotonic() - started:.2f} s")
        self.emitter.emit("resume_state", step=self.step, path=rel, reason=reason, bytes=nbytes)
        self.throughput.restart()
        return rel

    def _save_distributed(self, si: int, stage: Stage, optimizer: Any, scheduler: Any) -> int:
        """Every rank's part of a state: rank 0 empties the folder, then writes the shared files
        and its ``rng.pt`` while each other rank writes ``rng-<rank>.pt``; after a barrier rank 0
        writes ``COMPLETE`` (listing all of them) last, and a final barrier keeps every rank here
        until the state is complete. Returns the state's bytes (0 on other ranks)."""
        from .checkpoint import write_rank_rng, write_shared_files
        from .state import begin_state, finalize_state

        assert self.dist is not None
        cuda_index = self.device.index if self.device.type == "cuda" else None
        folder = state_path(self.work, self.step)
        if self.world.is_main:
            begin_state(self.work, self.step)
        self.dist.barrier()
        known = None
        if self.world.is_main:
            known = write_shared_files(folder, self._meta(stage), self._saved_modules(si), self.lora, optimizer, scheduler, self.scaler, cuda_index)
        else:
            write_rank_rng(folder, rng_file(self.world.rank), cuda_index)
        self.dist.barrier()
        nbytes = finalize_state(folder, self.step, known) if self.world.is_main else 0
        self.dist.barrier()
        return nbytes

    def _agreed_stop(self) -> Optional[str]:
        """The stop signal every rank acts on now (a collective with several processes)."""
        if self.dist is None:
            return self.signals.requested
        agreed = self.dist.agree_stop(self.signals.requested)
        if agreed is not None and self.signals.requested is None:
            self.signals.requested = agreed
        return agreed

    def _run_stage(self, si: int, stage: Stage, optimizer: Any, scheduler: Any, params: List[torch.nn.Parameter], embeds: Optional[Dict[str, Any]], use_graph: bool = False) -> Optional[int]:
        """Runs a stage's steps. With ``use_graph`` the stage's work runs on a side stream, the
        first :data:`GRAPH_WARMUP_STEPS` steps eagerly, then one captured CUDA graph per step."""
        stream = torch.cuda.Stream(self.device) if use_graph else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        reader = LossReader(self.device, int(self.perf.get("maxInFlightSteps", 2)), self._report_step)
        self.graph: Optional[StepGraph] = StepGraph(lambda b: self._step_compute(b, optimizer, params), optimizer, stream) if use_graph else None
        try:
            with ctx:
                return self._stage_loop(si, stage, optimizer, scheduler, params, embeds, reader)
        finally:
            reader.flush()
            if self.graph is not None:
                self.graph.release()
                self.graph = None
            if stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(stream)

    def _stage_loop(self, si: int, stage: Stage, optimizer: Any, scheduler: Any, params: List[torch.nn.Parameter], embeds: Optional[Dict[str, Any]], reader: LossReader) -> Optional[int]:
        every = int(self.spec["resumeState"]["every"])
        sample_every = int(self.spec["samples"]["every"])
        last_stage = si == len(self.stages) - 1
        accum = int(self.spec["gradientAccumulation"])
        eager_steps = 0
        captured = False
        while self.step < stage.end:
            if self._agreed_stop():
                # A signal during samples or a stage switch: the last finished step is saved.
                reader.flush()
                return self._preempt(si, stage, optimizer, scheduler)
            lr = optimizer.param_groups[0]["lr"]
            lr_te = optimizer.param_groups[1]["lr"] if len(optimizer.param_groups) > 1 else None
            try:
                batches = [self._next_batch(embeds) for _ in range(accum)]
                if self.graph is not None and not captured and eager_steps >= GRAPH_WARMUP_STEPS:
                    captured = self._capture(batches, optimizer)
                if captured:
                    assert self.graph is not None
                    loss = self.graph.replay(batches)
                else:
                    if eager_steps == 0 and self.compile_as and not self._compile_ok:
                        loss = self._first_compiled_step(batches, optimizer, params)
                    else:
                        loss = self._step_compute(batches, optimizer, params)
                    optimizer.zero_grad(set_to_none=True)
                    eager_steps += 1
            except torch.cuda.OutOfMemoryError as e:
                raise TrainerError(
                    "oom",
                    f"out of GPU memory at step {self.step + 1} ({e}); lower batchSize or resolution, turn on gradientCheckpointing, use adamw8bit or LoRA",
                ) from e
            scheduler.step()
            self.step += 1
            stop = self.signals.requested
            fields: Dict[str, Any] = dict(
                step=self.step,
                total=self.total,
                stage=stage.name,
                stage_step=self.step - stage.start,
                stage_total=stage.steps,
                lr=lr,
                epoch=self.inst_order.cursor()[0],
            )
            if lr_te is not None:
                fields["lr_text_encoder"] = lr_te
            if self.dist is not None:
                # One collective per step: the mean loss over ranks for the event, and the stop
                # flag merged so all ranks save and exit after this same step.
                mean, stop = self.dist.step_sync(float(loss.detach()), self.signals.requested)
                if stop is not None and self.signals.requested is None:
                    self.signals.requested = stop
                self._report_step(fields, mean)
            else:
                reader.push(fields, loss)
            if self.step == stage.end:
                reader.flush()
                self.emitter.emit("stage_done", stage=stage.name, step=self.step)
                self._save(si, stage, optimizer, scheduler, "final" if last_stage else "stage_end")
            elif self.step % every == 0:
                reader.flush()
                self._save(si, stage, optimizer, scheduler, "interval")
            if stop:  # the agreed value: a signal arriving after the sync waits for the next step
                reader.flush()
                return self._preempt(si, stage, optimizer, scheduler)
            if sample_every > 0 and self.step % sample_every == 0 and self.step != self.total:
                reader.flush()
                self._samples()
        return None

    def _first_compiled_step(self, batches: List[Batch], optimizer: Any, params: List[torch.nn.Parameter]) -> torch.Tensor:
        """The first step through the compiled denoiser, where compilation happens. When it
        fails with ``compile: auto`` the step is redone eagerly from the same random state (the
        run stays exact), and the run goes on without compiling.

        :raises TrainerError: ``environment`` when an explicitly asked-for compile fails.
        """
        started = time.monotonic()
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        try:
            loss = self._step_compute(batches, optimizer, params)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            if self.perf.get("compile", "auto") != "auto":
                raise TrainerError("environment", f"torch.compile (mode {self.compile_as}) failed: {type(e).__name__}: {str(e)[:500]}; set performance.compile to off") from e
            log(f"warning: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); training without it")
            self.compile_as = None
            self.denoiser_fn = self.comps.denoiser
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                from torch.amp.grad_scaler import _refresh_per_optimizer_state

                self.scaler._per_optimizer_states = collections.defaultdict(_refresh_per_optimizer_state)
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], self.device)
            return self._step_compute(batches, optimizer, params)
        self._compile_ok = True
        log(f"compiled the {self.comps.denoiser_name} (torch.compile mode {self.compile_as}): first step took {time.monotonic() - started:.1f} s")
        return loss

    def _capture(self, batches: List[Batch], optimizer: Any) -> bool:
        """Captures the stage's CUDA graph; on failure (``cudaGraph: auto``) logs why and goes
        on eagerly, with the optimizer and loss scaler as they were before the attempt.

        :raises TrainerError: ``environment`` when ``cudaGraph`` is ``on`` and capture fails.
        """
        assert self.graph is not None
        started = time.monotonic()
        try:
            self.graph.capture(batches)
        except Exception as e:
            if self.perf.get("cudaGraph") == "on":
                raise TrainerError("environment", f"CUDA graph capture failed at step {self.step + 1}: {e}; set performance.cudaGraph to auto or off") from e
            log(f"warning: CUDA graph capture failed at step {self.step + 1} ({type(e).__name__}: {e}); this stage continues without it")
            self.graph = None
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                # Capture ran the scaler's bookkeeping without running its kernels.
                from torch.amp.grad_scaler import _refresh_per_optimizer_state

                self.scaler._per_optimizer_states = collections.defaultdict(_refresh_per_optimizer_state)
            return False
        log(f"captured one training step as a CUDA graph in {time.monotonic() - started:.1f} s (step {self.step + 1})")
        return True

    def _report_step(self, fields: Dict[str, Any], loss: float) -> None:
        """Emits a ``step`` event once its loss is known (speed, ETA and VRAM as of now)."""
        self.throughput.tick()
        vram = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        step = int(fields["step"])
        out = dict(fields)
        out.update(loss=loss, it_per_s=self.throughput.it_per_s(), eta_s=self.throughput.eta_s(self.total - step), vram_gb=round(vram, 3) if vram is not None else None)
        if not math.isfinite(loss):
            log(f"warning: loss is {loss} at step {step}")
        self.emitter.emit("step", **out)

    def _preempt(self, si: int, stage: Stage, optimizer: Any, scheduler: Any) -> int:
        """Saves a state for the current step (unless one was just saved), prints ``preempted``."""
        if self._last_saved and self._last_saved[0] == self.step:
            rel = self._last_saved[1]
        else:
            rel = self._save(si, stage, optimizer, scheduler, "signal")
        self.emitter.emit("preempted", step=self.step, signal=self.signals.requested, state=rel)
        log(f"stopped by {self.signals.requested} after step {self.step}; resume state {rel}")
        return EXIT_PREEMPTED

    # ----------------------------------------------------------- outputs

    def _samples(self) -> None:
        prompts = self.spec["samples"]["prompts"]
        if not prompts or not self.world.is_main:
            # Rank 0 renders; the others go on to the next collective and wait for it there.
            return
        from .sampling import renderer, rendering, save_png

        s = self.spec["samples"]
        folder = os.path.join(self.work, "samples", str(self.step))
        os.makedirs(folder, exist_ok=True)
        render = renderer(self.comps, self.flow_embeds)
        with rendering(self.comps, self.device, self.autocast):
            for i, prompt in enumerate(prompts):
                if self.signals.requested:
                    break
                image = render([prompt], [int(s["seed"]) + i], int(self.spec["resolution"]), int(s["steps"]), float(s["guidanceScale"]), s["negativePrompt"] or None)[0]
                save_png(image, os.path.join(folder, f"{i}.png"))
                self.emitter.emit("sample", step=self.step, index=i, prompt=prompt, path=f"samples/{self.step}/{i}.png")
        self.throughput.restart()

    def _finish(self, cand: Optional[Candidate]) -> int:
        from .export import export_full, export_lora

        if self._last_saved is None and not (cand and cand.step == self.step):
            raise TrainerError("internal", f"reached step {self.step} without a final resume state")
        final_rel = relative_state_path(self.step)
        self._samples()
        if self._agreed_stop():
            self.emitter.emit("preempted", step=self.step, signal=self.signals.requested, state=final_rel)
            return EXIT_PREEMPTED
        with self.signals.saving():
            if not self.world.is_main:
                nbytes = 0
            elif self.lora:
                adapters = {n: m for n, m in self.components.items() if n in self.ever_trained}
                mode = self.spec["mode"]
                nbytes = export_lora(self.work, adapters, int(mode["rank"]), mode["alpha"])
            else:
                trained = {n: self.components[n] for n in self.ever_trained}
                nbytes = export_full(self.work, self.spec, self.comps, trained)
            if self.dist is not None:
                self.dist.barrier()  # no rank exits before the model is written
        self.emitter.emit("done", step=self.step, output="model", format="lora" if self.lora else "diffusers", bytes=nbytes)
        log(f"done: {self.step} steps; model in {os.path.join(self.work, 'model')}")
        return 0
