"""The device a model goes to, from Lightning's ``accelerator`` and ``devices`` arguments.

scvi-tools resolves these in a private helper of its own; this is the same rule on Lightning's
public accelerator classes. ``accelerator="auto"`` is the CUDA GPU when there is one and the
CPU otherwise (Apple's MPS only when asked for by name, as in scvi-tools: not every operation
runs there), and ``devices="auto"`` is one device, not every GPU of the machine (Lightning's
own ``"auto"``, which relaunches the script under DDP).
"""

from __future__ import annotations

import numpy as np
import torch

#: accelerators scdl's models run on
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def resolve_device(
    accelerator: str = "auto", devices: int | list[int] | str = "auto", *, single: bool = False
) -> tuple[str, int | list[int] | str, torch.device]:
    """Lightning's accelerator and devices, and the torch device of the first of them.

    ``single`` refuses more than one device (loading puts the model on one) and reads an
    integer as the device's index, as scvi-tools' ``load`` documents it.
    """
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator={accelerator!r} is not one of {ACCELERATORS}.")
    accelerator, devices = _torch_device_string(accelerator, devices)
    if single:
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)  # "1" as load's index 1, not Lightning's count of one
        if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 0:
            devices = [devices]  # one device: an integer is its index (a count to Lightning)
        elif (
            not isinstance(devices, int | str | list)
            or (isinstance(devices, int) and devices < 0)  # -1: every device
            or (isinstance(devices, list) and len(devices) != 1)
            or (isinstance(devices, str) and ("," in devices or devices.strip() == "-1"))
        ):
            raise ValueError(f"Give one device here, not devices={devices!r}.")
    if accelerator == "auto":
        accelerator = "cuda" if CUDAAccelerator.is_available() else "cpu"
    elif accelerator == "gpu":
        mps_only = MPSAccelerator.is_available() and not CUDAAccelerator.is_available()
        accelerator = "mps" if mps_only else "cuda"
    if accelerator == "cpu":
        return "cpu", devices, torch.device("cpu")
    parser = CUDAAccelerator if accelerator == "cuda" else MPSAccelerator
    ids = parser.parse_devices(1 if devices == "auto" else devices)  # raises when none exists
    if not ids:  # Lightning reads 0 (or "0") as a count of no devices
        raise ValueError(
            f"devices={devices!r} selects no {accelerator} device. Pass the number of devices "
            "(1), or a device's index in a list ([0])."
        )
    return (
        accelerator,
        ids[:1] if devices == "auto" else ids,
        torch.device(f"{accelerator}:{ids[0]}"),
    )


def lightning_devices(devices):
    """``devices`` with numpy integers (from an array or a config) as the ``int`` and
    ``list[int]`` Lightning tests for with ``isinstance`` (it failed on ``np.int64(1)`` with
    "truth value of an empty array is ambiguous"); anything else unchanged."""
    if isinstance(devices, np.ndarray) and devices.ndim == 0:  # np.asarray of one value
        devices = devices.item()
    if isinstance(devices, np.integer) and not isinstance(devices, np.bool_):
        return int(devices)
    if isinstance(devices, tuple | np.ndarray) or (
        isinstance(devices, list) and any(isinstance(d, np.integer) for d in devices)
    ):
        return [int(d) if isinstance(d, np.integer) else d for d in list(devices)]
    return devices


def several_devices(devices) -> bool:
    """Whether Lightning's ``devices`` asks for more than one device (a count above 1, -1 for
    every device, a list or ``"0,1"`` of several); ``"auto"`` is one in scdl's models."""
    if isinstance(devices, bool) or devices is None:
        return False
    if isinstance(devices, int | np.integer):
        return devices > 1 or devices == -1
    if isinstance(devices, list | tuple):
        return len(devices) > 1
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        if "," in devices:
            return len(parts) > 1
        return devices.strip() == "-1" or (devices.strip().isdigit() and int(devices) > 1)
    return False


def started_interactively() -> bool:
    """A notebook or an interactive interpreter, as Lightning tells them (DDP there forks)."""
    import sys

    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def _torch_device_string(accelerator: str, devices):
    """A device written as torch writes it (``"cuda:1"``, ``"cuda"``, ``"mps"``, ``"cpu"``, or
    a ``torch.device``) read as its accelerator and index; Lightning's own values (``"auto"``,
    an index or count, a list, ``"0,1"``, ``"-1"``) are returned unchanged, and any other
    string is refused."""
    if isinstance(devices, torch.device):
        devices = str(devices)
    devices = lightning_devices(devices)
    if not isinstance(devices, str):
        return accelerator, devices
    text = devices.strip().lower()
    kind, sep, index = text.partition(":")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if text == "auto" or (parts and all(p.lstrip("-").isdigit() for p in parts)):
        return accelerator, devices  # Lightning's: "auto", "1", "0,1", "1,", "-1"
    if kind not in ACCELERATORS[1:] or (sep and not index.isdigit()):
        raise ValueError(
            f"device {devices!r} is not one scdl can use: pass an index (0), 'auto', or a "
            "device as torch writes it ('cuda', 'cuda:1', 'mps', 'cpu')."
        )
    if accelerator not in ("auto", kind) and {accelerator, kind} not in (
        {"gpu", "cuda"},
        {"gpu", "mps"},
    ):
        raise ValueError(
            f"accelerator={accelerator!r} and device {devices!r} disagree. Pass the device "
            f"alone (accelerator='auto', the default) or the accelerator with an index "
            "(e.g. accelerator='cuda', device=0)."
        )
    accelerator = kind if accelerator == "auto" else accelerator
    return accelerator, [int(index)] if sep and kind != "cpu" else "auto"
