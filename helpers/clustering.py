"""Where do the massive channels point? K-means on image tokens restricted to chosen channels -> token masks ->
pixel masks, scored by IoU against a ground-truth object mask (Turri et al. 2026, the "spatially organised" claim).

    tokens = rec.tokens[10, 2][0]                               # (image_tokens, channels) of one image
    mask = foreground_mask(tokens, channels=idx[2])             # bool (8, 8): the foreground cluster
    pixels = token_mask_to_pixels(mask, patch=4)                # bool (32, 32)
    table = clustering_iou(rec.tokens, truth, channels=idx)     # one row per (step, block, image)

The token grid is inferred from the number of image tokens (64 -> 8x8; FLUX at 1024x1024: 4096 -> 64x64), tokens in
raster order as the pipelines pack them. The foreground is one of the K clusters, picked by a stated ``rule``:

* ``"border"``: the cluster holding the fewest tokens of the grid's outer ring (the subject rarely touches the
  border); ties go to the smaller cluster.
* ``"smaller"``: the cluster with the fewest tokens (the subject is usually smaller than the background); ties go to
  the one with fewer border tokens.

Measurements take ground truth from the caller, so they work for any pipeline; ``colour_truth`` is the shapes
world's ground truth for generated images.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from .activations import record
from .models import transformer_of

RULES = ("border", "smaller")
N_INIT = 4  # k-means restarts; fixed with the seed so every run of the book gives the same masks


# ----------------------------------------------------------------------------------------------- token grids

def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def grid_shape(n_tokens: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """(rows, cols) of the image-token grid: ``grid`` if given (checked), else the square root of ``n_tokens``."""
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        if h * w != n_tokens:
            raise ValueError(f"grid {grid} has {h * w} cells but there are {n_tokens} image tokens")
        return h, w
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} image tokens do not form a square grid: pass grid=(rows, cols) "
                         "(the latent height and width divided by the patch size)")
    return side, side


def border(grid: tuple[int, int]) -> np.ndarray:
    """Bool (rows, cols): True on the outer ring of the token grid."""
    ring = np.ones(grid, bool)
    ring[1:-1, 1:-1] = False
    return ring


def restrict(tokens, channels=None) -> np.ndarray:
    """Tokens (..., channels) -> (..., k) float array keeping ``channels`` (None: all channels)."""
    x = _numpy(tokens)
    if channels is None:
        return x
    idx = _numpy(channels).astype(int).reshape(-1)
    if idx.size == 0:
        raise ValueError("channels is empty: choose at least one channel (or None for all)")
    if idx.min() < 0 or idx.max() >= x.shape[-1]:
        raise IndexError(f"channel indices must be in [0, {x.shape[-1]}), got range [{idx.min()}, {idx.max()}]")
    return x[..., idx]


# ----------------------------------------------------------------------------------------------- clustering

def single_threaded():
    """Context in which scikit-learn's k-means runs on one thread: on a few tiny point sets, its thread pool costs far
    more than it saves (100x slower on a busy 2-core machine)."""
    return threadpool_limits(1)


def cluster_tokens(tokens, k: int = 2, seed: int = 0, n_init: int = N_INIT) -> np.ndarray:
    """K-means labels (N,) of N tokens (N, channels) -- already restricted to the channels of interest.

    scikit-learn ``KMeans`` with a fixed ``random_state`` and ``n_init``, so the labels are deterministic. Tokens that
    are all identical give fewer clusters instead of a warning. Call many fits inside ``single_threaded()``.
    """
    x = _numpy(tokens).astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"cluster_tokens takes one image's tokens (N, channels), got shape {x.shape}; "
                         "loop over images, or use token_masks for a batch")
    if not 2 <= k <= len(x):
        raise ValueError(f"k must be in [2, {len(x)}] (the number of tokens), got {k}")
    if not np.isfinite(x).all():
        raise ValueError("tokens contain NaN or infinite values")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than clusters
        return KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit_predict(x)


def pick_foreground(labels, grid: tuple[int, int], rule: str = "border") -> int:
    """The label of the foreground cluster by ``rule`` ("border" or "smaller", see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    labels = np.asarray(labels).reshape(grid)
    ids = np.unique(labels)
    size = np.array([(labels == c).sum() for c in ids])
    on_border = np.array([(labels[border(grid)] == c).sum() for c in ids])
    key = np.lexsort((ids, size, on_border) if rule == "border" else (ids, on_border, size))
    return int(ids[key[0]])


def foreground_mask(tokens, channels=None, grid: tuple[int, int] | None = None, k: int = 2,
                    rule: str = "border", seed: int = 0, n_init: int = N_INIT) -> np.ndarray:
    """Bool (rows, cols) token mask of one image: cluster its tokens (N, channels) restricted to ``channels`` into
    ``k`` groups and keep the cluster that ``rule`` calls foreground."""
    x = restrict(tokens, channels)
    grid = grid_shape(x.shape[0], grid)
    labels = cluster_tokens(x, k, seed, n_init).reshape(grid)
    return labels == pick_foreground(labels, grid, rule)


def token_masks(tokens, channels=None, grid: tuple[int, int] | None = None, k: int = 2, rule: str = "border",
                seed: int = 0, n_init: int = N_INIT) -> np.ndarray:
    """Bool (images, rows, cols): ``foreground_mask`` for each image of a batch (images, N, channels)."""
    x = restrict(tokens, channels)
    if x.ndim != 3:
        raise ValueError(f"expected tokens (images, image_tokens, channels), got shape {x.shape}")
    with single_threaded():
        return np.stack([foreground_mask(t, None, grid, k, rule, seed, n_init) for t in x])


# ----------------------------------------------------------------------------------------------- token <-> pixels

def token_mask_to_pixels(mask, patch: int = 4) -> np.ndarray:
    """Bool (..., rows, cols) token mask -> (..., rows * patch, cols * patch) pixel mask: each token is a
    ``patch`` x ``patch`` square (raster order, as ``helpers.shapes.pack``)."""
    m = np.asarray(mask, bool)
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    return m.repeat(patch, axis=-2).repeat(patch, axis=-1)


def token_coverage(mask, patch: int = 4) -> np.ndarray:
    """Float (..., H / patch, W / patch): the fraction of each token's pixels that a pixel mask (..., H, W) covers."""
    m = np.asarray(mask, float)
    h, w = m.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"a {h}x{w} mask does not split into {patch}x{patch} patches")
    return m.reshape(*m.shape[:-2], h // patch, patch, w // patch, patch).mean(axis=(-3, -1))


def pixels_to_token_mask(mask, patch: int = 4) -> np.ndarray:
    """Bool (..., H / patch, W / patch): a token is in the mask when at least half of its pixels are (majority)."""
    return token_coverage(mask, patch) >= 0.5


def iou(a, b) -> np.ndarray | float:
    """Intersection over union of boolean masks over their last two axes: a float, or an array for batches (leading
    axes broadcast, e.g. one mask against many). Two empty masks agree perfectly (IoU 1)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"masks of different sizes {a.shape} and {b.shape}: bring them to one resolution first "
                         "(token_mask_to_pixels or pixels_to_token_mask)")
    a, b = np.broadcast_arrays(a, b)
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    out = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(out) if out.ndim == 0 else out


def centred_blob(grid: tuple[int, int], fraction: float) -> np.ndarray:
    """Bool (rows, cols): the ``round(fraction * cells)`` tokens nearest the grid's centre -- a mask that knows
    nothing about the image, the trivial baseline."""
    h, w = grid
    ys, xs = np.mgrid[:h, :w]
    d = (ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2
    n = int(round(np.clip(fraction, 0, 1) * h * w))
    mask = np.zeros(h * w, bool)
    mask[np.argsort(d.ravel(), kind="stable")[:n]] = True
    return mask.reshape(h, w)


# ----------------------------------------------------------------------------------------------- measurement

def _channels_for(channels, block):
    """The channel indices for one block: None, (k,) for every block, (blocks, k) by row, or {block: (k,)}."""
    if channels is None:
        return None
    if isinstance(channels, Mapping):
        if block not in channels:
            raise KeyError(f"channels has no entry for block {block}")
        return channels[block]
    c = _numpy(channels)
    if c.ndim == 2:
        if block is None:
            raise ValueError("2-D channels (blocks, k) need tokens keyed by (step, block)")
        return c[block]
    return c


def _truth_at(truth: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Ground truth (images, H, W) and the patch size that maps the token grid onto it."""
    h, w = truth.shape[-2:]
    if h % grid[0] or w % grid[1] or h // grid[0] != w // grid[1]:
        raise ValueError(f"truth masks of {h}x{w} pixels do not split into the {grid[0]}x{grid[1]} token grid; "
                         "give truth at a multiple of the token grid (or at the token grid itself)")
    return truth, h // grid[0]


def clustering_iou(tokens, truth, channels=None, rows: Sequence[int] | None = None, k: int = 2,
                   rule: str = "border", seed: int = 0, n_init: int = N_INIT,
                   grid: tuple[int, int] | None = None) -> pd.DataFrame:
    """IoU of the K-means foreground with ground truth, for every recorded (step, block) and image.

    ``tokens``: ``Recording.tokens`` ({(step, block): (rows, image_tokens, channels)}), ``InputRecording.inputs``
    ({step: ...}) or one tensor (rows, image_tokens, channels). ``truth``: bool (images, H, W) object masks at pixel
    (or token-grid) resolution, one per image, in the order of ``rows`` (default: every row). ``channels``: None
    (all), (k,), (blocks, k) as ``helpers.top_k`` returns, or {block: (k,)}.

    Returns one row per (step, block, image) with ``iou`` (the rule's cluster, at pixel resolution), ``iou_best``
    (the better of the K clusters: what a perfect rule would get), ``rule_right`` (the rule picked that cluster),
    ``token_iou`` (at the token grid, against truth downsampled by majority) and ``area`` (foreground fraction).
    """
    truth = np.asarray(truth, bool)
    if truth.ndim != 3:
        raise ValueError(f"truth must be boolean masks (images, H, W), got shape {truth.shape}")
    if isinstance(tokens, Mapping):  # {(step, block): ...}, or {step: ...} as record_inputs gives
        items = [(key if isinstance(key, tuple) else (key, None), x) for key, x in tokens.items()]
    else:
        items = [((None, None), tokens)]
    with single_threaded():
        records = _clustering_records(items, truth, channels, rows, k, rule, seed, n_init, grid)
    return pd.DataFrame.from_records(records)


def _clustering_records(items, truth, channels, rows, k, rule, seed, n_init, grid) -> list[dict]:
    records = []
    for (step, block), x in sorted(items, key=lambda kv: tuple(-1 if v is None else v for v in kv[0])):
        x = restrict(x, _channels_for(channels, block))
        if x.ndim != 3:
            raise ValueError(f"tokens for (step={step}, block={block}) must be (rows, image_tokens, channels), "
                             f"got shape {x.shape}")
        picked = list(range(x.shape[0])) if rows is None else list(rows)
        if len(picked) != len(truth):
            raise ValueError(f"{len(picked)} token rows but {len(truth)} truth masks: pass rows= to choose the rows "
                             "(e.g. the conditional half with classifier-free guidance)")
        g = grid_shape(x.shape[1], grid)
        full, patch = _truth_at(truth, g)
        coarse = full if patch == 1 else pixels_to_token_mask(full, patch)
        for image, r in enumerate(picked):
            labels = cluster_tokens(x[r], k, seed, n_init).reshape(g)
            fg = pick_foreground(labels, g, rule)
            per_cluster = {c: iou(token_mask_to_pixels(labels == c, patch), full[image]) for c in np.unique(labels)}
            best = max(per_cluster, key=per_cluster.get)
            mask = labels == fg
            records.append(dict(step=step, block=block, image=image, iou=per_cluster[fg],
                                iou_best=per_cluster[best], rule_right=bool(per_cluster[fg] == per_cluster[best]),
                                token_iou=iou(mask, coarse[image]), area=float(mask.mean())))
    return records


def iou_map(table: pd.DataFrame, value: str = "iou") -> pd.DataFrame:
    """Mean of ``value`` per block (rows) and step (columns) of a ``clustering_iou`` table."""
    return table.pivot_table(index="block", columns="step", values=value, aggfunc="mean")


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a normal-approximation confidence interval (t quantile)."""
    from scipy.stats import t as student

    v = np.asarray(values, float)
    if v.size < 2:
        raise ValueError("a confidence interval needs at least two values")
    half = student.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def format_mean_ci(values, confidence: float = 0.95) -> str:
    """'0.612 [0.571, 0.653]': a mean and its confidence interval, rounded to 3 decimals."""
    m, lo, hi = mean_ci(values, confidence)
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


# ----------------------------------------------------------------------------------------------- recording inputs

class InputRecording:
    """Keeps the transformer's input ``hidden_states`` (the noisy latent tokens) at chosen denoising steps:
    ``inputs[step]`` is (rows, image_tokens, channels). A 4-D input (rows, channels, H, W), as unpatched DiTs take,
    is flattened to (rows, H * W, channels). Steps are counted as ``helpers.record`` counts them: a call with the
    previous call's timestep continues the step."""

    def __init__(self, pipe, steps: Sequence[int]):
        self.transformer = transformer_of(pipe)
        self.steps = set(int(s) for s in steps)
        self.inputs: dict[int, torch.Tensor] = {}
        self._parts: dict[int, list] = {}
        self._step, self._last_t, self._handle = -1, object(), None

    def _hook(self, module, args, kwargs):
        t = kwargs.get("timestep")
        t = float(t.flatten()[0]) if torch.is_tensor(t) else t
        if t is None or t != self._last_t:
            self._step += 1
        self._last_t = t
        if self._step in self.steps:
            x = kwargs.get("hidden_states", args[0] if args else None).detach().float().cpu()
            if x.ndim == 4:
                x = x.flatten(2).transpose(1, 2)
            self._parts.setdefault(self._step, []).append(x)

    def __enter__(self):
        self._handle = self.transformer.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self.inputs = {s: torch.cat(p) for s, p in self._parts.items()}
        return False


def record_inputs(pipe, steps: Sequence[int]) -> InputRecording:
    """Context manager keeping the transformer's noisy input tokens at ``steps`` (see ``InputRecording``): the
    control that asks whether the hidden state knows more than the input it was given."""
    return InputRecording(pipe, steps)


def generate_with_tokens(pipe, prompts: Sequence[str], blocks: Sequence[int] | None, steps: Sequence[int],
                         seed: int = 0, keep_inputs: bool = False, **pipe_kwargs):
    """One pipeline call that keeps the image tokens of ``blocks`` (None: all) at ``steps``, and with
    ``keep_inputs`` the transformer's noisy inputs at those steps. Returns (images (N, H, W, 3) floats in [0, 1],
    Recording, InputRecording or None). ``pipe_kwargs`` go to the pipeline (e.g. num_inference_steps)."""
    generator = torch.Generator().manual_seed(seed)
    with contextlib.ExitStack() as stack:
        rec = stack.enter_context(record(pipe, keep_tokens={"blocks": blocks, "steps": list(steps)}))
        inputs = stack.enter_context(record_inputs(pipe, steps)) if keep_inputs else None
        images = pipe(prompt=list(prompts), generator=generator, output_type="np", **pipe_kwargs).images
    return np.asarray(images, np.float32), rec, inputs


# ----------------------------------------------------------------------------------------------- shapes ground truth

def colour_truth(images, captions: Sequence[str]) -> np.ndarray:
    """Shapes world only. Bool (N, 32, 32): pixels at least as close to the caption's object colour as to its
    background colour (both from ``PALETTE``). On clean renders this is exactly ``Scene.mask`` (an anti-aliased pixel
    is nearer the object colour when the object covers at least half of it); on generated images it is the object
    the model drew, in the colour it was asked for."""
    from .shapes import PALETTE, parse_caption

    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(captions):
        raise ValueError(f"expected images (N, H, W, 3) in [0, 1] and N captions, got {images.shape} and "
                         f"{len(captions)} captions")
    out = []
    for image, caption in zip(images, captions):
        scene = parse_caption(caption)
        fg = np.array(PALETTE[scene.colour], np.float32) / 255
        bg = np.array(PALETTE[scene.background], np.float32) / 255
        # Ties (a pixel exactly half object) count as object, as Scene.mask does; 1e-6 absorbs float rounding.
        out.append(((image - fg) ** 2).sum(-1) <= ((image - bg) ** 2).sum(-1) + 1e-6)
    return np.stack(out)


def tokens_of_noised_renders(pipe, scenes, sigma: float, blocks: Sequence[int] | None = None, seed: int = 0
                             ) -> dict[tuple[int, int], torch.Tensor]:
    """Shapes world only. Image tokens {(0, block): (N, 64, channels)} of the book model when it is shown the
    scenes' exact renders noised to ``sigma`` (x = (1 - sigma) x0 + sigma noise, as in training) with their
    captions: one transformer call, so ground truth is ``Scene.mask`` itself, not read from a generated image."""
    from .shapes import pack, render
    from .shapes.pipeline import image_ids

    x0 = torch.from_numpy(render(list(scenes))).permute(0, 3, 1, 2) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    xt = pack((1 - sigma) * x0 + sigma * noise)
    with torch.no_grad(), record(pipe, keep_tokens={"blocks": blocks, "steps": [0]}) as rec:
        emb, pooled = pipe.encode_prompt([s.caption for s in scenes])
        pipe.transformer(hidden_states=xt, encoder_hidden_states=emb, pooled_projections=pooled,
                         timestep=torch.full((len(xt),), float(sigma)), img_ids=image_ids(),
                         txt_ids=torch.zeros(emb.shape[1], 3), return_dict=False)
    return rec.tokens


# ----------------------------------------------------------------------------------------------- figures

def overlap_image(predicted, truth) -> np.ndarray:
    """RGB (H, W, 3) comparing two masks: white = both, orange = predicted only, blue = truth only, black = neither."""
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    out = np.zeros(p.shape + (3,), np.float32)
    out[p & t] = (1, 1, 1)
    out[p & ~t] = (0.95, 0.55, 0.1)
    out[~p & t] = (0.2, 0.45, 0.95)
    return out


def masks_figure(images, masks, truth=None, titles: Sequence[str] | None = None, ncols: int = 8):
    """Images with the cluster mask outlined; with ``truth``, a second row per image row shows the overlap
    (white = both, orange = mask only, blue = missed). ``masks`` and ``truth``: bool (N, H, W) at image size."""
    from .plotting import image_grid

    images, masks = list(images), list(np.asarray(masks, bool))
    if truth is None:
        return image_grid(images, titles=titles, masks=masks, ncols=ncols)
    truth = np.asarray(truth, bool)
    cells, outlines, names = [], [], []
    for start in range(0, len(images), ncols):
        chunk = range(start, min(start + ncols, len(images)))
        cells += [images[i] for i in chunk] + [overlap_image(masks[i], truth[i]) for i in chunk]
        outlines += [masks[i] for i in chunk] + [None] * len(chunk)
        names += [titles[i] if titles else "" for i in chunk] + [f"IoU {iou(masks[i], truth[i]):.2f}" for i in chunk]
    return image_grid(cells, titles=names, masks=outlines, ncols=ncols)


def iou_map_figure(table: pd.DataFrame, values: Sequence[str] = ("iou",), titles: Sequence[str] | None = None,
                   block_names: Sequence[str] | None = None):
    """One heat map per column of ``values`` (e.g. "iou", "token_iou", "rule_right"): its mean per block (rows) and
    step (columns) of a ``clustering_iou`` table, each cell annotated, on a common 0-1 colour scale."""
    import matplotlib.pyplot as plt

    from .plotting import DPI

    titles = list(titles) if titles is not None else [f"mean {v}" for v in values]
    grids = [iou_map(table, v) for v in values]
    rows, cols = grids[0].shape
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * (0.4 * cols + 0.6) + 1.8, 0.3 * rows + 1.2),
                             dpi=DPI, layout="constrained", squeeze=False)
    names = [block_names[b] for b in grids[0].index] if block_names is not None else [str(b) for b in grids[0].index]
    for n, (ax, grid, title) in enumerate(zip(axes[0], grids, titles)):
        im = ax.imshow(grid.values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid.values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(cols), [str(c) for c in grid.columns], fontsize=7)
        ax.set_yticks(range(rows), names if n == 0 else [""] * rows, fontsize=7)
        ax.set_xlabel("denoising step", fontsize=8)
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8).ax.tick_params(labelsize=7)
    return fig


def iou_curves_figure(curves: Mapping[str, pd.Series], ceiling: float | None = None, title: str = "",
                      ylabel: str = "mean IoU with the object"):
    """Mean IoU against the denoising step, one line per method (``curves``: name -> Series indexed by step);
    the first line is drawn bold. ``ceiling``: the best an image-token mask can do, as a dashed line."""
    import matplotlib.pyplot as plt

    from .plotting import DPI

    fig, ax = plt.subplots(figsize=(4.6, 2.8), dpi=DPI, layout="constrained")
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot(curve.index, curve.values, marker="o", ms=3, lw=2.2 if i == 0 else 1.1, label=name,
                color=f"C{i}", ls="-" if i < 5 else "--")
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted({int(s) for curve in curves.values() for s in curve.index}))
    if ceiling is not None:
        ax.axhline(ceiling, color="grey", ls=":", lw=1)
        ax.text(ax.get_xlim()[1], ceiling, "token-grid ceiling ", fontsize=6.5, va="bottom", ha="right", color="grey")
    ax.set_xlabel("denoising step (0 = pure noise)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def iou_bars_figure(results: Mapping[str, Sequence[float]], ceiling: float | None = None, title: str = "",
                    ylabel: str = "IoU with the object"):
    """One bar per method: mean IoU with a 95% confidence interval, and each image's IoU as a faint dot; the first
    bar is coloured. ``ceiling``: the best an image-token mask can do, as a dashed line."""
    import matplotlib.pyplot as plt

    from .plotting import DPI

    names = list(results)
    fig, ax = plt.subplots(figsize=(0.8 * len(names) + 1.2, 2.6), dpi=DPI, layout="constrained")
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        v = np.asarray(results[name], float)
        m, lo, hi = mean_ci(v)
        ax.bar(i, m, color="C0" if i == 0 else "0.7", width=0.6)
        ax.errorbar(i, m, yerr=[[m - lo], [hi - m]], color="black", capsize=3, lw=1)
        ax.scatter(i + rng.uniform(-0.2, 0.2, v.size), v, s=3, color="black", alpha=0.25, lw=0)
    if ceiling is not None:
        ax.axhline(ceiling, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig
