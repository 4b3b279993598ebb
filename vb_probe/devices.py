"""Which device to run on: one check for the CLIs, the API and the trainer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vb_probe.errors import VbProbeError


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:N]``; a one-line error when CUDA is asked for and there is none."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VbProbeError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise VbProbeError(f"--device {name}: unknown device; use cpu or cuda")
    return torch.device(name)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Inside, torch computes on ``count`` threads (0: as it was); the count it had is given back after."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
