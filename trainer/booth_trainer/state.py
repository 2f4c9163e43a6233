"""Resume-state bookkeeping: folder layout, the ``COMPLETE`` marker, verification, selection.

A resume state is ``WORK/state/<step>/`` (decimal step, no padding) holding ``state.json``,
``trainable.safetensors``, ``optimizer.pt``, ``scheduler.pt`` and ``rng.pt`` (written by
:mod:`.checkpoint`), and last of all ``COMPLETE``: JSON ``{"step": k, "files": {name: {"size",
"sha256"}}}`` for every other file. A folder without a valid ``COMPLETE``, or whose files do not
match it, is not a resume state; :func:`select_latest` skips it (with a warning) and falls back
to the previous one. Writes go through a temporary name and ``os.replace`` plus ``fsync`` so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, TextIO, Tuple

MARKER = "COMPLETE"
STATE_JSON = "state.json"
#: Files every resume state of this trainer has (besides ``COMPLETE``).
REQUIRED_FILES = (STATE_JSON, "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt")
#: Format version inside ``state.json``: 2 moves the optimizer's moments out of ``optimizer.pt``
#: into ``optimizer-<name>.safetensors`` (:mod:`.checkpoint`); format 1 states still load.
STATE_FORMAT = 2
#: State formats this trainer reads.
READABLE_FORMATS = (1, 2)

_STEP_NAME = re.compile(r"^(0|[1-9][0-9]*)$")


def state_path(work: str, step: int) -> str:
    """``WORK/state/<step>``."""
    return os.path.join(work, "state", str(step))


def relative_state_path(step: int) -> str:
    """The path events use: ``state/<step>``."""
    return f"state/{step}"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` through ``path.tmp`` + fsync + rename."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON through a temporary file."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def begin_state(work: str, step: int) -> str:
    """Prepares an empty ``state/<step>/`` folder and returns its path.

    A folder of the same step can exist only when it was not used (incomplete, corrupt, or from
    a branch of the run that a fallback abandoned); its marker is removed first so no reader can
    take it for complete while its files are being replaced.
    """
    folder = state_path(work, step)
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, MARKER)
    if os.path.exists(marker):
        os.remove(marker)
        _fsync_dir(folder)
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            os.remove(p)
    return folder


def finalize_state(folder: str, step: int, known: Optional[Dict[str, Tuple[int, str]]] = None) -> int:
    """Writes the ``COMPLETE`` marker listing every other file with its size and SHA-256.

    :param folder: the state folder, all of whose files are written and closed.
    :param step: the step the state was saved at.
    :param known: ``{name: (size, sha256)}`` computed while writing (and already fsynced); other
        files are fsynced and hashed here, in parallel.
    :returns: total bytes of the state (its files plus the marker), for the ``resume_state`` event.
    :raises OSError: when a file cannot be read or the marker cannot be written.
    """
    known = known or {}
    files: Dict[str, Dict[str, Any]] = {}
    names = [n for n in sorted(os.listdir(folder)) if n != MARKER and not n.endswith(".tmp") and os.path.isfile(os.path.join(folder, n))]

    def measure(name: str) -> Tuple[int, str]:
        p = os.path.join(folder, name)
        if name in known and known[name][0] == os.path.getsize(p):
            return known[name]
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        return os.path.getsize(p), sha256_file(p)

    for name, (size, digest) in zip(names, _parallel(measure, names)):
        files[name] = {"size": size, "sha256": digest}
    _fsync_dir(folder)
    write_json_atomic(os.path.join(folder, MARKER), {"step": step, "files": files})
    _fsync_dir(folder)
    return sum(f["size"] for f in files.values()) + os.path.getsize(os.path.join(folder, MARKER))


def verify_state(folder: str, required: Tuple[str, ...] = REQUIRED_FILES) -> Optional[str]:
    """Checks a state folder against its marker.

    :param folder: ``WORK/state/<step>``.
    :param required: file names that must be listed (the worker's stand-in may list fewer).
    :returns: None when the state is complete and intact, else the reason it is not.
    """
    marker = os.path.join(folder, MARKER)
    if not os.path.isfile(marker):
        return "no COMPLETE marker (the save did not finish)"
    try:
        with open(marker, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"COMPLETE is not readable JSON ({e})"
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not isinstance(data.get("step"), int):
        return "COMPLETE lacks step or files"
    name = os.path.basename(os.path.normpath(folder))
    if _STEP_NAME.match(name) and int(name) != data["step"]:
        return f"COMPLETE says step {data['step']} but the folder is {name}"
    for req in required:
        if req not in data["files"]:
            return f"COMPLETE does not list {req}"
    for fname, meta in data["files"].items():
        p = os.path.join(folder, fname)
        if "/" in fname or "\\" in fname or fname in ("", ".", ".."):
            return f"COMPLETE lists a bad file name {fname!r}"
        if not os.path.isfile(p):
            return f"{fname} is missing"
        try:
            size = os.path.getsize(p)
        except OSError as e:
            return f"{fname} is unreadable ({e})"
        if not isinstance(meta, dict) or size != meta.get("size"):
            return f"{fname} has {size} bytes, COMPLETE says {meta.get('size') if isinstance(meta, dict) else '?'}"
    # Sizes first (cheap), then the checksums of all files at once (hashlib releases the GIL).
    names = list(data["files"])
    for fname, digest in zip(names, _parallel(lambda n: sha256_file(os.path.join(folder, n)), names)):
        if digest != data["files"][fname].get("sha256"):
            return f"{fname} does not match its SHA-256 in COMPLETE"
    return None


def _parallel(fn: Any, items: List[str]) -> List[Any]:
    """``[fn(x) for x in items]`` on up to 8 threads (file hashing is I/O and GIL-free C)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def list_steps(work: str) -> List[int]:
    """Steps of the folders under ``WORK/state/`` named by a decimal step, newest first."""
    root = os.path.join(work, "state")
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    steps = [int(n) for n in names if _STEP_NAME.match(n) and os.path.isdir(os.path.join(root, n))]
    return sorted(steps, reverse=True)


def read_state_json(folder: str) -> Dict[str, Any]:
    """Reads ``state.json`` of a (verified) state folder.

    :raises ValueError: when it is not a JSON object of a known format.
    """
    with open(os.path.join(folder, STATE_JSON), "r", encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        raise ValueError(f"state.json has format {data.get('format') if isinstance(data, dict) else '?'}, this trainer reads {', '.join(map(str, READABLE_FORMATS))}")
    for key in ("step", "stage", "stage_step", "epoch", "position", "seed", "spec_sha256"):
        if key not in data:
            raise ValueError(f"state.json lacks {key}")
    return data


@dataclass(frozen=True)
class Candidate:
    """A verified resume state.

    :ivar step: the step it was saved at.
    :ivar path: its folder.
    :ivar data: its ``state.json``.
    """

    step: int
    path: str
    data: Dict[str, Any]


def load_candidate(folder: str) -> Tuple[Optional[Candidate], Optional[str]]:
    """Verifies one folder and reads its ``state.json``: ``(candidate, None)`` or ``(None, reason)``."""
    reason = verify_state(folder)
    if reason is None:
        try:
            data = read_state_json(folder)
            return Candidate(step=int(data["step"]), path=folder, data=data), None
        except (OSError, ValueError) as e:
            reason = f"state.json is unusable ({e})"
    return None, reason


def select_latest(work: str, log: Optional[TextIO] = None) -> Optional[Candidate]:
    """The newest complete and intact resume state under ``WORK/state/``, or None.

    States that fail verification are reported on ``log`` (stderr) and skipped, so an
    interrupted save or a corrupted download falls back to the previous state.
    """
    log = log if log is not None else sys.stderr
    for step in list_steps(work):
        cand, reason = load_candidate(state_path(work, step))
        if cand is not None:
            return cand
        print(f"warning: ignoring resume state state/{step}: {reason}", file=log)
    return None
