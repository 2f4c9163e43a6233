"""The speed settings of ``spec.performance`` (torch): backends, compilation, reading the loss
without waiting for the GPU, and whole-step CUDA graphs.

Why these: a DreamBooth step at batch 1 is small for a datacenter GPU (an SD 1.5 UNet step at
512 px is a few TFLOP), so the time goes to launching a few thousand kernels and to the host
waiting for the GPU, not to arithmetic. The remedies, in the order they act:

- **No host-device synchronisation inside a step.** Reading the loss with ``float(loss)`` makes
  the host wait for the whole step before it can queue the next one. :class:`LossReader` copies
  each step's loss into pinned host memory asynchronously and reports it when the GPU is done,
  at most ``maxInFlightSteps`` steps later, so the host keeps queuing work while the GPU runs.
- **torch.compile** of the denoiser (:func:`compile_mode`): Inductor fuses elementwise chains
  (group norm + SiLU, attention prologues, residual adds), which removes launches and memory
  round trips. It is not used for the rendering pipelines (their shapes differ).
- **One CUDA graph per step** (:class:`StepGraph`): forward, backward, gradient clipping, the
  fused AdamW update and the fp16 loss-scale update are captured once and replayed with a single
  launch per step (PyTorch's "whole network capture"; the optimizer is ``capturable`` with a
  device-tensor learning rate that the host refreshes before each replay). Shapes are static
  in DreamBooth (one resolution, one batch size), which is what graphs need.
- **TF32 and cuDNN autotuning** for float32 parts and convolutions (:func:`configure_backends`),
  **channels-last** layout for the UNet's convolutions.

None of these changes what a step computes beyond floating-point rounding; the trainer's tests
compare losses with and without each one.
"""

from __future__ import annotations

import collections
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional

import torch

from .progress import log

Batch = Dict[str, torch.Tensor]

#: Below this many steps left, ``compile: auto`` does not compile. Measured on an H200 (SD 1.5 UNet,
#: 512 px, fp16, with the CUDA graph; docs/benchmarks.md): compiling took 167 s and raised the
#: steady rate from 24.9 to 31.6 steps/s, i.e. it saves 8.5 ms per step and pays for itself after
#: about 20 000 steps, far beyond a DreamBooth run (1 000-3 000 steps).
AUTO_COMPILE_MIN_STEPS = 20_000


def configure_backends(device: torch.device, perf: Dict[str, Any]) -> None:
    """TF32 for float32 matmuls/convolutions (``performance.tf32``) and cuDNN autotuning (the
    shapes never change, so the fastest convolution algorithm is chosen once)."""
    if device.type != "cuda":
        return
    tf32 = bool(perf.get("tf32", True))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def compile_mode(perf: Dict[str, Any], device: torch.device, steps_left: int) -> Optional[str]:
    """The ``torch.compile`` mode to use, or None for eager.

    ``auto`` compiles on CUDA with Triton installed when at least :data:`AUTO_COMPILE_MIN_STEPS`
    steps are left (so in practice runs are not compiled: the CUDA graph removes the launch
    overhead without the compile time); an explicit mode compiles on any device (Inductor's C++
    backend on the CPU).
    """
    mode = perf.get("compile", "auto")
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda" or steps_left < AUTO_COMPILE_MIN_STEPS or importlib.util.find_spec("triton") is None:
            return None
        return "default"
    return str(mode)


def compiled(module: torch.nn.Module, mode: str) -> Callable[..., Any]:
    """``torch.compile(module)`` with static shapes (the module's parameters are shared)."""
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)


@dataclass
class _Pending:
    fields: Dict[str, Any]
    host: torch.Tensor
    event: Any


class LossReader:
    """Reports each step's loss once the GPU has computed it, without making the host wait.

    :param device: the training device; on the CPU every loss is read at once.
    :param max_in_flight: steps the host may queue ahead of the GPU (``performance.maxInFlightSteps``).
    :param report: called in step order with the step's fields and its loss as a float.
    """

    def __init__(self, device: torch.device, max_in_flight: int, report: Callable[[Dict[str, Any], float], None]) -> None:
        self.device = device
        self.max_in_flight = max(1, int(max_in_flight))
        self.report = report
        self.queue: Deque[_Pending] = collections.deque()
        self._ring: List[torch.Tensor] = []
        self._next = 0

    def _slot(self) -> torch.Tensor:
        # A few pinned scalars reused in turn: at most max_in_flight + 1 are in use at once.
        if not self._ring:
            self._ring = [torch.empty((), dtype=torch.float32, pin_memory=True) for _ in range(self.max_in_flight + 2)]
        t = self._ring[self._next]
        self._next = (self._next + 1) % len(self._ring)
        return t

    def push(self, fields: Dict[str, Any], loss: torch.Tensor) -> None:
        """Queues one step; reports the finished ones, waiting only when too many are queued."""
        if self.device.type != "cuda":
            self.report(fields, float(loss.detach()))
            return
        host = self._slot()
        host.copy_(loss.detach().float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.queue.append(_Pending(fields, host, event))
        self.poll()
        while len(self.queue) > self.max_in_flight:
            self.queue[0].event.synchronize()
            self._pop()

    def poll(self) -> None:
        """Reports every queued step whose loss has arrived, in order."""
        while self.queue and self.queue[0].event.query():
            self._pop()

    def flush(self) -> None:
        """Waits for and reports every queued step (before a save, samples, a stop or the end)."""
        while self.queue:
            self.queue[0].event.synchronize()
            self._pop()

    def _pop(self) -> None:
        p = self.queue.popleft()
        self.report(p.fields, float(p.host))


def graph_blockers(spec: Dict[str, Any], device: torch.device, distributed: bool, trains_text_encoder: bool) -> List[str]:
    """Why a stage cannot be captured as a CUDA graph (empty when it can)."""
    out: List[str] = []
    if device.type != "cuda":
        out.append("CUDA graphs need a CUDA device")
    if distributed:
        out.append("several processes all-reduce gradients between backward and the update")
    if not spec.get("cacheLatents", True):
        out.append("without cacheLatents each step decodes images on the host")
    if trains_text_encoder:
        out.append("the stage trains a text encoder")
    if spec["optimizer"]["type"] != "adamw":
        out.append(f"optimizer {spec['optimizer']['type']} is not capturable (use adamw)")
    if spec.get("gradientCheckpointing"):
        out.append("gradient checkpointing saves and restores RNG states inside backward")
    return out


class StepGraph:
    """One optimizer step captured as a CUDA graph and replayed.

    ``step_fn(batches)`` must do the whole step on the device (forward and backward of every
    micro-batch, clipping, ``optimizer.step``) and return the loss tensor, with gradients set to
    None before capture (so backward allocates them in the graph's memory and replays overwrite
    them). Capture records without running: :meth:`capture` is followed by :meth:`replay` for the
    same step.

    :param step_fn: the step on static inputs.
    :param optimizer: the optimizer, constructed with ``capturable=True`` (fused AdamW).
    :param stream: the side stream the stage's work runs on (warm-up steps included, as
        PyTorch's graph documentation asks).
    """

    def __init__(self, step_fn: Callable[[List[Batch]], torch.Tensor], optimizer: torch.optim.Optimizer, stream: Any) -> None:
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.stream = stream
        self.graph: Any = None
        self.static: List[Batch] = []
        self.lrs: List[torch.Tensor] = []
        self.loss: Optional[torch.Tensor] = None

    def capture(self, batches: List[Batch]) -> None:
        """Records one step on copies of ``batches`` (same shapes each step).

        :raises RuntimeError: from PyTorch when an operation cannot be captured.
        """
        groups = self.optimizer.param_groups
        self.static = [{k: v.detach().clone() for k, v in b.items()} for b in batches]
        device = self.static[0][next(iter(self.static[0]))].device
        self.lrs = [torch.tensor(float(g["lr"]), device=device, dtype=torch.float32) for g in groups]
        floats = [g["lr"] for g in groups]
        for g, t in zip(groups, self.lrs):
            g["lr"] = t
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self.loss = self.step_fn(self.static)
        finally:
            # The scheduler and the events keep seeing plain floats; the graph reads the tensors.
            for g, f in zip(groups, floats):
                g["lr"] = f
        self.graph = graph

    def replay(self, batches: List[Batch]) -> torch.Tensor:
        """Copies this step's inputs and learning rates into the graph's buffers and runs it.

        :returns: the graph's loss tensor (overwritten by the next replay).
        """
        for static, b in zip(self.static, batches):
            for k, buf in static.items():
                buf.copy_(b[k], non_blocking=True)
        for t, g in zip(self.lrs, self.optimizer.param_groups):
            t.fill_(float(g["lr"]))
        self.graph.replay()
        assert self.loss is not None
        return self.loss

    def release(self) -> None:
        """Frees the graph and its memory pool (at the end of a stage)."""
        self.graph = None
        self.static = []
        self.loss = None


def log_speed_plan(compile_as: Optional[str], graph: bool, reasons: List[str], channels_last: bool) -> None:
    """One log line naming what speeds this stage up and why a graph is not used."""
    parts = [f"compile {compile_as}" if compile_as else "eager (no compile)"]
    parts.append("CUDA graph per step" if graph else "no CUDA graph" + (f" ({'; '.join(reasons)})" if reasons else ""))
    if channels_last:
        parts.append("channels-last")
    log("speed: " + ", ".join(parts))
