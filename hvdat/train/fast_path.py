"""The GPU fast path, correct on CPU: mixed precision (`--amp bf16|fp16`), channels_last, torch.compile.

- bf16 autocast needs no loss scaling; fp16 uses a GradScaler. With Horovod the scaler steps after
  `optimizer.synchronize()` inside `skip_synchronize()`, so the exchanged gradients are the scaled ones and
  every rank skips the same inf/NaN steps.
- The inner attack runs under the same autocast as the training step; evaluation stays in fp32.
- channels_last is a memory layout only (faster convolutions on tensor cores); results match up to rounding.
  Only the input batches are converted: a convolution given a channels_last input runs channels_last, while the
  parameters (and so, by autograd's layout contract, their gradients) stay contiguous, which Horovod requires.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

import torch

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device) -> Callable[[], ContextManager]:
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def compiled(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """The module the training step calls; `model` itself stays uncompiled for state_dict and checkpoints."""
    return torch.compile(model) if enabled else model
