"""A worker's own SGD step for one parameter, for compressors that send updates instead of gradients (ef-sign)."""

from __future__ import annotations

import torch


@torch.no_grad()
def local_sgd_update(p: torch.Tensor, group: dict, buffers: dict, name: str) -> torch.Tensor:
    """This worker's SGD step for p alone, lr·(momentum buffer), as torch.optim.SGD would take it from p.grad."""
    d = p.grad.float()
    if group.get("weight_decay", 0):
        d = d.add(p.float(), alpha=group["weight_decay"])
    momentum = group.get("momentum", 0)
    if momentum:
        buffer = buffers.get(name)
        if buffer is None or buffer.shape != d.shape:
            buffer = buffers[name] = d.clone()
        else:
            if buffer.device != d.device:  # restored from a checkpoint (kept on the host)
                buffer = buffers[name] = buffer.to(d.device)
            buffer.mul_(momentum).add_(d, alpha=1 - group.get("dampening", 0))
        d = d.add(buffer, alpha=momentum) if group.get("nesterov", False) else buffer
    return d * group["lr"]
