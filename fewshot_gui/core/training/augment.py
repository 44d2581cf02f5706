"""Random affine distortion of training images, drawn from the episode's random generator."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random small affine distortion per image (rotation +-10 deg, scale 0.9-1.1, shear +-0.1,
    shift +-2 px at 28 px, all x ``strength``), drawn from ``rng`` (deterministic per episode).
    The background (each image's minimum) stays the background: right for inverted Omniglot,
    whose background is 0 after normalisation."""
    n = x.shape[0]
    a = np.deg2rad(rng.uniform(-10, 10, n) * strength)
    sc = 1 + rng.uniform(-0.1, 0.1, n) * strength
    sh = rng.uniform(-0.1, 0.1, n) * strength
    t = rng.uniform(-2, 2, (n, 2)) * strength * 2 / x.shape[-1]
    cos, sin = np.cos(a), np.sin(a)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = cos / sc
    theta[:, 0, 1] = (-sin + sh * cos) / sc
    theta[:, 1, 0] = sin / sc
    theta[:, 1, 1] = (cos + sh * sin) / sc
    theta[:, :, 2] = t
    grid = F.affine_grid(torch.from_numpy(theta).to(x.device, x.dtype), list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg
