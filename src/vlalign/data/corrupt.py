"""Image corruptions whose answers a method disprefers: POVID's diffusion noise, mDPO's random crop.

POVID applies the DDPM forward process to a picture, so that the policy's answer on it shows what the
model says when it cannot see (its language prior), which POVID then disprefers:

x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps, on pixels in [0, 1], with T = 1000 steps and
betas = sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5 (the schedule of POVID's and VCD's code);
abar_k is the cumulative product of (1 - beta) up to and including index k, as there. The result is
clamped back to [0, 1] before the processor normalises it, and every call draws fresh noise.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

T_DEFAULT = 1000


def sigmoid_betas(T: int = T_DEFAULT, start: float = 1e-5, end: float = 5e-3) -> torch.Tensor:
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (end - start) + start


def alpha_bar(k: int, T: int = T_DEFAULT) -> float:
    """abar_k: the share of the signal's variance left after step k (0-based, k < T)."""
    if not 0 <= k < T:
        raise ValueError(f"noise step k must be in [0, {T}), got {k}")
    return float(torch.cumprod(1 - sigmoid_betas(T), dim=0)[k])


def add_diffusion_noise(image: Image.Image, k: int = 500, T: int = T_DEFAULT,
                        generator: torch.Generator | None = None) -> Image.Image:
    """`image` after k steps of forward diffusion, as an RGB picture again (clamped to [0, 1])."""
    abar = alpha_bar(k, T)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    eps = torch.randn(x.shape, generator=generator)
    noisy = (abar ** 0.5) * x + ((1 - abar) ** 0.5) * eps
    return Image.fromarray((noisy.clamp(0, 1) * 255).round().to(torch.uint8).numpy())


def random_crop(image: Image.Image, max_area: float = 0.2, generator: torch.Generator | None = None) -> Image.Image:
    """A random window of `image` that keeps less than `max_area` of it (mDPO's corrupted image): what is left
    cannot support the answer, so a policy that still prefers it reads the answer off the text alone."""
    if not 0 < max_area < 1:
        raise ValueError(f"max_area must be in (0, 1), got {max_area}")
    u = torch.rand(3, generator=generator).tolist()
    scale = (max_area * (0.25 + 0.75 * u[0])) ** 0.5  # keeps between a quarter of max_area and max_area
    w, h = max(1, int(image.width * scale)), max(1, int(image.height * scale))
    left, top = int(u[1] * (image.width - w)), int(u[2] * (image.height - h))
    return image.convert("RGB").crop((left, top, left + w, top + h))
