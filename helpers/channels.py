"""Which channels are massive: the paper's statistic, per-block top-k / bottom-k / random-k selection, and summaries.

The statistic of channel d in a block is ``s_d = |mean over image tokens of X[:, d]|`` (Turri et al. 2026), chosen
per block. Selections return ``(..., k)`` LongTensors that ``helpers.intervene(pipe, channels=...)`` takes as is.
"""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "max", "median")


def _pick(name: str, index, size: int) -> torch.Tensor:
    index = torch.arange(size) if index is None else torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if index.numel() == 0 or index.min() < -size or index.max() >= size:
        raise IndexError(f"{name} {index.tolist()} out of range for {size} {name}")
    return index


def channel_statistic(recording, steps=None, prompts=None, reduce: str = "mean", per: str | None = None
                      ) -> torch.Tensor:
    """s_d = |mean over image tokens| per (block, channel), aggregated over the chosen steps and prompts (rows).

    ``recording``: a Recording, or its ``mean`` tensor (steps, blocks, rows, channels). ``reduce``: "mean", "max" or
    "median" over steps and prompts. ``per="step"`` or ``per="prompt"`` keeps that axis in front: (n, blocks,
    channels), to compare selections across steps or prompts. Default result: (blocks, channels).
    """
    mean = recording.mean if hasattr(recording, "mean") and not torch.is_tensor(recording) else recording
    if not torch.is_tensor(mean) or mean.ndim != 4:
        raise ValueError(f"expected a Recording or a (steps, blocks, rows, channels) tensor, got "
                         f"{tuple(getattr(mean, 'shape', ())) or type(mean).__name__}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if per not in (None, "step", "prompt"):
        raise ValueError(f"per must be None, 'step' or 'prompt', got {per!r}")
    s = mean[_pick("steps", steps, mean.shape[0])][:, :, _pick("prompts", prompts, mean.shape[2])].abs()
    s = s.permute(0, 2, 1, 3)  # (steps, rows, blocks, channels)
    if per == "prompt":
        s = s.transpose(0, 1)  # (rows, steps, blocks, channels)
    s, dim = (s.flatten(0, 1), 0) if per is None else (s, 1)  # reduce over dim, keep blocks and channels
    if reduce == "mean":
        return s.mean(dim)
    return s.amax(dim) if reduce == "max" else s.median(dim).values


def _check_k(stat: torch.Tensor, k: int) -> None:
    if not torch.is_tensor(stat) or stat.ndim == 0:
        raise TypeError(f"stat must be a tensor (..., channels), got {type(stat).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= stat.shape[-1]:
        raise ValueError(f"k must be an integer in [1, {stat.shape[-1]}] (the number of channels), got {k!r}")


def top_k(stat: torch.Tensor, k: int) -> torch.Tensor:
    """The k channels with the largest statistic, per block: (..., channels) -> (..., k), largest first."""
    _check_k(stat, k)
    return stat.topk(k, dim=-1).indices


def bottom_k(stat: torch.Tensor, k: int) -> torch.Tensor:
    """The k channels with the smallest statistic, per block (the paper's control set): (..., k), smallest first."""
    _check_k(stat, k)
    return stat.topk(k, dim=-1, largest=False).indices


def random_k(stat: torch.Tensor, k: int, seed: int = 0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """k channels drawn uniformly per block (a second control set): (..., k). ``stat`` only gives the shape;
    ``exclude`` (..., m), e.g. the top-k channels, are never drawn."""
    _check_k(stat, k)
    scores = torch.rand(stat.shape, generator=torch.Generator().manual_seed(seed))
    if exclude is not None:
        if stat.shape[-1] - exclude.shape[-1] < k:
            raise ValueError(f"cannot draw k={k} channels out of {stat.shape[-1]} with {exclude.shape[-1]} excluded")
        scores = scores.scatter(-1, exclude.expand(*stat.shape[:-1], -1), -1.0)
    return scores.topk(k, dim=-1).indices


def top_to_median(stat: torch.Tensor, ranks: int = 3) -> torch.Tensor:
    """Ratio of the 1st, 2nd, ... ``ranks``-th largest value to the median over channels, per block (Sun et al.
    2024 call an activation massive at about 1000x the median): (..., channels) -> (..., ranks)."""
    _check_k(stat, ranks)
    return stat.topk(ranks, dim=-1).values / stat.median(dim=-1, keepdim=True).values


def persistence(idx: torch.Tensor) -> torch.Tensor:
    """Jaccard overlap |A ∩ B| / |A ∪ B| between every pair of channel sets: (n, k) -> (n, n). Rows may be blocks
    (``top_k(stat, k)``), steps or prompts (``top_k(channel_statistic(rec, per="step"), k)[:, block]``)."""
    if idx.ndim != 2:
        raise ValueError(f"expected channel sets of shape (n, k), got {tuple(idx.shape)}")
    width = int(idx.max()) + 1
    member = torch.zeros(idx.shape[0], width).scatter_(1, idx, 1.0)
    inter = member @ member.T
    sizes = member.sum(1)
    return inter / (sizes[:, None] + sizes[None, :] - inter)


def channel_frequency(idx: torch.Tensor, width: int) -> torch.Tensor:
    """Fraction of the channel sets (rows of ``idx``, (..., k)) that contain each channel: (width,). Channels near 1
    persist across all blocks / steps / prompts."""
    sets = idx.reshape(-1, idx.shape[-1])
    member = torch.zeros(sets.shape[0], width).scatter_(1, sets, 1.0)
    return member.mean(0)
