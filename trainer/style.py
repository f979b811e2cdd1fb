"""Style mixing of feature statistics between a batch's samples (MixStyle: Zhou et al., ICLR 2021).

The per-channel mean and standard deviation of an early feature map carry much of an image's
"style": the camera, light and processing of the hospital it came from. In training, with
probability p per batch and layer, each sample's feature map is re-styled with a random convex
mix of its own statistics and those of another sample of the batch, so that the network sees
styles between the training hospitals'. Nothing changes at inference: the weights file and npseg
are the same as without it. The layers are the family's (`TorchFamily.style_layers`).
"""
from __future__ import annotations

import torch

STYLE_ALPHA = 0.1  # the mixing weight ~ Beta(alpha, alpha): mostly near 0 or 1 (the paper's value)
STYLE_EPSILON = 1e-6  # added to the variance, so that a flat channel keeps a finite std


def mix_styles(x: torch.Tensor, weight: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """x [N,C,H,W] with each sample's channel statistics replaced by weight x its own + (1 - weight)
    x those of sample partner[i]; weight [N] in [0, 1], partner [N] indices into the batch. The
    statistics are constants for the gradient, as in the paper."""
    mean = x.mean((2, 3), keepdim=True).detach()  # [N,C,1,1]
    std = (x.var((2, 3), keepdim=True) + STYLE_EPSILON).sqrt().detach()  # [N,C,1,1]
    w = weight.view(-1, 1, 1, 1).to(x.dtype)
    mixed_mean = w * mean + (1 - w) * mean[partner]
    mixed_std = w * std + (1 - w) * std[partner]
    return (x - mean) / std * mixed_std + mixed_mean


def _random_mix(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A mixing weight per sample from Beta(alpha, alpha) and a random partner (torch's global
    generator, which the checkpoints save, so a resumed run draws on)."""
    alpha = torch.tensor(STYLE_ALPHA)
    return torch.distributions.Beta(alpha, alpha).sample((n,)), torch.randperm(n)


def attach_style_mixing(layers, probability: float) -> list:
    """Forward hooks that mix styles on the outputs of `layers` while they are in training mode,
    each batch with `probability`; the hooks' handles (remove() detaches them)."""

    def hook(module, inputs, output):
        if not module.training or len(output) < 2 or float(torch.rand(())) >= probability:
            return None
        return mix_styles(output, *_random_mix(len(output)))

    return [layer.register_forward_hook(hook) for layer in layers]
