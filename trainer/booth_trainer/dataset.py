"""Instance and class image listings with their captions (no image decoding here).

Instance images are ``*.png``, ``*.jpg``/``*.jpeg`` and ``*.webp`` files in the instance folder,
each with a same-named ``.txt`` caption (``0001.png`` + ``0001.txt``), which is what
``booth dataset export`` writes. With ``data.captions == "prompt"`` every image uses the instance
prompt. A missing caption falls back to the instance prompt with a warning on stderr; a caption
that cannot be read (not UTF-8, unreadable) or an empty image file is reported and the pair is
left out; a folder with no usable pair is a ``data`` error. The order is the sorted file name
order so that data-order indices mean the same thing on every host.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional, TextIO

from .errors import TrainerError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Item:
    """One training image.

    :ivar path: absolute path of the image file.
    :ivar caption: the prompt it is trained with.
    :ivar name: the file name relative to its folder (for messages and cache keys).
    """

    path: str
    caption: str
    name: str


@dataclass
class Listing:
    """Result of scanning a folder.

    :ivar items: usable pairs in sorted file-name order.
    :ivar missing_captions: image names that fell back to the instance prompt.
    :ivar unreadable: ``(name, reason)`` for pairs that were left out.
    """

    items: List[Item] = field(default_factory=list)
    missing_captions: List[str] = field(default_factory=list)
    unreadable: List[tuple] = field(default_factory=list)


def _images(folder: str) -> List[str]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def scan_instances(folder: str, instance_prompt: str, captions: str = "files", log: Optional[TextIO] = None) -> Listing:
    """Pairs every instance image with its caption.

    :param folder: the instance folder (``WORK/dataset``).
    :param instance_prompt: used for ``captions == "prompt"`` and for images without a ``.txt``.
    :param captions: ``files`` or ``prompt`` (``data.captions``).
    :param log: where warnings go (stderr by default).
    :returns: the listing; warnings for missing and unreadable captions are printed.
    :raises TrainerError: kind ``data`` when the folder is missing or holds no usable image.
    """
    log = log if log is not None else sys.stderr
    if not os.path.isdir(folder):
        raise TrainerError("data", f"the instance folder {folder} does not exist (data.instanceDir); the worker puts the dataset there")
    out = Listing()
    for name in _images(folder):
        path = os.path.join(folder, name)
        try:
            if os.path.getsize(path) == 0:
                out.unreadable.append((name, "the image file is empty"))
                continue
        except OSError as e:
            out.unreadable.append((name, f"cannot stat the image: {e.strerror or e}"))
            continue
        caption = instance_prompt
        if captions == "files":
            txt = os.path.join(folder, os.path.splitext(name)[0] + ".txt")
            if os.path.exists(txt):
                try:
                    with open(txt, "r", encoding="utf-8") as f:
                        text = f.read().strip()
                except (OSError, UnicodeDecodeError) as e:
                    out.unreadable.append((name, f"its caption {os.path.basename(txt)} is unreadable: {e}"))
                    continue
                if text:
                    caption = text
                else:
                    out.missing_captions.append(name)
            else:
                out.missing_captions.append(name)
        out.items.append(Item(path=path, caption=caption, name=name))
    for name in out.missing_captions:
        print(f"warning: {name} has no caption (.txt missing or empty); using the instance prompt {instance_prompt!r}", file=log)
    for name, reason in out.unreadable:
        print(f"warning: leaving out {name}: {reason}", file=log)
    if not out.items:
        detail = f" ({len(out.unreadable)} left out as unreadable)" if out.unreadable else ""
        raise TrainerError("data", f"no usable instance images in {folder}{detail}; expected *.png, *.jpg or *.webp files with same-named .txt captions")
    return out


def scan_class_images(folder: str, class_prompt: str) -> List[Item]:
    """Class images present in ``folder`` (sorted), each with the class prompt as caption.

    Empty files and temporary files from an interrupted generation are ignored.
    """
    items = []
    for name in _images(folder):
        path = os.path.join(folder, name)
        if os.path.getsize(path) > 0:
            items.append(Item(path=path, caption=class_prompt, name=name))
    return items


def class_image_name(index: int) -> str:
    """File name of the ``index``-th generated class image (``class-00007.png``)."""
    return f"class-{index:05d}.png"


def missing_class_names(folder: str, wanted: int) -> List[str]:
    """Names of generated class images still needed to have ``wanted`` images in ``folder``.

    Images already present (generated or supplied) count; the missing ones get the lowest free
    ``class-NNNNN.png`` names so an interrupted generation continues where it stopped.
    """
    present = set(_images(folder))
    have = len([n for n in present if os.path.getsize(os.path.join(folder, n)) > 0])
    need = max(0, wanted - have)
    names: List[str] = []
    i = 0
    while len(names) < need:
        n = class_image_name(i)
        if n not in present:
            names.append(n)
        i += 1
    return names
