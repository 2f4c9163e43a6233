"""Writing and reading the tensors of a resume state fast (torch).

A full SD 1.5 resume state is about 10 GiB (UNet float32 + two AdamW moments). Writing it with
``torch.save`` and then reading every file back for its SHA-256 took 24-28 s on an H200 host,
longer than many preemption warnings. Here each file is written by its own thread:

- tensors are copied from the GPU in 64 MiB chunks into two pinned host buffers on the thread's
  own CUDA stream, so the copy of the next chunk overlaps the write of this one;
- each chunk is written with an unbuffered ``write`` and fed to SHA-256 as it goes, so the
  marker's checksums need no second read of the file;
- the files of a state (weights, each optimizer moment) are written concurrently, which keeps
  the disk busy while the GIL-free parts (copies, hashing, writes) of the threads overlap.

The format is safetensors (Hugging Face, https://huggingface.co/docs/safetensors: an 8-byte
little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}`` plus
``__metadata__``, padded with spaces to a multiple of 8, then the raw little-endian bytes with no
holes), so the files load with ``safetensors.safe_open`` straight to the GPU.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Optional, Tuple

import torch

#: Bytes per GPU-to-host copy and write.
CHUNK = 64 << 20

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor on its device (row-major, like safetensors)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def safetensors_header(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> Tuple[bytes, List[str]]:
    """The header bytes (length prefix included) and the tensor order of the data section.

    :raises ValueError: for a dtype safetensors has no name for.
    """
    names = sorted(tensors)
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise ValueError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, names


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
    """Writes ``tensors`` (on any device) as a safetensors file, fsyncs it, and returns its size
    and SHA-256 computed while writing.

    :raises OSError: when the file cannot be written (the disk is full, ...).
    """
    head, names = safetensors_header(tensors, metadata)
    sha = hashlib.sha256()
    size = 0
    cuda = [tensors[n] for n in names if tensors[n].is_cuda]
    stream = torch.cuda.Stream(cuda[0].device) if cuda else None
    if stream is not None:
        # Whatever produced the tensors on the current stream must finish before the copies.
        stream.wait_stream(torch.cuda.current_stream(cuda[0].device))
    free: List[torch.Tensor] = []
    pending: Deque[Tuple[torch.Tensor, int, Any]] = collections.deque()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb", buffering=0, closefd=True) as f:

            def write_view(view: memoryview) -> None:
                nonlocal size
                sha.update(view)
                size += len(view)
                while view:
                    n = f.write(view)
                    if not n:
                        raise OSError(f"short write to {path}")
                    view = view[n:]

            def drain_one() -> None:
                buf, m, event = pending.popleft()
                event.synchronize()
                write_view(memoryview(buf.numpy()).cast("B")[:m])
                free.append(buf)

            write_view(memoryview(head))
            for name in names:
                t = tensors[name]
                if t.numel() == 0:
                    continue
                if not t.is_cuda:
                    data = _flat_bytes(t.to("cpu"))
                    write_view(memoryview(data.numpy()).cast("B"))
                    continue
                assert stream is not None
                with torch.cuda.stream(stream):
                    src = _flat_bytes(t)
                n = src.numel()
                for off in range(0, n, CHUNK):
                    m = min(CHUNK, n - off)
                    if len(pending) == 2:
                        drain_one()
                    buf = free.pop() if free else torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True)
                    with torch.cuda.stream(stream):
                        buf[:m].copy_(src[off : off + m], non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(stream)
                    pending.append((buf, m, event))
                    # The source view must outlive its queued copies.
                    src.record_stream(stream)
            while pending:
                drain_one()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.remove(path)
        except OSError:
            pass
        raise
    return size, sha.hexdigest()


class ParallelWriter:
    """Writes several safetensors files concurrently, one thread each.

    :param workers: threads (files written at once).
    """

    def __init__(self, workers: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="booth-state-writer")
        self.futures: Dict[str, Future] = {}
        self.lock = threading.Lock()

    def add(self, path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
        """Starts writing ``path``."""
        with self.lock:
            self.futures[path] = self.pool.submit(write_safetensors, path, tensors, metadata)

    def wait(self) -> Dict[str, Tuple[int, str]]:
        """Waits for every file; returns ``{path: (size, sha256)}``.

        :raises OSError: the first failure (the other files are still waited for).
        """
        out: Dict[str, Tuple[int, str]] = {}
        error: Optional[BaseException] = None
        for path, fut in self.futures.items():
            try:
                out[path] = fut.result()
            except BaseException as e:  # every thread is joined before raising
                error = error or e
        self.pool.shutdown(wait=True)
        if error is not None:
            raise error
        return out


def read_safetensors(path: str, device: torch.device) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Reads a safetensors file straight onto ``device`` (memory-mapped; no float32 detour).

    :returns: ``(tensors, metadata)``.
    """
    from safetensors import safe_open

    out: Dict[str, torch.Tensor] = {}
    with safe_open(path, framework="pt", device=str(device)) as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            out[key] = f.get_tensor(key)
    return out, meta
