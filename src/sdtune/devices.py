"""Device and dtype names, checked once and the same way for every command that takes them.

``--device cuda`` on a machine without CUDA used to fail deep in torch ("Torch not compiled with CUDA", 24 frames)
after the model had loaded, and ``--device cdua`` with torch's list of 20 internal device types. Here a name is
checked before anything loads: an unknown one, or one this machine lacks, is one line naming what is available.
Dtypes take both spellings users know: ``fp16``/``float16``, ``bf16``/``bfloat16``, ``fp32``/``float32``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from sdtune.errors import SdtuneError
from sdtune.words import counted

DEVICE_KINDS = ("cpu", "cuda", "mps")
DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda, cuda:N, mps"
# Every spelling -> the torch name. "auto" is handled by the callers that allow it.
DTYPE_SPELLINGS = {"float32": "float32", "fp32": "float32", "float": "float32", "full": "float32",
                   "float16": "float16", "fp16": "float16", "half": "float16",
                   "bfloat16": "bfloat16", "bf16": "bfloat16"}
DTYPE_HELP = "float32 (fp32), float16 (fp16) or bfloat16 (bf16)"
_DEVICE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<index>\d+))?$")


def _cuda() -> tuple[bool, int, str]:
    """(available, device count, why not) without raising on CPU-only builds of torch."""
    import torch

    if torch.cuda.is_available():
        return True, torch.cuda.device_count(), ""
    if getattr(torch.version, "cuda", None) is None and getattr(torch.version, "hip", None) is None:
        return False, 0, "this torch is a CPU-only build (install a CUDA build of torch to use a GPU)"
    return False, 0, "torch was built with CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"


def _mps() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices this machine can run on, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    found = ["cpu"]
    ok, count, _ = _cuda()
    if ok:
        found += [f"cuda:{i}" for i in range(count)]
    if _mps():
        found.append("mps")
    return found


def check_device(name: str | None, option: str = "--device") -> str:
    """``name`` checked against this machine: ``auto``/None stay ``auto``; else the name, normalized.

    Raises SdtuneError (one line) for a name that is not a device (with the closest one), or a device this
    machine lacks, naming what is available.
    """
    if name is None or name.strip().lower() in ("", "auto"):
        return "auto"
    text = name.strip().lower()
    match = _DEVICE.match(text)
    kind = match.group("kind") if match else text
    if kind not in DEVICE_KINDS or (match and match.group("index") and kind != "cuda"):
        close = difflib.get_close_matches(kind, DEVICE_KINDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SdtuneError(f"{option} {name!r} is not a device{hint}; use {DEVICE_HELP}. "
                          f"Available here: {', '.join(available_devices())}")
    if kind == "cuda":
        ok, count, why = _cuda()
        if not ok:
            raise SdtuneError(f"{option} {name}: no CUDA GPU here: {why}. Available here: "
                              f"{', '.join(available_devices())}")
        index = int(match.group("index")) if match and match.group("index") else 0
        if index >= count:
            raise SdtuneError(f"{option} {name}: this machine has {counted(count, 'CUDA GPU')}. "
                              f"Available here: {', '.join(available_devices())}")
    if kind == "mps" and not _mps():
        raise SdtuneError(f"{option} mps: Apple's Metal (MPS) is not available here. Available here: "
                          f"{', '.join(available_devices())}")
    return text


def pick_device(name: str | None = None) -> str:
    """The checked device (:func:`check_device`); ``auto``: a CUDA GPU, else Apple's MPS, else the CPU."""
    chosen = check_device(name)
    if chosen != "auto":
        return chosen
    if _cuda()[0]:
        return "cuda"
    return "mps" if _mps() else "cpu"


def dtype_name(name: str, option: str = "--dtype", allow_auto: bool = True) -> str:
    """A dtype in any usual spelling -> its torch name (``fp16`` -> ``float16``); ``auto`` kept when allowed.

    Raises SdtuneError naming the accepted spellings.
    """
    text = name.strip().lower()
    if allow_auto and text == "auto":
        return "auto"
    if text in DTYPE_SPELLINGS:
        return DTYPE_SPELLINGS[text]
    allowed = ("auto, " if allow_auto else "") + DTYPE_HELP
    raise SdtuneError(f"{option} {name!r} is not a dtype; use {allowed}")


def torch_dtype(name: str) -> Any:
    """The torch dtype of any accepted spelling (not ``auto``)."""
    import torch

    return getattr(torch, dtype_name(name, allow_auto=False))
