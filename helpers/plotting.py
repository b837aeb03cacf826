"""Figures the chapters share: image grids (with captions and mask overlays) and colour swatches.

Images are small (32x32), so they are drawn with ``interpolation="nearest"`` and figures are kept at a low dpi.
Every function returns the matplotlib figure, so a notebook shows it and a script can save it.
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

DPI = 80


def to_array(image) -> np.ndarray:
    """One image as a float array in [0, 1]: (H, W, 3) for colour, (H, W) for a mask or grey image.

    Accepts PIL images, uint8 arrays, float arrays in [0, 1], boolean masks and torch tensors (moved to numpy).
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if image.dtype == bool:
        return image.astype(np.float32)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    return np.clip(image.astype(np.float32), 0, 1)


def image_grid(images, titles: Sequence[str] | None = None, masks=None, ncols: int = 8, scale: float = 1.2,
               wrap: int = 18, fontsize: float = 6.5, mask_colour: str = "magenta", suptitle: str | None = None):
    """A grid of images with optional titles (wrapped to ``wrap`` characters) and mask outlines.

    ``images``: a batch (B, H, W, 3) or (B, H, W), or a list of arrays / PIL images; floats in [0, 1] or uint8.
    ``masks``: optional boolean (B, H, W) or list (entries may be None); each mask is outlined in ``mask_colour``.
    ``scale``: inches per image. Returns the figure.
    """
    images = [to_array(im) for im in images]
    n = len(images)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    if masks is not None and len(masks) != n:
        raise ValueError(f"{n} images but {len(masks)} masks")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    title_lines = max((len(textwrap.wrap(t, wrap)) for t in titles), default=0) if titles is not None else 0
    height = scale + title_lines * fontsize / 72 * 1.25
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * height), dpi=DPI, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        im = images[i]
        ax.imshow(im, interpolation="nearest", cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
        if masks is not None and masks[i] is not None:
            ax.contour(np.asarray(masks[i], float), levels=[0.5], colors=mask_colour, linewidths=1.0)
        if titles is not None:
            ax.set_title("\n".join(textwrap.wrap(titles[i], wrap)), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 2)
    fig.tight_layout(pad=0.3)
    return fig


def swatches(colours: Mapping[str, Sequence[int]], scale: float = 0.9, fontsize: float = 7):
    """One labelled square per named colour; ``colours`` maps names to RGB triples (0-255). Returns the figure."""
    names = list(colours)
    fig, axes = plt.subplots(1, len(names), figsize=(len(names) * scale, scale + 0.35), dpi=DPI, squeeze=False)
    for ax, name in zip(axes.flat, names):
        rgb = tuple(int(c) for c in colours[name])
        ax.imshow(np.full((4, 4, 3), rgb, np.uint8), interpolation="nearest")
        ax.set_title(f"{name}\n{rgb}", fontsize=fontsize)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig
