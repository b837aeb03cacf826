"""Token masks and pixel masks: a token is a patch of pixels in raster order (as the pipelines pack latents), so a
token mask on a (rows, cols) grid becomes a pixel mask by repeating each entry, and a pixel mask becomes a token mask
by majority. ``iou`` scores one mask against another (chapters 3, 4 and 5)."""
from __future__ import annotations

import math

import numpy as np
import torch


def _numpy(mask) -> np.ndarray:
    return mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)


def grid(n_tokens: int) -> tuple[int, int]:
    """(rows, cols) of a square grid of ``n_tokens`` image tokens; a clear error when they do not form one."""
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} image tokens do not form a square grid; reshape to (latent height / patch, "
                         "latent width / patch) yourself")
    return side, side


def token_to_pixels(mask, patch: int, flat: bool | None = None) -> np.ndarray:
    """Bool (..., tokens) or (..., rows, cols) token mask -> (..., rows * patch, cols * patch) pixel mask. ``flat``:
    which form it is (default: flat when the last axis is a square number; (64, 64) is ambiguous and needs it)."""
    m = _numpy(mask).astype(bool)
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    if flat is None:
        square = math.isqrt(m.shape[-1]) ** 2 == m.shape[-1]
        if m.ndim >= 2 and square and m.shape[-2] == m.shape[-1]:
            raise ValueError(f"a token mask of shape {m.shape} is ambiguous: pass flat=True for (..., tokens) "
                             "or flat=False for a (..., rows, cols) grid")
        flat = m.ndim == 1 or square
    if flat:
        m = m.reshape(*m.shape[:-1], *grid(m.shape[-1]))
    return m.repeat(patch, axis=-2).repeat(patch, axis=-1)


def pixels_to_tokens(mask, patch: int) -> np.ndarray:
    """Bool (..., H, W) pixel mask -> (..., H / patch, W / patch): a token is in when at least half its pixels are."""
    m = _numpy(mask).astype(float)
    h, w = m.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"a {h}x{w} mask does not split into {patch}x{patch} patches")
    return m.reshape(*m.shape[:-2], h // patch, patch, w // patch, patch).mean(axis=(-3, -1)) >= 0.5


def iou(a, b) -> np.ndarray | float:
    """Intersection over union of bool masks over their last two axes (leading axes broadcast); two empty masks: 1."""
    a, b = _numpy(a).astype(bool), _numpy(b).astype(bool)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"masks of different sizes {a.shape} and {b.shape}: bring them to one resolution first "
                         "(token_to_pixels or pixels_to_tokens)")
    a, b = np.broadcast_arrays(a, b)
    inter, union = (a & b).sum(axis=(-2, -1)), (a | b).sum(axis=(-2, -1))
    out = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(out) if out.ndim == 0 else out
