"""Figure basics the chapters share: the book's figure style, image grids with row and column headers, heatmaps
and estimates with intervals. Every function returns its matplotlib figure (or axes), so a chapter can show it,
glue it into a numbered caption, or save it.

``setup()`` (run at the top of every chapter) makes figures legible on any screen: PNGs at 200 pixels per inch shown
at 100 per inch (sharp on HiDPI screens), fonts of at least 8 pt at the size shown, and a 32x32 image 1 inch wide
shows at 100 px. ``glue`` hands a number, a sentence or a figure to the book's prose (myst-nb's glue, without
needing myst-nb installed: on Colab it only displays).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.core.formatters import format_display_data
from IPython.display import display as show
from matplotlib_inline.backend_inline import set_matplotlib_formats

DPI = 100  # shown pixels per inch; "retina" PNGs hold twice as many
FONT = 9  # points; nothing smaller than 8
MAX_WIDTH = 7.2  # inches: the widest figure a 1280 px page shows at full size (tools/check_book.py)


def setup() -> None:
    """The book's figure style for this kernel (inline PNGs at 2x, fonts >= 8 pt)."""
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "font.size": FONT, "axes.titlesize": FONT,
                         "axes.labelsize": FONT, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8,
                         "figure.titlesize": FONT + 1, "figure.constrained_layout.use": True})
    set_matplotlib_formats("retina")


def glue(name: str, value, display: bool | None = None) -> None:
    """Store ``value`` (a string, number or figure) under ``name`` in the notebook's outputs, where the book's
    ``{glue:text}`` and ``{glue:figure}`` find it (the same output myst_nb.glue writes). A figure is shown once (in
    Jupyter and Colab; tag the cell ``remove-output`` so the book shows it only under its caption) and closed;
    other values are shown only with ``display=True``."""
    figure = isinstance(value, plt.Figure)
    display = figure if display is None else display
    bundle, metadata = format_display_data(value)
    prefix = "" if display else "application/papermill.record/"
    metadata = {**metadata, "scrapbook": {"name": name, "mime_prefix": prefix}}
    show({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
    if figure:
        plt.close(value)


def to_array(image) -> np.ndarray:
    """One image as floats in [0, 1]: (H, W, 3) colour or (H, W) grey/mask, from PIL, uint8, bool, float or torch."""
    if hasattr(image, "convert") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))
    if torch.is_tensor(image):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return np.clip(image.astype(np.float32), 0, 1)


def image_grid(images, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
               masks=None, size: float = 1.0, title: str | None = None):
    """Images in a grid with headers instead of per-panel titles.

    ``images``: a (rows, cols) nested list / array of images, or a flat list (one row). ``masks``: the same layout
    of bool masks (or None entries), outlined in white with a black edge. ``size``: inches per image (1.0 inch
    shows a 32x32 image at 100 px), shrunk to fit MAX_WIDTH but never below 96 px. Row labels sit left of each row.
    """
    rows = [list(r) for r in images] if _nested(images) else [list(images)]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    if n_cols == 0:
        raise ValueError("image_grid needs at least one image")
    masks = None if masks is None else ([list(r) for r in masks] if _nested(masks) else [list(masks)])
    for labels, n, what in ((row_labels, n_rows, "row"), (col_labels, n_cols, "column")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{n} {what}s but {len(labels)} {what} labels")
    label_width = 1.1 if row_labels is not None else 0
    size = min(size, (MAX_WIDTH - label_width) / n_cols)
    if size < 0.96:
        raise ValueError(f"{n_cols} columns do not fit a page at 96 px per image: use at most "
                         f"{int((MAX_WIDTH - label_width) / 0.96)} columns")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(label_width + n_cols * size, n_rows * size + 0.4 * bool(
        col_labels) + 0.3 * bool(title)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(row) or row[c] is None:
                continue
            im = to_array(row[c])
            ax.imshow(im, interpolation="nearest", cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
            if masks is not None and masks[r][c] is not None:
                line = ax.contour(np.asarray(masks[r][c], float), levels=[0.5], colors="white", linewidths=1.0)
                line.set_path_effects([pe.Stroke(linewidth=2.2, foreground="black"), pe.Normal()])
            if r == 0 and col_labels is not None:
                ax.set_title(col_labels[c])
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return fig


def _nested(x) -> bool:
    """Whether ``images`` is a grid (rows of images) rather than one row."""
    if isinstance(x, np.ndarray) or torch.is_tensor(x):
        return x.ndim == 5 or (x.ndim == 4 and x.shape[-1] not in (3, 4))
    if not isinstance(x, (list, tuple)) or not len(x):
        return False
    first = x[0]
    if isinstance(first, (list, tuple)):
        return True
    return (isinstance(first, np.ndarray) or torch.is_tensor(first)) and (
        first.ndim == 4 or (first.ndim == 3 and first.shape[-1] not in (3, 4)))


def heatmap(values, row_labels: Sequence[str], col_labels: Sequence[str], title: str | None = None,
            fmt: str = "{:.2f}", cmap: str = "viridis", vmin=None, vmax=None, ax=None, colorbar: bool = True):
    """A labelled heatmap of a (rows, cols) array with each cell's value written in it; NaN cells stay blank."""
    values = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values, float)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values of shape {values.shape} for {len(row_labels)} rows and {len(col_labels)} columns")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.62 * len(col_labels), 0.6 + 0.34 * len(row_labels)))
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set(xticks=range(len(col_labels)), xticklabels=col_labels, yticks=range(len(row_labels)),
           yticklabels=row_labels, title=title or "")
    for (i, j), v in np.ndenumerate(values):  # dark text on the light half of the colour map
        if np.isfinite(v):
            light = im.norm(v) >= 0.5
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="black" if light else "white")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return ax


def intervals(labels: Sequence[str], estimates, xlabel: str = "", reference: float | None = None, ax=None,
              colour: str = "C0"):
    """Horizontal estimates with their intervals: ``estimates`` is a list of (value, low, high), one per label;
    ``reference`` draws a dotted vertical line (e.g. the unmodified model, or zero for a difference)."""
    est = np.asarray(estimates, float)
    if est.shape != (len(labels), 3):
        raise ValueError(f"estimates must be one (value, low, high) per label, got shape {est.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 0.45 + 0.3 * len(labels)))
    y = np.arange(len(labels))[::-1]
    ax.errorbar(est[:, 0], y, xerr=[est[:, 0] - est[:, 1], est[:, 2] - est[:, 0]], fmt="o", color=colour,
                capsize=3)
    ax.set_yticks(y, labels)
    if reference is not None:
        ax.axvline(reference, color="grey", ls=":")
    ax.set_xlabel(xlabel)
    return ax
