"""The functions the chapters teach, exported from their ``#@save`` cells by ``tools/export.py``.

GENERATED: do not edit. Change the chapter's cell and run ``python tools/export.py``; tests/test_export.py fails when
this file is stale.
"""
from __future__ import annotations
import numpy as np
import operator
from sklearn.cluster import KMeans
from threadpoolctl import ThreadpoolController
import torch
from .shapes import PALETTE


# ---------------------------------------- 01_observing

def channel_statistic(mean, steps=None, rows=None):  # used again later
    """The paper's statistic s_d = |mean over image tokens of X[:, d]|, per block and
    channel: (steps, blocks, rows, channels) signed means such as ``Recording.mean`` ->
    (blocks, channels). The magnitude is taken per step and row (one image at one noise
    level), then averaged over ``steps`` and ``rows`` (lists of indices; None: all).
    With guidance, pass the conditional rows: ``rows=rec.conditional_rows(n)``."""
    if mean.ndim != 4:
        raise ValueError(
            f"mean must be (steps, blocks, rows, channels), got {tuple(mean.shape)}"
        )
    mean = mean if steps is None else mean[[steps] if isinstance(steps, int) else steps]
    mean = mean if rows is None else mean[:, :, rows]
    return mean.abs().nanmean(dim=(0, 2))


def top_k(stat, k):  # used again later
    """The k channels with the largest statistic, largest first:
    (..., channels) -> (..., k). ``top_k(stat, 4)[l]``: block l's massive channels."""
    k = operator.index(k)
    if not 1 <= k <= stat.shape[-1]:
        raise ValueError(
            f"k must be between 1 and the {stat.shape[-1]} channels, got {k}"
        )
    return stat.topk(k, dim=-1).indices


def top_to_median(stat, ranks=3):  # used again later
    """How many times the median channel's statistic the 1st, 2nd, ... largest
    channels' are: (..., channels) -> (..., ranks). Sun et al. (2024) call an
    activation massive at about 1000x the median."""
    return stat.topk(ranks, dim=-1).values / stat.median(dim=-1, keepdim=True).values


# ---------------------------------------- 02_disruption

def bottom_k(stat, k):
    """The k channels with the smallest statistic in each block (the paper's control):
    (blocks, k)."""
    return top_k(-stat, k)


def random_k(stat, k, seed=0, exclude=None):
    """k channels per block drawn uniformly among those not in ``exclude`` (blocks, m):
    (blocks, k)."""
    scores = torch.rand(stat.shape, generator=torch.Generator().manual_seed(seed))
    if exclude is not None:
        scores = scores.scatter(-1, exclude, -1.0)  # never drawn
    return top_k(scores, k)


def channel_index(channels, site, x):
    """Indices (rows, tokens, k) of the chosen channels in x for this call.
    ``channels`` is (blocks, k), the same for every image, or (blocks, images, k),
    one set per image (row r is image r % images)."""
    idx = channels[site.block]
    if idx.ndim == 2:
        idx = idx[torch.as_tensor(site.rows) % idx.shape[0]]
    idx = idx.expand(x.shape[0], -1) if idx.ndim == 1 else idx
    return idx[:, None, :].expand(-1, x.shape[1], -1).to(x.device)


def zero_channels(channels):
    """An edit for ``helpers.intervene``: set the chosen channels of every image
    token to zero."""

    def edit(x, site):
        return x.scatter(-1, channel_index(channels, site, x), 0.0)

    return edit


def keep_move(edit, channels, kept):
    """The same edit; it also keeps what it does to ``channels`` in
    kept[step, block, first row]."""

    def wrapped(x, site):
        new = edit(x, site)
        idx = channel_index(channels, site, x)
        kept[site.step, site.block, site.rows.start] = (new - x).gather(-1, idx)
        return new

    return wrapped


def add_move(channels, kept):
    """Add a kept move (another run's, on other channels) to the chosen channels."""

    def edit(x, site):
        move = kept[site.step, site.block, site.rows.start].to(x)
        return x.scatter_add(-1, channel_index(channels, site, x), move)

    return edit


# ---------------------------------------- 03_clustering

def colour_truth(images, scenes):
    """Shapes world: the object's pixels in ``images`` (B, H, W, 3) in [0, 1], those
    nearer each scene's object colour than its background colour -> bool (B, H, W).
    ``scenes``: with ``colour`` and ``background`` (Scenes, or parsed captions)."""
    fg = np.array([PALETTE[s.colour] for s in scenes])[:, None, None] / 255
    bg = np.array([PALETTE[s.background] for s in scenes])[:, None, None] / 255
    images = np.asarray(images, np.float64)
    return ((images - fg) ** 2).sum(-1) <= ((images - bg) ** 2).sum(-1) + 1e-6


THREADS = ThreadpoolController()


def foreground_mask(tokens, channels=None):
    """K = 2 k-means of one image's tokens (tokens, width), numpy or torch, on
    ``channels`` (None: all); the foreground is the cluster with fewer tokens on the
    border of the square token grid (ties: the smaller cluster). -> bool (tokens,)"""
    x = torch.as_tensor(tokens).detach().cpu()
    if channels is not None:
        x = x[:, torch.as_tensor(channels).cpu().long()]
    with THREADS.limit(limits=1, user_api="openmp"):  # 64 points: one thread is fastest
        labels = KMeans(n_clusters=2, n_init=4, random_state=0).fit_predict(x.double())
    side = int(round(len(labels) ** 0.5))
    border = np.ones((side, side), bool)
    border[1:-1, 1:-1] = False
    on_border = [np.sum(border.ravel() & (labels == c)) for c in (0, 1)]
    size = [np.sum(labels == c) for c in (0, 1)]
    foreground = min((0, 1), key=lambda c: (on_border[c], size[c]))
    return torch.from_numpy(labels == foreground)


# ---------------------------------------- 04_prompt_transport

def blend(target, source, mask, alpha=1.0):
    """X_t (1 - M) + X_s M for a bool M, with strength alpha: exactly the source's
    values where M and alpha = 1."""
    return torch.where(mask, torch.lerp(target, source, alpha), target)


def transport_edit(source, channels, mask=None, alpha=1.0):
    """An edit for ``helpers.intervene`` that transports the source into the target on
    ``channels`` (blocks, k) within ``mask`` (bool (rows, tokens), None: every token).
    ``source[step, block]``: the source's values on those channels, (rows, tokens, k)
    with the target's rows; ``alpha``: a number or one per row."""

    def edit(x, site):
        if (site.step, site.block) not in source:
            return x
        rows = slice(site.rows.start, site.rows.stop)
        src = source[site.step, site.block][rows].to(x.device, x.dtype)
        p = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask[rows]
        a = torch.as_tensor(alpha, dtype=x.dtype).reshape(-1)
        a = (a if a.numel() == 1 else a[rows]).to(x.device)[:, None, None]
        m = channels[site.block].to(x.device)
        new = x.clone()
        new[..., m] = blend(x[..., m], src, p.to(x.device)[..., None], a)
        return new

    return edit
