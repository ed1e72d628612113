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

Encoding, the residual update and decoding run on the gradient's device, as torch operations (CPU tensors: numpy
kernels, see `hvdat.compression.packing`), and residuals and momentum buffers stay there (`state_dict()` returns
host copies); the bytes and the floats are those of the numpy codec this replaced (float32 block scales with numpy's
pairwise summation order, decoded values ±1 × scale in float32, the mean accumulated from zero in payload order).
"""

from __future__ import annotations

from math import gcd, prod
from typing import Dict, List, Optional, Sequence, Tuple, Union

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


def _pieces(numel: int, nblocks: int, device: torch.device) -> List[Tuple[int, int, int, int]]:
    """Byte ranges of the packed bits, each with the first block it starts in and how many blocks it covers:
    whole blocks per piece (so that a piece's nibbles know their block), cache-sized on CPU."""
    nbytes = packing.packed_len(numel)
    if nblocks == 1:
        return [(start, stop, 0, 1) for start, stop in packing.chunks(nbytes, device, 1, 8)]
    per_block = numel // nblocks
    unit = 8 // gcd(per_block, 8)  # blocks per piece must end on a byte
    step = max(unit, packing.CPU_CHUNK // per_block // unit * unit) if device.type == "cpu" else nblocks
    pieces = []
    for first in range(0, nblocks, step):
        count = min(step, nblocks - first)
        stop = nbytes if first + count == nblocks else (first + count) * per_block // 8
        pieces.append((first * per_block // 8, stop, first, count))
    return pieces


def _block_tables(scales: torch.Tensor, plus_zero: bool = False) -> torch.Tensor:
    """Rows 16r..16r+15: the 4 values of every nibble of sign bits in block r, ±1 × s_r in float32, as quads.
    `plus_zero`: 0 + that (what accumulating into zeros gives: -0.0 becomes +0.0)."""
    values = (packing.table("sign_nibble", scales.device).unsqueeze(0) * scales.view(-1, 1, 1)).view(-1, 4)
    if plus_zero:
        values = torch.zeros((), dtype=torch.float32, device=scales.device) + values
    return packing.quads(values)


def _scaled_signs(bits, tables, per_block: int, first: int, count: int, out: torch.Tensor) -> torch.Tensor:
    """scales[r] · (±1 from the packed bits) for one piece (bytes `bits`, blocks first..first+count-1), into
    `out` (8 floats per byte)."""
    nibbles = packing.look_up(packing.table("sign_nibbles", bits.device), packing.byte_index(bits), "nibbles")
    if tables.numel() > 16:  # more than one block: the nibbles of block r look in rows 16r..16r+15
        index = nibbles.view(torch.int32)[: count * per_block // 4].view(count, per_block // 4)
        index += torch.arange(16 * first, 16 * (first + count), 16, dtype=torch.int32, device=bits.device).view(-1, 1)
    return packing.expand4(tables, nibbles, out=out)


def scaled_signs(bits: torch.Tensor, scales: torch.Tensor, numel: int, out: torch.Tensor, mode: str) -> None:
    """The device kernel: δ = scales[block] · (±1 from the packed bits), exactly numpy's take(±1 table) × scale in
    float32, applied to out[:numel] (float32): `mode` "first" sets out = 0 + δ (a mean starting from zeros), "add"
    out += δ, "subtract" out -= δ. Pieces of whole blocks (cache-sized when run on a CPU)."""
    nblocks = scales.numel()
    per_block = numel // nblocks
    device = bits.device
    if nblocks > 1 and per_block % 4:  # nibbles straddle blocks: ±1 first, then each block times its scale
        nibbles = packing.gather(packing.table("sign_nibbles", device), packing.byte_index(bits))
        signs = packing.expand4(packing.quads(packing.table("sign_nibble", device)), nibbles)
        _apply(out[:numel], signs[:numel].view(nblocks, per_block).mul_(scales.view(-1, 1)).view(-1), mode)
        return
    tables = _block_tables(scales, plus_zero=mode == "first")
    for start, stop, first, count in _pieces(numel, nblocks, device):
        if mode == "first":
            _scaled_signs(bits[start:stop], tables, per_block, first, count, out[8 * start : 8 * stop])
        else:
            piece = out[8 * start : min(8 * stop, out.numel())]
            work = packing.scratch("signs", 8 * (stop - start), torch.float32, device)
            _apply(piece, _scaled_signs(bits[start:stop], tables, per_block, first, count, work)[: piece.numel()], mode)


def _apply(out: torch.Tensor, delta: torch.Tensor, mode: str) -> None:
    if mode == "first":
        torch.add(torch.zeros((), dtype=torch.float32, device=out.device), delta, out=out)
    elif mode == "add":
        out += delta
    else:
        out -= delta


def mean_of_scaled_signs(rows: torch.Tensor, numel: int, nblocks: int, ctx=()) -> torch.Tensor:
    """The mean of k payloads' δ_w: (0 + δ_0) + δ_1 + ..., every δ_w = ±1 × (s_w / k) in float32, as numpy did.
    Returns 8 values per byte of bits (the tail is padding), in the gradient ctx carries when it fits
    (`packing.destination`)."""
    if packing.use_numpy(rows):  # the host kernel (numpy's take of 8 signs per byte)
        return packing.mean_of_scaled_signs_numpy(rows.numpy(), numel, nblocks, ctx)
    k, device = rows.shape[0], rows.device
    scale_bytes = packing.SCALE_BYTES * nblocks
    scales = packing.header_floats(rows, nblocks) / torch.full((1,), k, dtype=torch.float32, device=device)
    bits = rows[:, scale_bytes:]
    out = packing.destination(ctx, 8 * bits.shape[1], device)
    first = 0
    if nblocks == 1 and k >= 2:  # one scale each: (0 + δ_0) + δ_1 through one look-up per pair of nibbles
        signs = packing.table("sign_nibble", device)
        one = [signs * s.view(1, 1) for s in scales[:2]]
        pairs = packing.quads((torch.zeros((), device=device) + one[0]).view(16, 1, 4) + one[1].view(1, 16, 4))
        lut = packing.table("nibble_pairs", device)
        for start, stop in packing.chunks(bits.shape[1], device, 1, 8):
            index = packing.pair_index(bits[0, start:stop], bits[1, start:stop])
            packing.expand4(pairs, packing.look_up(lut, index, "nibbles"), out[8 * start : 8 * stop])
        first = 2
    for i in range(first, k):  # one pass per worker
        scaled_signs(bits[i], scales[i], numel, out, "add" if i else "first")
    return out


class EFSignCompressor:
    """EF-SignSGD: blockwise scaled sign with per-parameter error feedback (see the module docstring)."""

    packed = True
    sends_updates = True  # DistributedOptimizer hands it lr·momentum updates and applies the aggregate as is
    wire_bytes = staticmethod(wire_bytes)

    def __init__(self, seed: Optional[int] = None):
        self.residuals: Dict[str, torch.Tensor] = {}  # float32, on the gradient's device
        self.momentum: Dict[str, torch.Tensor] = {}  # filled by the optimizer (worker-local SGD momentum)

    def compress(self, tensor: torch.Tensor, name: str = ""):
        values = packing.as_float32(tensor)
        numel = values.numel()
        residual = self.residuals.get(name)
        if residual is not None and residual.numel() != numel:
            raise ValueError(
                f"EF residual {name!r} has {residual.numel()} elements but the gradient has "
                f"{numel}; pass a distinct name= per tensor"
            )
        nblocks = blocks(tensor.shape)
        scale_bytes = packing.SCALE_BYTES * nblocks
        payload = packing.empty(scale_bytes + packing.packed_len(numel), torch.uint8, values.device)
        fresh = residual is None
        if fresh:
            residual = torch.empty(numel, dtype=torch.float32, device=values.device)
        elif residual.device != values.device:  # restored from a checkpoint (kept on the host)
            residual = residual.to(values.device)
        residual = residual.view(-1)
        self.residuals[name] = residual
        if packing.use_numpy(values):  # the host kernel: numpy's sum order, and its faster take of 8 signs per byte
            rows = residual.numpy().reshape(nblocks, -1)
            packing.ef_encode_numpy(values.numpy(), rows, payload.numpy(), fresh)
            return payload, packing.ctx_of(tensor)
        if fresh:  # p = u (its first step), in e's memory
            corrected = residual.copy_(values)
        else:
            corrected = torch.add(values, residual, out=residual)  # p = u + e, in e's memory
        bits = payload[scale_bytes:]
        scales = packing.l1_scales_and_signs(corrected.view(nblocks, -1), bits)
        payload[:scale_bytes].copy_(scales.view(torch.uint8))
        # e <- p - s * sign(p), decoded from the bits just sent, so the bookkeeping is exact by construction
        scaled_signs(bits, scales, numel, corrected, "subtract")
        return payload, packing.ctx_of(tensor)

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        shape = ctx[0]
        numel = prod(shape)
        rows = packing.rows(payload, wire_bytes(shape))
        return packing.to_tensor(mean_of_scaled_signs(rows, numel, blocks(shape), ctx), ctx)

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        # on the host: checkpoints and the allgathers of rank states must not carry CUDA tensors of other GPUs
        state = {name: residual.detach().to("cpu", copy=True) for name, residual in self.residuals.items()}
        state.update({MOMENTUM + name: buffer.detach().to("cpu", copy=True) for name, buffer in self.momentum.items()})
        return state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        def clean(tensor):  # host copies; compress and the optimizer move them to the gradient's device
            return tensor.detach().to("cpu", torch.float32, copy=True)

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
