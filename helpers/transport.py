"""Transport massive activations from a source trajectory into a target trajectory (chapter 4), in batches.

The edit itself, ``X_target <- X_target (1 - M) + X_source M`` with ``M = p m^T``, is ``helpers.chapters.blend``
inside ``helpers.chapters.transport_edit``, taught in chapter 4. This module runs it two ways:

- **cached**: ``record_source`` keeps a source trajectory's values on chosen channels (k channels x image tokens x
  blocks x steps: small), and ``cached_transport`` writes them into as many targets as you like, each at about the
  cost of a plain generation. ::

      cache = record_source(pipe, sources, channels, steps=range(10))
      images = cached_transport(pipe, cache, targets, mask=masks)       # any subset of the cached channels

- **lockstep**: source and target rows run in one batched call, pair i from the same noise, and every block writes
  the source rows' current values into the target rows. ::

      out = lockstep_transport(pipe, sources, targets, channels)       # out.source, out.target: images

Inputs are lists of prompts or dicts of per-row pipeline inputs. Row i starts from ``helpers.generators``'s rule,
``manual_seed(seed + i)`` (or ``seed[i]`` for a list), so pair i shares its noise. With classifier-free guidance,
uncond rows go to uncond rows and cond to cond: the cache keeps the source's rows per step, and target row r takes
source row ``(r // n_targets) * n_sources + pair``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping

import torch

from .chapters import blend, transport_edit
from .hooks import as_indices, channel_table, intervene, record
from .models import hidden_width, model_of, residual_blocks
from .seeding import generators

#: Pipeline arguments that must agree between the recorded source and a target for their steps to line up.
MATCHED_ARGUMENTS = ("num_inference_steps", "height", "width", "guidance_scale", "true_cfg_scale")


def n_rows(inputs, what: str = "inputs") -> int:
    """Rows of a list of prompts or a dict of per-row tensors; a clear error for anything else."""
    if isinstance(inputs, str):
        raise TypeError(f"{what} must be a list of prompts, got one string; wrap it in a list: [{inputs!r}]")
    if isinstance(inputs, Mapping):
        sizes = {k: v.shape[0] for k, v in inputs.items() if torch.is_tensor(v)}
        if not sizes or len(set(sizes.values())) > 1:
            raise ValueError(f"{what} as a dict needs per-row tensors with one number of rows, got {sizes}")
        return next(iter(sizes.values()))
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(p, str) for p in inputs):
        return len(inputs)
    raise TypeError(f"{what} must be a non-empty list of prompts or a dict of per-row tensors, got "
                    f"{type(inputs).__name__}")


def _kwargs(inputs) -> dict:
    return {"prompt": list(inputs)} if not isinstance(inputs, Mapping) else dict(inputs)


def _noise(n: int, seed=0, latents=None) -> dict:
    if latents is not None:
        if not torch.is_tensor(latents) or latents.shape[0] != n:
            raise ValueError(f"latents must be a tensor with one row per prompt ({n}), got "
                             f"{tuple(getattr(latents, 'shape', ())) or type(latents).__name__}")
        return {"latents": latents}
    return {"generator": generators(n, seed)}


def _resolved(pipe, kwargs: Mapping, name: str):
    """A pipeline argument as the call will see it: given, else the default of ``pipe.__call__``."""
    if name in kwargs:
        return kwargs[name]
    param = inspect.signature(pipe.__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _images(output):
    return output.images if hasattr(output, "images") else output[0]


@dataclass
class SourceCache:
    """A source trajectory's values on chosen channels: ``values[step, block]`` is (rows, tokens, k) for the rows
    of that step (with guidance, every call's rows in call order); ``channels`` (blocks, k) says which channel each
    column holds. ``n_sources``: prompts recorded; ``arguments``: what a target must match; ``images``."""

    values: dict
    channels: torch.Tensor
    n_sources: int
    arguments: dict
    images: object = None

    @property
    def steps(self) -> list[int]:
        return sorted({s for s, _ in self.values})

    @property
    def blocks(self) -> list[int]:
        return sorted({b for _, b in self.values})

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values.values())

    def aligned(self, n_targets: int, rows: int, channels=None, blocks=None, steps=None) -> dict:
        """{(step, block): (rows, tokens, k')} for a target run with ``n_targets`` images and ``rows`` rows per
        step: source row ``(r // n_targets) * n_sources + pair`` for target row r, on ``channels`` (a subset of
        the cached ones, None: all), at ``blocks`` and ``steps`` (subsets, None: all)."""
        if self.n_sources not in (1, n_targets):
            raise ValueError(f"the cache holds {self.n_sources} sources but there are {n_targets} targets: give one "
                             "target per source, or record a single source to transport into every target")
        r = torch.arange(rows)
        source_rows = (r // n_targets) * self.n_sources + (r % n_targets if self.n_sources > 1 else 0)
        out = {}
        for s in _subset("steps", steps, self.steps):
            for b in _subset("blocks", blocks, self.blocks):
                v = self.values[s, b]
                if int(source_rows.max()) >= v.shape[0]:
                    raise ValueError(f"the target has {rows} rows per step but the source was recorded with "
                                     f"{v.shape[0]}: record and transport with the same guidance settings")
                out[s, b] = v[source_rows][..., self.columns(channels, b)]
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
    if asked is None:
        return cached
    missing = sorted(set(asked) - set(cached))
    if missing:
        raise ValueError(f"{name} {missing} are not in the cache (it holds {cached}); record_source with them")
    return asked


def record_source(pipe, source, channels, blocks=None, steps=None, seed=0, latents=None,
                  dtype: torch.dtype | None = None, **pipe_kwargs) -> SourceCache:
    """Generate the sources and keep their image tokens on ``channels`` ((k,) or (blocks, k)) at ``blocks`` and
    ``steps`` (None: all), on CPU in ``dtype`` (default: the model's). Record the largest channel set, blocks and
    steps you will need: ``cached_transport`` can use any subset."""
    n = n_rows(source, "source")
    table = channel_table(channels, len(residual_blocks(pipe)), hidden_width(pipe))
    keep = {"blocks": blocks, "steps": steps, "channels": table, "dtype": dtype}
    pipe_kwargs.setdefault("output_type", "np")
    with record(pipe, keep_tokens=keep) as rec:
        images = _images(pipe(**_kwargs(source), **_noise(n, seed, latents), **pipe_kwargs))
    arguments = {name: _resolved(pipe, pipe_kwargs, name) for name in MATCHED_ARGUMENTS}
    return SourceCache(rec.tokens, table, n, arguments, images)


def cached_transport(pipe, cache: SourceCache, target, channels=None, blocks=None, steps=None, mask=None,
                     alpha=1.0, seed=0, latents=None, **pipe_kwargs):
    """Generate the targets, transporting the cached source values into them: source i into target i (or one
    source into every target). ``channels``, ``blocks``, ``steps``: subsets of the cache's (None: all). ``mask``:
    bool (tokens,) or (targets, tokens), where to write (None: every token); ``alpha``: a number in [0, 1] or one
    per target. ``pipe_kwargs`` must agree with the recording on MATCHED_ARGUMENTS. Returns the target images."""
    if not isinstance(cache, SourceCache):
        raise TypeError(f"cache must be a SourceCache from record_source, got {type(cache).__name__}")
    m = n_rows(target, "target")
    for name in MATCHED_ARGUMENTS:
        if _resolved(pipe, pipe_kwargs, name) != cache.arguments[name]:
            raise ValueError(f"{name}={_resolved(pipe, pipe_kwargs, name)!r} differs from the recorded source's "
                             f"{cache.arguments[name]!r}: source and target must share it so their steps line up")
    n_tokens = next(iter(cache.values.values())).shape[1]
    rows = _rows_per_step(pipe, m, pipe_kwargs)
    values = cache.aligned(m, rows, channels, blocks, steps)
    table = cache.channels if channels is None else channel_table(channels, cache.channels.shape[0], 1 << 62)
    p, a = _per_row(_check_mask(mask, m, n_tokens), m, rows), _per_row(_check_alpha(alpha, m), m, rows)
    pipe_kwargs.setdefault("output_type", "np")
    with intervene(pipe, edit=transport_edit(values, table, p, a), blocks=sorted({b for _, b in values}),
                   steps=sorted({s for s, _ in values})):
        return _images(pipe(**_kwargs(target), **_noise(m, seed, latents), **pipe_kwargs))


@dataclass
class Transported:
    """Images of a lockstep run: ``source`` (the source rows, untouched) and ``target`` (transported)."""

    source: object
    target: object


def lockstep_transport(pipe, source, target, channels, blocks=None, steps=None, mask=None, alpha=1.0, seed=0,
                       latents=None, **pipe_kwargs) -> Transported:
    """Run sources and targets in one batched call (rows ``[sources; targets]``, pair i from the same noise) and
    write the sources' ``channels`` into the targets at ``blocks`` and ``steps`` (None: all) within ``mask``
    (bool (tokens,) or (pairs, tokens)) with strength ``alpha``. Costs about two generations per target."""
    n = n_rows(source, "source")
    if n_rows(target, "target") != n:
        raise ValueError(f"source has {n} rows but target has {n_rows(target, 'target')}: transport pairs row i of "
                         "the source with row i of the target; give as many of each")
    if isinstance(source, Mapping) != isinstance(target, Mapping):
        raise TypeError("source and target must both be prompt lists or both dicts of pipeline inputs")
    table = channel_table(channels, len(residual_blocks(pipe)), hidden_width(pipe))
    inputs = ({"prompt": list(source) + list(target)} if not isinstance(source, Mapping) else
              {k: torch.cat([source[k], target[k]]) if torch.is_tensor(source[k]) else source[k] for k in source})
    noise = ({"latents": torch.cat([latents, latents])} if latents is not None else
             {"generator": generators(n, seed) + generators(n, seed)})
    p = _check_mask(mask, n, None)
    a = _check_alpha(alpha, n)

    def edit(x, site):
        pairs = x.unflatten(0, (-1, 2, n))                       # (groups, [source, target], pairs, ...)
        ch = table[site.block].to(x.device)
        src, tgt = pairs[:, 0][..., ch], pairs[:, 1][..., ch]
        where = torch.ones(tgt.shape[1:3], dtype=torch.bool) if p is None else p.expand(n, -1)
        new = pairs.clone()
        new[:, 1, ..., ch] = blend(tgt, src, where.to(x.device)[None, ..., None], a.to(x)[None, :, None, None])
        return new.flatten(0, 2)

    pipe_kwargs.setdefault("output_type", "np")
    with intervene(pipe, edit=edit, blocks=blocks, steps=steps):
        images = _images(pipe(**inputs, **noise, **pipe_kwargs))
    return Transported(source=images[:n], target=images[n:])


def _rows_per_step(pipe, n: int, pipe_kwargs: Mapping) -> int:
    """Rows of one denoising step for n images: 2n with guidance (either layout), else n."""
    model = model_of(pipe)
    return 2 * n if model is not None and model.guided(dict(pipe_kwargs)) else n


def _check_mask(mask, n: int, n_tokens: int | None):
    if mask is None:
        return None
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.ndim not in (1, 2):
        raise TypeError(f"mask must be a bool tensor (tokens,) or ({n}, tokens), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    if n_tokens is not None and mask.shape[-1] != n_tokens:
        raise ValueError(f"the mask covers {mask.shape[-1]} tokens but the image has {n_tokens} image tokens")
    if mask.ndim == 2 and mask.shape[0] not in (1, n):
        raise ValueError(f"a 2-D mask needs one row per pair ({n}), got {mask.shape[0]} rows")
    return mask if mask.ndim == 2 else mask[None]


def _check_alpha(alpha, n: int) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    a = a.expand(n) if a.numel() == 1 else a
    if a.numel() != n:
        raise ValueError(f"alpha must be one number or one per target ({n}), got {a.numel()} values")
    if not torch.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"alpha must be in [0, 1], got {a.tolist()}")
    return a.clone()


def _per_row(t: torch.Tensor | None, n: int, rows: int):
    """A per-pair tensor (n or 1, ...) repeated for every group of n rows of a step."""
    if t is None:
        return None
    return t.expand(n, *t.shape[1:]).repeat(rows // n, *([1] * (t.ndim - 1)))
