"""Where and in which precision to compute."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fedfms.config import DEVICE
from fedfms.errors import FedfmsError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(FedfmsError, ValueError):
    """A device or precision this machine does not have; the message names the setting."""


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps``
    only if this machine has them (:class:`DeviceError` naming ``setting`` otherwise: before
    any work, not at the first tensor moved)."""
    if not DEVICE.match(name):
        raise DeviceError(f"{setting} {name!r}: not a device (expected auto, cpu, cuda, cuda:N or mps)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting} {name!r}: this machine has no CUDA GPU that torch can use; choose auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"{setting} {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{setting} {name!r}: MPS is not available on this machine; choose auto or cpu")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as the oneDNN kernels
    that CPU autocast uses need for bf16 to pay."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 autocast on a GPU that supports it (fp16 on an older GPU) and on a CPU
    with native bf16 (measured on a 2-core AVX512-BF16 CPU: a LiteMedSAM MSA step of batch 4
    takes 7.6 s instead of 15.8 s); fp32 on other CPUs. ``fp32``/``bf16``/``fp16`` force it."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32
    if precision not in PRECISIONS:
        raise DeviceError(f"--precision {precision!r}: expected auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision for the forward pass; a no-op in fp32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
