"""Seeded random weights for tokenizer tests and the tiny demo preset (no checkpoint needed).

PyTorch's default init lets the conv biases dominate, so every latent frame comes out nearly the same. This
init (the one the reference fixtures use) keeps the input's temporal variation alive: conv weights
N(0, 1/fan_in) (attention q/k x2 for O(1) logits), conv biases 0.02*N(0,1), GroupNorm 1+0.1*N(0,1) / 0.1*N(0,1).
"""

from __future__ import annotations

import torch
from torch import nn


def random_init_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter of ``module`` in place, deterministically from ``seed``; returns the module."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Conv3d):
                fan_in = sub.weight[0].numel()
                gain = 2.0 if name.endswith((".q.conv3d", ".k.conv3d")) else 1.0
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=gen) * gain / fan_in**0.5)
                sub.bias.copy_(0.02 * torch.randn(sub.bias.shape, generator=gen))
            elif isinstance(sub, nn.GroupNorm):
                sub.weight.copy_(1.0 + 0.1 * torch.randn(sub.weight.shape, generator=gen))
                sub.bias.copy_(0.1 * torch.randn(sub.bias.shape, generator=gen))
    return module
