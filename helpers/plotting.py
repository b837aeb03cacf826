"""Figures the chapters share: image grids (with captions and mask overlays) and colour swatches.

Images are small (32x32), so they are drawn with ``interpolation="nearest"`` and figures are kept at a low dpi.
Every function returns the matplotlib figure, so a notebook shows it and a script can save it.
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import matplotlib.patheffects as pe
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
               wrap: int = 20, fontsize: float = 6.5, mask_colour: str = "white", suptitle: str | None = None):
    """A grid of images with optional titles (wrapped to ``wrap`` characters) and mask outlines.

    ``images``: a batch (B, H, W, 3) or (B, H, W), or a list of arrays / PIL images; floats in [0, 1] or uint8.
    ``masks``: optional boolean (B, H, W) or list (entries may be None); each mask is outlined in ``mask_colour``
    with a thin black edge, visible on any background.
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
    height = scale + title_lines * fontsize / 72 * 1.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * height), dpi=DPI, squeeze=False,
                             layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        im = images[i]
        ax.imshow(im, interpolation="nearest", cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
        if masks is not None and masks[i] is not None:
            contour = ax.contour(np.asarray(masks[i], float), levels=[0.5], colors=mask_colour, linewidths=1.0)
            contour.set_path_effects([pe.Stroke(linewidth=2.2, foreground="black"), pe.Normal()])
        if titles is not None:
            ax.set_title("\n".join(textwrap.wrap(titles[i], wrap)), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 2)
    return fig


def swatches(colours: Mapping[str, Sequence[int]], scale: float = 0.9, fontsize: float = 7):
    """One labelled square per named colour; ``colours`` maps names to RGB triples (0-255). Returns the figure."""
    names = list(colours)
    fig, axes = plt.subplots(1, len(names), figsize=(len(names) * scale, scale + 0.35), dpi=DPI, squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.flat, names):
        rgb = tuple(int(c) for c in colours[name])
        ax.imshow(np.full((4, 4, 3), rgb, np.uint8), interpolation="nearest")
        ax.set_title(f"{name}\n{rgb}", fontsize=fontsize)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


# --- Chapter 1 (observing massive activations): per-block channel statistics ---------------------------------------

def _as_numpy(x, ndim: int, what: str) -> np.ndarray:
    """A float array with ``ndim`` dimensions (torch tensors are moved to numpy); a clear error otherwise."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
    if x.ndim != ndim or not np.issubdtype(x.dtype, np.number) or x.dtype == bool:
        raise ValueError(f"{what} must be a numeric array with {ndim} dimensions, got {x.dtype} {x.shape}")
    return x.astype(np.float64)


def _block_ticks(n: int, block_names) -> list[str]:
    if block_names is None:
        return [str(i) for i in range(n)]
    from .observe import block_labels
    names = block_labels(block_names)
    if len(names) != n:
        raise ValueError(f"{len(names)} block names for {n} blocks")
    return names


def top_vs_median(stat, block_names=None, ranks: int = 3, title: str | None = None):
    """Sun et al. (2024)'s view: the 1st, 2nd, ... ``ranks``-th largest channel statistic and the median channel's, per
    block, on a log scale. ``stat``: (blocks, channels). Returns the figure."""
    s = _as_numpy(stat, 2, "stat")
    if not 1 <= ranks <= s.shape[1]:
        raise ValueError(f"ranks must be in [1, {s.shape[1]}], got {ranks}")
    ticks = _block_ticks(s.shape[0], block_names)
    top = -np.sort(-s, axis=1)[:, :ranks]
    fig, ax = plt.subplots(figsize=(4.8, 2.8), dpi=DPI, layout="constrained")
    x = np.arange(s.shape[0])
    for r in range(ranks):
        ax.plot(x, top[:, r], marker="o", ms=4, lw=1.5 if r == 0 else 1, label=f"top {r + 1}")
    ax.plot(x, np.median(s, axis=1), marker="s", ms=3, color="grey", ls="--", label="median")
    ax.set_yscale("log")
    ax.set_xticks(x, ticks, rotation=30, fontsize=7)
    ax.set_ylabel("|mean over image tokens|")
    ax.legend(fontsize=7, ncols=2)
    ax.set_title(title or "largest channels vs the median channel, per block", fontsize=9)
    return fig


def block_channel_map(stat, block_names=None, title: str | None = None):
    """Blocks x channels heatmap of the statistic on a log colour scale: massive channels are bright columns.
    ``stat``: (blocks, channels). Returns the figure."""
    from matplotlib.colors import LogNorm
    s = _as_numpy(stat, 2, "stat")
    ticks = _block_ticks(s.shape[0], block_names)
    positive = s[s > 0]
    floor = positive.min() if positive.size else 1e-12
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * s.shape[0] + 1.0), dpi=DPI, layout="constrained")
    im = ax.imshow(np.maximum(s, floor), aspect="auto", interpolation="nearest", cmap="magma",
                   norm=LogNorm(vmin=floor, vmax=max(s.max(), floor * 10)))
    ax.set_yticks(range(s.shape[0]), ticks, fontsize=7)
    ax.set_xlabel("channel")
    fig.colorbar(im, ax=ax, label="|mean| (log)", pad=0.01)
    ax.set_title(title or "channel statistic per block", fontsize=9)
    return fig


def token_channel_view(tokens, image, channel: int, grid_shape: tuple[int, int] | None = None,
                       title: str | None = None):
    """One block's hidden state for one image: |x| over image tokens x channels (massive channels are bright
    columns), the generated image, and ``channel``'s signed values over the image tokens as a spatial map.
    ``tokens``: (image_tokens, channels) signed values, image tokens in raster order. Returns the figure."""
    from .observe import token_grid
    x = _as_numpy(tokens, 2, "tokens")
    if not -x.shape[1] <= channel < x.shape[1]:
        raise IndexError(f"channel {channel} out of range for {x.shape[1]} channels")
    spatial = token_grid(x[:, channel], grid_shape)
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8), dpi=DPI, layout="constrained",
                             gridspec_kw={"width_ratios": [3.2, 1, 1.25]})
    im = axes[0].imshow(np.abs(x), aspect="auto", interpolation="nearest", cmap="magma")
    axes[0].set_xlabel("channel")
    axes[0].set_ylabel("image token")
    axes[0].set_title("|x| per image token and channel", fontsize=9)
    fig.colorbar(im, ax=axes[0], pad=0.01)
    axes[1].imshow(to_array(image), interpolation="nearest")
    axes[1].set_title("generated image", fontsize=9)
    axes[1].set_axis_off()
    bound = np.abs(spatial).max() or 1.0
    im = axes[2].imshow(spatial, interpolation="nearest", cmap="RdBu_r", vmin=-bound, vmax=bound)
    axes[2].set_title(f"channel {channel % x.shape[1]} per token", fontsize=9)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    fig.colorbar(im, ax=axes[2], pad=0.02, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def overlap_maps(matrices: Mapping[str, object], tick_labels: Mapping[str, Sequence[str]] | None = None,
                 title: str | None = None):
    """Side-by-side heatmaps of Jaccard overlaps between top-k channel sets (``helpers.persistence`` matrices), e.g.
    ``{"across blocks": (6, 6), "across steps": (20, 20), "across prompts": (16, 16)}``; ``tick_labels`` optionally
    names the rows of some of them (e.g. block names). Returns the figure."""
    from matplotlib.ticker import MaxNLocator
    if not matrices:
        raise ValueError("overlap_maps needs at least one matrix")
    mats = {name: _as_numpy(m, 2, f"matrix {name!r}") for name, m in matrices.items()}
    tick_labels = dict(tick_labels or {})
    for name, m in mats.items():
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"matrix {name!r} must be square, got {m.shape}")
        if name in tick_labels and len(tick_labels[name]) != m.shape[0]:
            raise ValueError(f"{len(tick_labels[name])} tick labels for the {m.shape[0]} rows of matrix {name!r}")
    fig, axes = plt.subplots(1, len(mats), figsize=(2.6 * len(mats) + 0.6, 2.6), dpi=DPI, layout="constrained",
                             squeeze=False)
    for ax, (name, m) in zip(axes.flat, mats.items()):
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        off = m[~np.eye(len(m), dtype=bool)]
        ax.set_title(f"{name}\nmean {off.mean():.2f}" if off.size else name, fontsize=8)
        if name in tick_labels:
            ax.set_xticks(range(len(m)), tick_labels[name], rotation=90)
            ax.set_yticks(range(len(m)), tick_labels[name])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="Jaccard overlap", shrink=0.85)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def channel_frequency_map(freq, block_names=None, max_channels: int = 12, title: str | None = None):
    """Blocks x channels: how often each channel is in a block's top-k, over prompts and steps; the ``max_channels``
    channels most frequent in some block are shown, each cell annotated. ``freq``: (blocks, channels) in [0, 1]."""
    f = _as_numpy(freq, 2, "freq")
    ticks = _block_ticks(f.shape[0], block_names)
    if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
        raise ValueError(f"max_channels must be a positive integer, got {max_channels!r}")
    shown = np.argsort(-f.max(axis=0), kind="stable")[:max_channels]
    fig, ax = plt.subplots(figsize=(0.42 * shown.size + 1.6, 0.32 * f.shape[0] + 1.1), dpi=DPI, layout="constrained")
    ax.imshow(f[:, shown], vmin=0, vmax=1, cmap="Blues", aspect="auto", interpolation="nearest")
    for (i, j), v in np.ndenumerate(f[:, shown]):
        ax.text(j, i, "1" if v >= 0.995 else "0" if v < 0.005 else f"{v:.2f}".lstrip("0"), ha="center",
                va="center", fontsize=6.5, color="white" if v > 0.6 else "black")
    ax.set_xticks(range(shown.size), shown, fontsize=7)
    ax.set_yticks(range(f.shape[0]), ticks, fontsize=7)
    ax.set_xlabel("channel")
    ax.set_title(title or "how often each channel is in the block's top-k\n(over prompts and steps)", fontsize=8)
    return fig


def ratio_over_steps(ratios, timesteps=None, block_names=None, mark_step: int | None = None,
                     title: str | None = None):
    """Top-1 / median ratio per block along the denoising trajectory. ``ratios``: (steps, blocks); ``timesteps``:
    optional t per step for the labels; ``mark_step``: a step to mark with a vertical line. Returns the figure."""
    r = _as_numpy(ratios, 2, "ratios")
    ticks = _block_ticks(r.shape[1], block_names)
    fig, ax = plt.subplots(figsize=(4.8, 2.8), dpi=DPI, layout="constrained")
    steps = np.arange(r.shape[0])
    for b, name in enumerate(ticks):
        ax.plot(steps, r[:, b], marker="o", ms=2.5, lw=1, label=name)
    if mark_step is not None:
        ax.axvline(mark_step, color="grey", ls=":", lw=1)
    if timesteps is not None:
        if len(timesteps) != r.shape[0]:
            raise ValueError(f"{len(timesteps)} timesteps for {r.shape[0]} steps")
        every = max(1, r.shape[0] // 5)
        ax.set_xticks(steps[::every], [f"{s}\nt={float(t):.2f}" for s, t in zip(steps[::every], timesteps[::every])],
                      fontsize=7)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("top-1 / median")
    ax.legend(fontsize=6.5, ncols=2)
    ax.set_title(title or "how massive the top channel is, along the trajectory", fontsize=9)
    return fig


def channel_profile(profile, image, title: str | None = None, caption: str | None = None, top: int = 3):
    """One hidden state's channel profile (e.g. |mean over image tokens| per channel for one prompt, block and step)
    as bars, the ``top`` largest labelled, next to the generated image. Returns the figure."""
    p = _as_numpy(profile, 1, "profile")
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.4), dpi=DPI, layout="constrained",
                             gridspec_kw={"width_ratios": [3.6, 1]})
    axes[0].bar(np.arange(p.size), p, width=1.0, color="tab:blue")
    axes[0].axhline(np.median(p), color="grey", ls="--", lw=1, label=f"median {np.median(p):.3g}")
    for c in np.argsort(-p)[:top]:
        axes[0].annotate(str(c), (c, p[c]), fontsize=7, ha="center", va="bottom", color="tab:red")
    axes[0].set_xlim(-1, p.size)
    axes[0].set_ylim(0, p.max() * 1.15 if p.max() > 0 else 1)
    axes[0].set_xlabel("channel")
    axes[0].set_ylabel("|mean|")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[0].set_title(title or "channel profile", fontsize=9)
    axes[1].imshow(to_array(image), interpolation="nearest")
    axes[1].set_axis_off()
    if caption:
        axes[1].set_title("\n".join(textwrap.wrap(caption, 22)), fontsize=7)
    return fig
