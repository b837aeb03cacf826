"""Transport massive activations from a source trajectory into a target trajectory (chapter 4), in batches.

The edit, ``X_target <- X_target (1 - M) + X_source M`` with ``M = p m^T``, is ``helpers.chapters.blend`` inside
``helpers.chapters.transport_edit``, taught in chapter 4: it writes the source's values exactly (in every dtype) where
the mask is on and alpha is 1. **Cached**: ``record_source`` keeps a source trajectory's values on chosen channels (k
channels x tokens x blocks x steps: small) and ``cached_transport`` writes them into as many targets as you like.
**Lockstep**: ``lockstep_transport`` runs sources and targets in one batch, pair i from the same noise, and every
block writes the source rows' current values into the target rows. ::

    cache = record_source(pipe, sources, channels, steps=range(10))
    images = cached_transport(pipe, cache, targets, mask=masks)       # any subset of the cached channels
    out = lockstep_transport(pipe, sources, targets, channels)        # out.source, out.target: images

Inputs are lists of prompts or dicts of per-row pipeline inputs, noise by ``helpers.seeding``'s rule. Under guidance
uncond rows go to uncond rows and cond to cond, in every call of a step: target row r takes source row
``(r // n_targets) * n_sources + pair``. Only the generated image's tokens are transported (``helpers.hooks``).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .chapters import blend, transport_edit
from .hooks import as_indices, channel_table, intervene, record
from .models import hidden_width, residual_blocks
from .seeding import call_arguments

#: Pipeline arguments that must agree between the recorded source and a target for their steps to line up.
MATCHED_ARGUMENTS = ("num_inference_steps", "height", "width", "guidance_scale", "true_cfg_scale")


def _resolved(pipe, kwargs: Mapping, name: str):
    """A pipeline argument as the call will see it: given, else the default of ``pipe.__call__``."""
    default = getattr(inspect.signature(pipe.__call__).parameters.get(name), "default", None)
    return kwargs.get(name, None if default is inspect.Parameter.empty else default)


@dataclass
class SourceCache:
    """A source trajectory's values on chosen channels: ``values[step, block]`` (rows, tokens, k) for the rows of that
    step in call order; ``channels`` (blocks, k): which channel each column holds; ``n_sources``: prompts recorded;
    ``arguments``: what a target must match; ``images``."""
    values: dict
    channels: torch.Tensor
    n_sources: int
    arguments: dict
    images: object = None

    steps = property(lambda self: sorted({s for s, _ in self.values}))
    blocks = property(lambda self: sorted({b for _, b in self.values}))
    nbytes = property(lambda self: sum(v.numel() * v.element_size() for v in self.values.values()))

    def aligned(self, n_targets: int, channels=None, blocks=None, steps=None) -> dict:
        """{(step, block): (rows, tokens, k')} for n targets (target row r takes source row ``(r // n_targets) *
        n_sources + pair``) on ``channels``, ``blocks`` and ``steps``, subsets of the cached ones (None: all)."""
        if self.n_sources not in (1, n_targets):
            raise ValueError(f"the cache holds {self.n_sources} sources but there are {n_targets} targets: give one "
                             "target per source, or record a single source to transport into every target")
        out = {}
        for s in _subset("steps", steps, self.steps):
            for b in _subset("blocks", blocks, self.blocks):
                v = self.values[s, b]
                r = torch.arange(v.shape[0] // self.n_sources * n_targets)
                out[s, b] = v[(r // n_targets) * self.n_sources + (r % n_targets) * (self.n_sources > 1)]
                out[s, b] = out[s, b][..., self.columns(channels, b)]
        return out

    def columns(self, channels, block: int) -> torch.Tensor:
        """Positions in the cached channel axis of ``channels[block]``; an error names channels not cached."""
        if channels is None:
            return torch.arange(self.channels.shape[1])
        wanted = channel_table(channels, self.channels.shape[0], 1 << 62)[block]
        hit = self.channels[block][None, :] == wanted[:, None]
        if not hit.any(1).all():
            raise ValueError(f"channels {wanted[~hit.any(1)].tolist()} of block {block} are not in the cache (it "
                             f"holds {self.channels[block].tolist()}); record_source with a larger channel set")
        return hit.float().argmax(1)

    def __repr__(self):
        return (f"SourceCache({self.n_sources} sources, {len(self.steps)} steps x {len(self.blocks)} blocks x "
                f"{self.channels.shape[1]} channels, {self.nbytes / 1e6:.2f} MB)")


def _subset(name: str, asked, cached: list[int]) -> list[int]:
    asked = as_indices(name, asked)
    missing = sorted(set(asked or ()) - set(cached))
    if missing:
        raise ValueError(f"{name} {missing} are not in the cache (it holds {cached}); record_source with them")
    return cached if asked is None else asked


def record_source(pipe, source, channels, blocks=None, steps=None, seed=0, latents=None,
                  dtype: torch.dtype | None = None, **pipe_kwargs) -> SourceCache:
    """Generate the sources, keeping their image tokens on ``channels`` ((k,) or (blocks, k)) at ``blocks`` and
    ``steps`` (None: all) on CPU in ``dtype``; ``cached_transport`` can use any subset of them."""
    n, call = call_arguments(source, seed, latents, **{"output_type": "np", **pipe_kwargs})
    table = channel_table(channels, len(residual_blocks(pipe)), hidden_width(pipe))
    with record(pipe, keep_tokens={"blocks": blocks, "steps": steps, "channels": table, "dtype": dtype}) as rec:
        images = pipe(**call).images
    arguments = {name: _resolved(pipe, pipe_kwargs, name) for name in MATCHED_ARGUMENTS}
    return SourceCache(rec.tokens, table, n, arguments, images)


def cached_transport(pipe, cache: SourceCache, target, channels=None, blocks=None, steps=None, mask=None,
                     alpha=1.0, seed=0, latents=None, **pipe_kwargs):
    """The target images, with source i (or the one source) transported into target i on ``channels``, ``blocks``,
    ``steps`` (subsets of the cache's, None: all) within ``mask`` (bool (tokens,) or (targets, tokens), None: all)
    with ``alpha`` (a number in [0, 1] or one per target); ``pipe_kwargs`` must match the source's."""
    if not isinstance(cache, SourceCache):
        raise TypeError(f"cache must be a SourceCache from record_source, got {type(cache).__name__}")
    m, call = call_arguments(target, seed, latents, **{"output_type": "np", **pipe_kwargs})
    for name in MATCHED_ARGUMENTS:
        if _resolved(pipe, pipe_kwargs, name) != cache.arguments[name]:
            raise ValueError(f"{name}={_resolved(pipe, pipe_kwargs, name)!r} differs from the recorded source's "
                             f"{cache.arguments[name]!r}: source and target must share it so their steps line up")
    values = cache.aligned(m, channels, blocks, steps)
    table = cache.channels if channels is None else channel_table(channels, cache.channels.shape[0], 1 << 62)
    groups = -(-max(v.shape[0] for v in values.values()) // m)  # per row of a step: the pair's mask and alpha
    p, a = (None if t is None else t.expand(m, *t.shape[1:]).repeat(groups, *([1] * (t.ndim - 1)))
            for t in _pairs(mask, alpha, m, next(iter(values.values())).shape[1]))
    edit = transport_edit(values, table, p, a)

    def checked(x, site):
        if site.rows.stop > values.get((site.step, site.block), x).shape[0]:
            raise ValueError(f"the target's step {site.step} has more rows ({site.rows.stop}) than the recorded "
                             "source's: record and transport with the same guidance settings")
        return edit(x, site)
    with intervene(pipe, edit=checked, blocks=sorted({b for _, b in values}), steps=sorted({s for s, _ in values})):
        return pipe(**call).images


class Transported(NamedTuple):
    source: object  # the source rows' images, untouched
    target: object  # the transported targets' images


def lockstep_transport(pipe, source, target, channels, blocks=None, steps=None, mask=None, alpha=1.0, seed=0,
                       latents=None, **pipe_kwargs) -> Transported:
    """Sources and targets in one batch (rows ``[sources; targets]``, pair i from the same noise), the sources'
    ``channels`` written into the targets at ``blocks`` and ``steps`` (None: all) within ``mask`` with ``alpha``."""
    if isinstance(source, Mapping) != isinstance(target, Mapping):
        raise TypeError("source and target must both be prompt lists or both dicts of pipeline inputs")
    n, call = call_arguments(source, seed, latents, **{"output_type": "np", **pipe_kwargs})
    if call_arguments(target)[0] != n:
        raise ValueError(f"source has {n} rows but target has {call_arguments(target)[0]}: transport pairs row i of "
                         "the source with row i of the target; give as many of each")
    for key, value in call_arguments(target, seed, latents)[1].items():  # rows [sources; targets]
        call[key] = torch.cat([call[key], value]) if torch.is_tensor(value) else (
            call[key] + value if isinstance(value, list) else call[key])
    table = channel_table(channels, len(residual_blocks(pipe)), hidden_width(pipe))
    p, a = _pairs(mask, alpha, n, None)

    def edit(x, site):
        pairs = x.unflatten(0, (-1, 2, n))                       # (groups, [source, target], pairs, ...)
        ch, where = table[site.block].to(x.device), torch.ones(1, x.shape[1], dtype=torch.bool) if p is None else p
        if where.shape[-1] != x.shape[1]:
            raise ValueError(f"the mask covers {where.shape[-1]} tokens but the image has {x.shape[1]} image tokens")
        src, tgt, where = pairs[:, 0][..., ch], pairs[:, 1][..., ch], where.expand(n, -1)
        new = pairs.clone()
        new[:, 1, ..., ch] = blend(tgt, src, where.to(x.device)[None, ..., None], a.to(x)[None, :, None, None])
        return new.flatten(0, 2)
    with intervene(pipe, edit=edit, blocks=blocks, steps=steps):
        images = pipe(**call).images
    return Transported(source=images[:n], target=images[n:])


def _pairs(mask, alpha, n: int, n_tokens: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The mask (None, or bool (1 or n, tokens)) and alpha (n,) of n pairs; clear errors for anything else."""
    if mask is not None and (not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.ndim not in (1, 2)):
        raise TypeError(f"mask must be a bool tensor (tokens,) or ({n}, tokens), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    if mask is not None and n_tokens is not None and mask.shape[-1] != n_tokens:
        raise ValueError(f"the mask covers {mask.shape[-1]} tokens but the image has {n_tokens} image tokens")
    if mask is not None and mask.ndim == 2 and mask.shape[0] not in (1, n):
        raise ValueError(f"a 2-D mask needs one row per pair ({n}), got {mask.shape[0]} rows")
    a = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    a = a.expand(n).clone() if a.numel() == 1 else a
    if a.numel() != n or not torch.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"alpha must be in [0, 1], one number or one per target ({n}), got {a.tolist()}")
    return (None if mask is None else mask.reshape(-1, mask.shape[-1])), a
