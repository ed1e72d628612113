"""Scaled sign with error feedback, EF-SignSGD (Karimireddy et al., ICML 2019), 1 bit per element on the wire.

Each worker keeps a residual e per parameter name. For a tensor u it forms p = u + e, sends
δ = s · sign(p) and keeps e ← p − δ, so everything sent plus the residual equals everything received:
Σ_t δ_t + e_T = Σ_t u_t. That bookkeeping is what makes it converge like SGD.

The scale is blockwise (Zheng et al., NeurIPS 2019): one s_r = ‖p_r‖₁/d_r per row r of a weight (its output
channel or neuron), one per tensor for biases and norms. ‖p‖₁/d is the best single scale for a block (it minimises
‖p − s·sign(p)‖), but one scale for a whole conv weight is a poor fit: with BN, channels' gradients differ by
orders of magnitude, the residual piles up on the large ones until it dominates p (we measured ‖e‖ at 10-100×
the update on digits), and the update arrives tens of steps late. Per row, the residual stays about as large as
the update.

`hvdat.compression.DistributedOptimizer` feeds it the worker's own SGD update u = lr·(momentum buffer) with weight
decay folded in, not the raw gradient (`sends_updates`), as in the paper's Algorithm 1 (p = γg + e) and in
distributed EF-SGD with momentum (Zheng et al.): momentum then smooths fresh gradients instead of re-amplifying
stale residuals, and a residual keeps its size when the learning rate changes. The aggregate is applied as is.

Wire, per tensor of d elements in b blocks: b fp32 scales (4b bytes), then sign(p) packed 8 per byte
(ceil(d/8) bytes). The scales travel in the payload; ctx never leaves the rank.

Aggregate of k payloads: the mean of the workers' δ_w (the mean of what each would have applied alone, which keeps
Σ sent + mean residual = Σ mean update). With k = 1, decompress(compress(u)) = δ.

Residuals and momentum buffers are float32 whatever the gradient dtype, keyed by the `name` the optimizer passes
(the parameter's name), and are saved in checkpoints through `state_dict()` / `load_state_dict()`. Non-finite values
make that block's scale, aggregate and residual non-finite; nothing is silently repaired.
"""

from __future__ import annotations

from math import prod
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import packing

MOMENTUM = "momentum:"  # state_dict key prefix of the worker-local momentum buffers


def blocks(shape: Union[int, Sequence[int]]) -> int:
    """How many scales a tensor of this shape gets: one per row (dim 0) of a weight, one for a 1-D tensor."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return shape[0] if len(shape) > 1 and prod(shape) > 0 else 1


def wire_bytes(shape: Union[int, Sequence[int]]) -> int:
    numel = shape if isinstance(shape, int) else prod(shape)
    return packing.SCALE_BYTES * blocks(shape) + packing.packed_len(numel)


def block_scales(corrected: np.ndarray, nblocks: int, scratch: np.ndarray) -> np.ndarray:
    """‖p_r‖₁/d_r per block, float32 (0 for an empty tensor); scratch: a float32 buffer of corrected's size."""
    if corrected.size == 0:
        return np.zeros(nblocks, dtype=np.float32)
    magnitudes = np.abs(corrected, out=scratch).reshape(nblocks, -1)
    return np.add.reduce(magnitudes, axis=1) / np.float32(magnitudes.shape[1])


def scaled_signs(bits: np.ndarray, scales: np.ndarray, numel: int, out: np.ndarray) -> np.ndarray:
    """scales[r] · (±1 from the packed bits), written into out (float32, >= 8·len(bits) elements); returns
    out[:numel]."""
    np.take(packing.SIGN_TABLE, bits, axis=0, out=out[: 8 * bits.size].reshape(-1, 8), mode="clip")
    values = out[:numel]
    with np.errstate(invalid="ignore"):  # a non-finite scale makes its block non-finite, on purpose
        if scales.size == 1:
            values *= scales[0]
        elif numel:
            values.reshape(scales.size, -1).__imul__(scales[:, None])
    return values


def mean_of_scaled_signs(rows: np.ndarray, numel: int, nblocks: int) -> np.ndarray:
    scale_bytes = packing.SCALE_BYTES * nblocks
    scales = np.ascontiguousarray(rows[:, :scale_bytes]).view(np.float32) / np.float32(rows.shape[0])
    out = np.zeros(numel, dtype=np.float32)
    scratch = np.empty(8 * packing.packed_len(numel), dtype=np.float32)
    for scale, bits in zip(scales, rows[:, scale_bytes:]):  # one vectorised pass per worker
        out += scaled_signs(bits, scale, numel, scratch)
    return out


class EFSignCompressor:
    """EF-SignSGD: blockwise scaled sign with per-parameter error feedback (see the module docstring)."""

    packed = True
    sends_updates = True  # DistributedOptimizer hands it lr·momentum updates and applies the aggregate as is
    wire_bytes = staticmethod(wire_bytes)

    def __init__(self, seed: Optional[int] = None):
        self.residuals: Dict[str, torch.Tensor] = {}
        self.momentum: Dict[str, torch.Tensor] = {}  # filled by the optimizer (worker-local SGD momentum)
        self._buffer = np.empty(0, dtype=np.float32)

    def _scratch(self, size: int) -> np.ndarray:
        """One reused float32 work buffer (the largest tensor's size), instead of temporaries per call."""
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=np.float32)
        return self._buffer[:size]

    def compress(self, tensor: torch.Tensor, name: str = ""):
        values = packing.as_float32(tensor)
        residual = self.residuals.get(name)
        if residual is not None and residual.numel() != values.size:
            raise ValueError(
                f"EF residual {name!r} has {residual.numel()} elements but the gradient has "
                f"{values.size}; pass a distinct name= per tensor"
            )
        corrected = values.copy() if residual is None else np.add(values, residual.numpy(), out=residual.numpy())
        nblocks = blocks(tensor.shape)
        scratch = self._scratch(8 * packing.packed_len(values.size))
        scales = block_scales(corrected, nblocks, scratch[: values.size])
        bits = packing.pack_bits(corrected < 0)
        payload = packing.to_payload(scales.view(np.uint8), bits)
        # e <- p - s * sign(p), decoded from the bits just sent, so the bookkeeping is exact by construction
        with np.errstate(invalid="ignore"):  # inf - inf = NaN: non-finite stays non-finite, on purpose
            corrected -= scaled_signs(bits, scales, values.size, scratch)
        self.residuals[name] = torch.from_numpy(corrected)
        return payload, packing.ctx_of(tensor)

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        shape = ctx[0]
        numel = prod(shape)
        rows = packing.rows(payload, wire_bytes(shape))
        return packing.to_tensor(mean_of_scaled_signs(rows, numel, blocks(shape)), ctx)

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        state = {name: residual.clone() for name, residual in self.residuals.items()}
        # on the host: checkpoints and the allgathers of rank states must not carry CUDA tensors of other GPUs
        state.update({MOMENTUM + name: buffer.detach().cpu().clone() for name, buffer in self.momentum.items()})
        return state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        def clean(tensor):
            return tensor.detach().to(torch.float32).clone()

        self.residuals = {k: clean(v) for k, v in state.items() if not k.startswith(MOMENTUM)}
        self.momentum = {k[len(MOMENTUM) :]: clean(v) for k, v in state.items() if k.startswith(MOMENTUM)}

    def load_rank_states(self, states: List[Dict[str, torch.Tensor]], rank: int, size: int) -> None:
        """Restore from every rank's saved state. Same world size: each rank takes its own. Otherwise each
        takes their mean, which keeps the untransmitted part of the averaged update, (1/n) Σ_w e_w, unchanged."""
        if not states:
            return
        if len(states) == size:
            self.load_state_dict(states[rank])
            return
        names = set().union(*states)
        self.load_state_dict({name: sum(s[name] for s in states if name in s) / len(states) for name in names})
