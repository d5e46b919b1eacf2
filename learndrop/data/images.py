"""Image helpers on uint8 N x C x H x W tensors, shared by the dataset readers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_uint8"]


def resize_uint8(x: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 N x C x H x W images to size x size (bilinear, antialiased).

    Non-square images are scaled so that their shorter side is `size`, then center-cropped,
    so that the aspect ratio is kept.
    """
    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for i in range(0, n, chunk):  # chunks bound the float copy's memory
        part = F.interpolate(
            x[i : i + chunk].float(), size=(nh, nw), mode="bilinear",
            align_corners=False, antialias=True,
        )
        part = part[:, :, top : top + size, left : left + size]
        out[i : i + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out
