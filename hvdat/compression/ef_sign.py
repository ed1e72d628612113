"""Scaled sign with error feedback, EF-SignSGD (Karimireddy et al., ICML 2019), 1 bit per element on the wire.

Each worker keeps a residual e per parameter name. For a gradient g it forms p = g + e, sends
δ = (‖p‖₁/d) · sign(p) and keeps e ← p − δ, so everything sent plus the residual equals everything received:
Σ_t δ_t + e_T = Σ_t g_t. That bookkeeping is what makes it converge like SGD.

Wire, per tensor of d elements: the fp32 scale ‖p‖₁/d (4 bytes), then sign(p) packed 8 per byte. The scale travels
in the payload; ctx never leaves the rank.

Aggregate of k payloads: the mean of the workers' δ_w = scale_w · sign_w (the unbiased-in-the-limit average
that ordinary SGD would apply). With k = 1, decompress(compress(g)) = δ.

Residuals are float32 whatever the gradient dtype, keyed by the `name` the optimizer passes (the parameter's
name), and are saved in checkpoints through `state_dict()` / `load_state_dict()`. Non-finite gradients make the
scale, the aggregate and the residual non-finite; nothing is silently repaired.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from . import packing
from .sign import SignCompressor, encode_signs, l1_scale


def mean_of_scaled_signs(rows: np.ndarray, numel: int) -> np.ndarray:
    scales, bits = packing.split_scale(rows)
    k = rows.shape[0]
    out = None
    for scale, row in zip(scales, bits):  # one vectorised pass per worker, 8 elements per look-up
        with np.errstate(invalid="ignore"):
            table = packing.SIGN_TABLE * (scale / np.float32(k))
        out = packing.expand(table, row, numel, out)
    return out if out is not None else np.zeros(numel, dtype=np.float32)


class EFSignCompressor:
    """EF-SignSGD: scaled sign with per-parameter error feedback (see the module docstring)."""

    packed = True
    wire_bytes = staticmethod(SignCompressor.wire_bytes)

    def __init__(self, seed: Optional[int] = None):
        self.residuals: Dict[str, torch.Tensor] = {}

    def compress(self, tensor: torch.Tensor, name: str = ""):
        values = packing.as_float32(tensor)
        residual = self.residuals.get(name)
        if residual is not None and residual.numel() != values.size:
            raise ValueError(f"EF residual {name!r} has {residual.numel()} elements but the gradient has "
                             f"{values.size}; pass a distinct name= per tensor")
        corrected = values.copy() if residual is None else values + residual.numpy()
        scale = l1_scale(corrected)
        payload = encode_signs(corrected, scale)
        # e <- p - scale * sign(p), with the same convention as the bits (0 counts as positive)
        with np.errstate(invalid="ignore"):  # inf - inf = NaN: non-finite stays non-finite, on purpose
            corrected -= np.where(corrected < 0, -scale, scale)
        self.residuals[name] = torch.from_numpy(corrected)
        return payload, packing.ctx_of(tensor)

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        numel = int(np.prod(ctx[0], dtype=np.int64))
        rows = packing.rows(payload, SignCompressor.wire_bytes(numel))
        return packing.to_tensor(mean_of_scaled_signs(rows, numel), ctx)

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {name: residual.clone() for name, residual in self.residuals.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.residuals = {name: residual.detach().to(torch.float32).clone() for name, residual in state.items()}

    def load_rank_states(self, states: List[Dict[str, torch.Tensor]], rank: int, size: int) -> None:
        """Restore from every rank's saved residuals. Same world size: each rank takes its own. Otherwise each
        takes their mean, which keeps the untransmitted part of the averaged update, (1/n) Σ_w e_w, unchanged."""
        if not states:
            return
        if len(states) == size:
            self.load_state_dict(states[rank])
            return
        names = set().union(*states)
        self.load_state_dict({name: sum(s[name] for s in states if name in s) / len(states) for name in names})
