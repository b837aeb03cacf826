"""Transport massive activations from a source trajectory into a target trajectory (Turri et al. 2026, finding 3).

Inside the denoising loop, at chosen blocks and steps, the target's image tokens take the source's values on the
massive channels ``m`` (per block) within a spatial mask ``p`` over image tokens:

    X_target <- X_target * (1 - M) + X_source * M,   M = p m^T        (alpha = 1)
    X_target <- X_target + alpha * M * (X_source - X_target)          (strength alpha in [0, 1])

Two ways to run it, with the same result for the target rows:

- **lockstep**: source and target rows run together in one batched pipeline call, each pair from the same noise, and
  every chosen block overwrites the target rows with the source rows' values of the same step. Costs about two
  generations per target. ::

      out = lockstep_transport(pipe, sources, targets, channels, blocks=[0, 1, 2], steps=range(10), mask="cluster")
      out.source, out.target                  # images of the source rows and of the transported target rows

- **cached**: record the source's values on the transported channels once (k channels x image tokens per block and
  step: small), then transport them into as many targets as you like, each at about the cost of a plain generation. ::

      cache = record_source(pipe, sources, channels, blocks=[0, 1, 2], steps=range(10))
      images = cached_transport(pipe, cache, targets, mask="cluster")            # any subset of the cache's
      images = cached_transport(pipe, cache, targets, channels=channels[:, :2])  # channels, blocks, steps

``sources`` / ``targets`` are lists of prompts, or dicts of per-row pipeline inputs (e.g. ``{"prompt_embeds": e,
"pooled_prompt_embeds": p}``). Row i starts from the noise of ``torch.Generator().manual_seed(seed + i)`` (or of
``seed[i]`` when ``seed`` is a list, or from ``latents[i]``), in sources and targets alike, so pair i shares its noise;
``plain_generation`` draws rows the same way (the untransported target). ``channels``: (k,) for every block or (blocks, k), as ``helpers.top_k`` returns
(``massive_channels`` records and selects them). Spatial masks ``mask``:

- ``None``: every image token;
- a bool tensor ``(tokens,)`` for all rows, ``(pairs, tokens)`` one per pair (per source in the cached case);
- ``"cluster"``: the source's foreground at that block and step, from K = 2 k-means on the transported channels
  (``foreground_mask``: the cluster touching the image border less, as in chapter 3);
- a dict ``{(step, block): bool (rows, tokens)}``, e.g. ``cluster_masks(cache, top)``, to reuse one set of masks
  for other channel sets (the random-k control under the massive channels' mask).

With classifier-free guidance the source's uncond rows are transported into the target's uncond rows, and cond
into cond (see ``helpers.activations`` for the row layout). Arguments are checked before any hook is registered.

Also here: ``interpolated_prompt_embeds`` (the text-side baseline), ``difference_share`` (how much of the
source-target difference lies on given channels), shapes-only scoring (``attribute_pairs``, ``transport_scores``)
and the chapter's figures (``plot_*``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

from .activations import intervene, record
from .channels import channel_statistic, top_k
from .models import hidden_width, residual_blocks

MaskSpec = None | str | torch.Tensor | Mapping


# ------------------------------------------------------------------------------------------------ inputs and noise

def _rows_of(inputs, what: str) -> int:
    """Number of rows of a list of prompts or a dict of per-row tensors; a clear error for anything else."""
    if isinstance(inputs, str):
        raise TypeError(f"{what} must be a list of prompts (or a dict of per-row pipeline inputs), got one string; "
                        f"wrap it in a list: [{inputs!r}]")
    if isinstance(inputs, Mapping):
        sizes = {k: v.shape[0] for k, v in inputs.items() if torch.is_tensor(v)}
        if not sizes:
            raise TypeError(f"{what} as a dict needs per-row tensors (e.g. prompt_embeds), got keys {list(inputs)}")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{what} tensors have different numbers of rows: {sizes}")
        return next(iter(sizes.values()))
    if isinstance(inputs, Sequence) and inputs and all(isinstance(p, str) for p in inputs):
        return len(inputs)
    raise TypeError(f"{what} must be a non-empty list of prompts or a dict of per-row tensors, got "
                    f"{type(inputs).__name__}")


def _as_kwargs(inputs) -> dict:
    return {"prompt": list(inputs)} if not isinstance(inputs, Mapping) else dict(inputs)


def _concat_inputs(first, second) -> dict:
    """One call's inputs from two row sets: prompts are joined, per-row tensors concatenated along rows."""
    if isinstance(first, Mapping) != isinstance(second, Mapping):
        raise TypeError("source and target must both be prompt lists or both be dicts of pipeline inputs")
    if not isinstance(first, Mapping):
        return {"prompt": list(first) + list(second)}
    if set(first) != set(second):
        raise ValueError(f"source and target give different inputs: {sorted(first)} vs {sorted(second)}")
    out = {}
    for key in first:
        a, b = first[key], second[key]
        if torch.is_tensor(a):
            if not torch.is_tensor(b) or a.shape[1:] != b.shape[1:]:
                raise ValueError(f"source and target {key!r} differ in shape beyond the rows: "
                                 f"{tuple(a.shape)} vs {tuple(getattr(b, 'shape', ()))}")
            out[key] = torch.cat([a, b])
        elif a != b:
            raise ValueError(f"source and target {key!r} differ ({a!r} vs {b!r}); give one value for both")
        else:
            out[key] = a
    return out


def row_noise(n: int, seed=0, latents: torch.Tensor | None = None) -> dict:
    """Pipeline kwargs drawing row i from ``manual_seed(seed + i)`` (``seed`` an int), from ``manual_seed(seed[i])``
    (a list of n ints: repeat a seed to give several rows the same noise), or from ``latents[i]``: ``generator=`` a
    list of CPU generators (diffusers' ``randn_tensor`` seeds each row by its own), or ``latents=``."""
    if latents is not None:
        if not torch.is_tensor(latents) or latents.shape[0] != n:
            raise ValueError(f"latents must be a tensor with one row per prompt ({n}), got "
                             f"{tuple(getattr(latents, 'shape', ())) or type(latents).__name__}")
        return {"latents": latents}
    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + i for i in range(n)]
    elif isinstance(seed, Sequence) and all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"seed as a list needs one seed per row ({n}), got {len(seeds)}")
    else:
        raise TypeError(f"seed must be an integer or a list of integers (one per row), got {seed!r}")
    return {"generator": [torch.Generator().manual_seed(s) for s in seeds]}


def _images(output):
    return output.images if hasattr(output, "images") else output[0]


def _resolved(pipe, kwargs: Mapping, name: str):
    """A pipeline argument as the call will see it: given, else the default of ``pipe.__call__``."""
    if name in kwargs:
        return kwargs[name]
    param = inspect.signature(pipe.__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def plain_generation(pipe, inputs, seed=0, latents: torch.Tensor | None = None, **pipe_kwargs):
    """Images of a plain generation, row i from ``manual_seed(seed + i)`` as in the transport functions (so row i
    is the untransported target of pair i). ``pipe_kwargs`` go to the pipeline (``output_type="np"`` by default)."""
    n = _rows_of(inputs, "inputs")
    pipe_kwargs.setdefault("output_type", "np")
    return _images(pipe(**_as_kwargs(inputs), **row_noise(n, seed, latents), **pipe_kwargs))


# ------------------------------------------------------------------------------------------------ channels, masks

def massive_channels(pipe, inputs, k: int, seed: int = 0, steps=None, **pipe_kwargs) -> torch.Tensor:
    """The top-k channels per block, (blocks, k), by |mean over image tokens| over ``steps`` (None: all) and all rows
    of a plain generation of ``inputs``."""
    with record(pipe) as rec:
        plain_generation(pipe, inputs, seed=seed, **{**pipe_kwargs, "output_type": "latent"})
    return top_k(channel_statistic(rec, steps=steps), k)


def foreground_mask(tokens: torch.Tensor, iterations: int = 10, rule: str = "border") -> torch.Tensor:
    """K = 2 k-means over the image tokens of each row, on the given channels: (rows, tokens, k) -> bool
    (rows, tokens), True on the foreground cluster, picked as in ``helpers.clustering``: ``"border"``, the cluster
    with fewer tokens on the outer ring of a square token grid (the subject rarely touches the border; ties and
    non-square grids fall back to the smaller cluster), or ``"smaller"``, the cluster with fewer tokens.

    Deterministic: the two centroids start at the tokens with the lowest and highest projection on the tokens' first
    principal direction. Batched torch (no restarts), so it runs on the pipeline's device inside the denoising loop.
    """
    if not torch.is_tensor(tokens) or tokens.ndim != 3:
        raise ValueError(f"tokens must be (rows, tokens, channels), got {tuple(getattr(tokens, 'shape', ()))}")
    if rule not in ("border", "smaller"):
        raise ValueError(f"rule must be 'border' or 'smaller', got {rule!r}")
    x = tokens.float()
    centred = x - x.mean(1, keepdim=True)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]          # (rows, k)
    proj = (centred * direction[:, None]).sum(-1)                                 # (rows, tokens)
    rows = torch.arange(x.shape[0], device=x.device)
    centroids = torch.stack([x[rows, proj.argmin(1)], x[rows, proj.argmax(1)]], 1)  # (rows, 2, k)
    for _ in range(iterations):
        labels = torch.cdist(x, centroids).argmin(-1)                             # (rows, tokens)
        onehot = torch.nn.functional.one_hot(labels, 2).to(x.dtype)               # (rows, tokens, 2)
        counts = onehot.sum(1)                                                    # (rows, 2)
        sums = onehot.transpose(1, 2) @ x                                         # (rows, 2, k)
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centroids)
    labels = torch.cdist(x, centroids).argmin(-1)
    onehot = torch.nn.functional.one_hot(labels, 2)
    score = onehot.sum(1) * 1.0                                                    # tokens per cluster
    side = int(round(x.shape[1] ** 0.5))
    if rule == "border" and side * side == x.shape[1] and side > 2:
        ring = torch.ones(side, side, dtype=torch.bool, device=x.device)
        ring[1:-1, 1:-1] = False
        # fewer border tokens first; the cluster size (scaled below one border token) breaks ties
        score = (onehot * ring.reshape(1, -1, 1)).sum(1) + score / (x.shape[1] + 1)
    foreground = (score[:, 1] <= score[:, 0]).long()                              # ties: cluster 1
    return labels == foreground[:, None]


def _channel_table(channels, n_blocks: int, width: int) -> torch.Tensor:
    """(blocks, k) LongTensor from (k,) or (blocks, k) channel indices; clear errors otherwise."""
    idx = torch.as_tensor(channels)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim not in (1, 2) or idx.shape[-1] == 0:
        raise TypeError(f"channels must be integer indices of shape (k,) or (blocks={n_blocks}, k), got dtype "
                        f"{idx.dtype} shape {tuple(idx.shape)}")
    if idx.ndim == 2 and idx.shape[0] != n_blocks:
        raise ValueError(f"2-D channels need one row per block ({n_blocks}), got {idx.shape[0]} rows")
    if idx.min() < 0 or idx.max() >= width:
        raise IndexError(f"channel indices must be in [0, {width}), got range [{int(idx.min())}, {int(idx.max())}]")
    idx = idx.long()
    return (idx[None].expand(n_blocks, -1) if idx.ndim == 1 else idx).clone()


def _check_indices(name: str, values, upper: int | None) -> list[int] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, int) else list(values)
    if not values:
        raise ValueError(f"{name} is empty: give at least one index, or None for all")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be integers, got {v!r}")
        if v < 0 or (upper is not None and v >= upper):
            raise IndexError(f"{name} index {v} out of range [0, {upper if upper is not None else 'inf'})")
    return sorted(set(values))


def _check_alpha(alpha, n: int) -> torch.Tensor:
    """alpha as a (n,) float tensor: one number for all pairs or one per pair, each in [0, 1]."""
    a = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    if a.numel() == 1:
        a = a.expand(n)
    if a.numel() != n:
        raise ValueError(f"alpha must be one number or one per target ({n}), got {a.numel()} values")
    if not torch.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"alpha must be in [0, 1], got {a.tolist()}")
    return a.clone()


def _check_mask(mask: MaskSpec, n: int, n_tokens: int | None, what: str = "pairs"):
    """Validate a spatial mask spec: None, "cluster", bool (tokens,) / (n, tokens), or {(step, block): bool}."""
    if mask is None or (isinstance(mask, str) and mask == "cluster"):
        return mask
    if isinstance(mask, str):
        raise ValueError(f"mask must be None, 'cluster', a bool tensor or a dict of masks, got {mask!r}")
    tensors = mask.values() if isinstance(mask, Mapping) else [mask]
    for t in tensors:
        if not torch.is_tensor(t) or t.dtype != torch.bool or t.ndim not in (1, 2):
            raise TypeError(f"a spatial mask must be a bool tensor (tokens,) or ({what}, tokens), got "
                            f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if n_tokens is not None and t.shape[-1] != n_tokens:
            raise ValueError(f"the spatial mask covers {t.shape[-1]} tokens but the image has {n_tokens} image "
                             f"tokens; give one entry per image token")
        if t.ndim == 2 and not isinstance(mask, Mapping) and t.shape[0] != n:
            raise ValueError(f"a 2-D spatial mask needs one row per {what[:-1]} ({n}), got {t.shape[0]} rows")
    return mask


def _image_tokens_hint(pipe, kwargs: Mapping) -> int | None:
    """The number of image tokens, where it can be told without running: packed latents (B, tokens, C), or the
    book model (4x4-pixel patches). None where only the first block call will tell."""
    latents = kwargs.get("latents")
    if torch.is_tensor(latents) and latents.ndim == 3:
        return latents.shape[1]
    if type(pipe).__name__ == "ShapesPipeline":
        from .shapes.pipeline import PATCH
        return (_resolved(pipe, kwargs, "height") // PATCH) * (_resolved(pipe, kwargs, "width") // PATCH)
    return None


def _token_mask(mask, step: int, block: int, pairs: torch.Tensor, rows: torch.Tensor, n_pairs: int,
                source_tokens: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(len(rows), tokens, 1) float spatial mask for target rows whose sources are ``pairs`` (index among the
    ``n_pairs`` sources) and ``rows`` (index among the source rows of the step: with guidance, uncond and cond rows).
    A 2-D mask has one row for all, one per source (``n_pairs`` rows) or one per source row of the step;
    ``source_tokens`` (len(rows), tokens, k): the sources' transported channels, for "cluster"."""
    if mask is None:
        return torch.ones(len(pairs), 1, 1, device=x.device, dtype=x.dtype)
    if isinstance(mask, str):
        p = foreground_mask(source_tokens)
    else:
        p = mask.get((step, block)) if isinstance(mask, Mapping) else mask
        if p is None:
            raise KeyError(f"the mask dict has no entry for (step={step}, block={block}); give one for every "
                           "transported step and block")
        p = p.to(x.device)
        if p.ndim == 2 and p.shape[0] == 1:
            p = p.expand(len(pairs), -1)
        elif p.ndim == 2:
            index = pairs if p.shape[0] == n_pairs else rows
            if int(index.max()) >= p.shape[0]:
                raise ValueError(f"the mask for (step={step}, block={block}) has {p.shape[0]} rows, but this step "
                                 f"needs {int(index.max()) + 1}")
            p = p[index.to(p.device)]
        else:
            p = p[None].expand(len(pairs), -1)
    if p.shape[-1] != x.shape[1]:
        raise ValueError(f"the spatial mask covers {p.shape[-1]} tokens but the blocks have {x.shape[1]} image "
                         "tokens; give one entry per image token")
    return p.to(x.dtype)[..., None]


# ------------------------------------------------------------------------------------------------ lockstep

@dataclass
class Transported:
    """Images of a lockstep run: ``source`` (the source rows, untouched) and ``target`` (transported)."""

    source: object
    target: object


def _check_common(pipe, channels, blocks, steps):
    blocks_all = residual_blocks(pipe)  # raises for unsupported transformers
    table = _channel_table(channels, len(blocks_all), hidden_width(pipe))
    blocks = _check_indices("blocks", blocks, len(blocks_all))
    steps = _check_indices("steps", steps, None)
    return table, blocks, steps


def lockstep_transport(pipe, source, target, channels, blocks: Iterable[int] | None = None,
                       steps: Iterable[int] | None = None, mask: MaskSpec = None, alpha=1.0, seed=0,
                       latents: torch.Tensor | None = None, **pipe_kwargs) -> Transported:
    """Run sources and targets in one batched call (rows ``[sources..., targets...]``, pair i from the same noise)
    and transport the sources' ``channels`` into the targets at ``blocks`` and ``steps`` (None: all) within
    ``mask``, with strength ``alpha`` (one number, or one per pair).

    ``latents``: (pairs, ...) starting noise, used for both rows of each pair; else row i of each side is seeded
    ``seed + i``. ``pipe_kwargs`` go to the pipeline (``output_type="np"`` by default).
    Returns ``Transported(source=images, target=images)``.
    """
    n = _rows_of(source, "source")
    if _rows_of(target, "target") != n:
        raise ValueError(f"source has {n} rows but target has {_rows_of(target, 'target')}: transport pairs row i "
                         "of the source with row i of the target; give as many of each (repeat a single source)")
    table, blocks, steps = _check_common(pipe, channels, blocks, steps)
    if latents is not None:
        row_noise(n, latents=latents)  # checks the rows
        latents = torch.cat([latents, latents])
    else:
        row_noise(n, seed)  # checks the seeds
    inputs = _concat_inputs(source, target)
    mask = _check_mask(mask, n, _image_tokens_hint(pipe, {**pipe_kwargs, **({"latents": latents}
                                                                           if latents is not None else {})}))
    strength = _check_alpha(alpha, n)
    seen: dict[tuple[int, int], int] = {}

    def values(step: int, block: int, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % (2 * n):
            raise RuntimeError(f"a transformer call has {x.shape[0]} rows, not a multiple of 2 x {n} pairs")
        offset = seen.get((step, block), 0)                       # rows of earlier calls of this step
        seen[step, block] = offset + x.shape[0]
        groups = x.unflatten(0, (-1, 2, n))                      # (groups, [source, target], pairs, tokens, width)
        g = groups.shape[0]
        pairs = torch.arange(n).repeat(g)
        rows = (offset // (2 * n) + torch.arange(g)).repeat_interleave(n) * n + pairs
        ch = table[block].to(x.device)
        src, tgt = groups[:, 0, ..., ch], groups[:, 1, ..., ch]  # (groups, pairs, tokens, k)
        p = _token_mask(mask, step, block, pairs, rows, n, src.flatten(0, 1), x).unflatten(0, (-1, n))
        a = strength.to(x.device, x.dtype)[:, None, None]
        out = groups.clone()
        out[:, 1, ..., ch] = tgt + a * p * (src - tgt)
        return out.flatten(0, 2)

    pipe_kwargs.setdefault("output_type", "np")
    noise = {"latents": latents} if latents is not None else {
        "generator": row_noise(n, seed)["generator"] + row_noise(n, seed)["generator"]}  # pair i: the same noise
    with intervene(pipe, channels=table, mode="replace", values=values, blocks=blocks, steps=steps):
        images = _images(pipe(**inputs, **noise, **pipe_kwargs))
    return Transported(source=images[:n], target=images[n:])


# ------------------------------------------------------------------------------------------------ cached

#: Pipeline arguments that must agree between the recorded source and a target for their steps to line up.
MATCHED_ARGUMENTS = ("num_inference_steps", "height", "width", "guidance_scale")


@dataclass
class SourceCache:
    """A source trajectory's values on chosen channels: ``values[step, block]`` is (rows, tokens, k) for the rows of
    that step (with classifier-free guidance: every call's rows, in call order), ``channels`` (blocks, k) the
    channel indices the last axis holds. ``n_sources``: prompts recorded; ``arguments``: the pipeline arguments the
    target must match (MATCHED_ARGUMENTS); ``images``: the source's images."""

    values: dict
    channels: torch.Tensor
    blocks: list
    steps: list
    n_sources: int
    n_tokens: int
    arguments: dict
    images: object = None
    block_names: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values.values())

    def __repr__(self):
        return (f"SourceCache({self.n_sources} sources, {len(self.steps)} steps x {len(self.blocks)} blocks x "
                f"{self.channels.shape[1]} channels x {self.n_tokens} tokens, {self.nbytes / 1e6:.2f} MB)")


def record_source(pipe, source, channels, blocks: Iterable[int] | None = None, steps: Iterable[int] | None = None,
                  seed=0, latents: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                  **pipe_kwargs) -> SourceCache:
    """Generate the sources (row i seeded ``seed + i``, or from ``latents[i]``) and keep their image tokens on
    ``channels`` at ``blocks`` and ``steps`` (None: all), on CPU in ``dtype`` (default: the model's). Record the
    largest channel set, blocks and steps you will need: ``cached_transport`` can use any subset of them."""
    n = _rows_of(source, "source")
    table, blocks, steps = _check_common(pipe, channels, blocks, steps)
    noise = row_noise(n, seed, latents)
    kept: dict[tuple[int, int], list[torch.Tensor]] = {}

    def keep(step: int, block: int, x: torch.Tensor) -> torch.Tensor:
        kept.setdefault((step, block), []).append(x[..., table[block].to(x.device)].to("cpu", dtype or x.dtype))
        return x  # unchanged: "replace" with the tokens' own values

    pipe_kwargs.setdefault("output_type", "np")
    with intervene(pipe, channels=table, mode="replace", values=keep, blocks=blocks, steps=steps):
        images = _images(pipe(**_as_kwargs(source), **noise, **pipe_kwargs))
    values = {key: torch.cat(parts) for key, parts in kept.items()}
    if not values:
        raise ValueError(f"nothing was recorded: the run had fewer steps than the chosen steps {steps}")
    arguments = {name: _resolved(pipe, pipe_kwargs, name) for name in MATCHED_ARGUMENTS}
    names = [b.name for b in residual_blocks(pipe)]
    return SourceCache(values=values, channels=table, blocks=sorted({b for _, b in values}),
                       steps=sorted({s for s, _ in values}), n_sources=n, n_tokens=next(iter(values.values())).shape[1], arguments=arguments,
                       images=images, block_names=names)


def _columns(cache: SourceCache, channels, blocks: list[int]) -> dict[int, torch.Tensor]:
    """{block: positions in the cache's channel axis} of the asked channels; an error names channels not cached."""
    if channels is None:
        return {b: torch.arange(cache.channels.shape[1]) for b in blocks}
    table = _channel_table(channels, cache.channels.shape[0], 1 << 62)  # cache membership checked below
    out = {}
    for b in blocks:
        where = (cache.channels[b][None, :] == table[b][:, None])
        missing = table[b][~where.any(1)]
        if len(missing):
            raise ValueError(f"channels {missing.tolist()} of block {b} are not in the cache (it holds "
                             f"{cache.channels[b].tolist()}); record_source with a larger channel set")
        out[b] = where.float().argmax(1)
    return out


def _check_subset(name: str, asked, cached: list[int]) -> list[int]:
    asked = _check_indices(name, asked, None)
    if asked is None:
        return list(cached)
    missing = sorted(set(asked) - set(cached))
    if missing:
        raise ValueError(f"{name} {missing} are not in the cache (it holds {name} {cached}); record_source with "
                         f"them, or choose among the cached ones")
    return asked


def cluster_masks(cache: SourceCache, channels=None, blocks=None, steps=None, rule: str = "border") -> dict:
    """{(step, block): bool (rows, tokens)}: the source's foreground (``foreground_mask``) on ``channels`` (None:
    all cached channels) at every cached step and block. Pass as ``mask=`` to transport other channel sets (or
    into other targets) under the same masks."""
    blocks = _check_subset("blocks", blocks, cache.blocks)
    steps = _check_subset("steps", steps, cache.steps)
    cols = _columns(cache, channels, blocks)
    return {(s, b): foreground_mask(cache.values[s, b][..., cols[b]], rule=rule) for s in steps for b in blocks}


def difference_share(source: SourceCache, target: SourceCache, channels) -> dict:
    """Why transport moves (or does not move) an image: per block, the share of the source-target difference
    ``sum (X_source - X_target)^2`` that lies on ``channels`` (what transporting them can change), next to their
    share of the target's energy ``sum X_target^2`` (how large they are), over the steps, rows and tokens both caches
    hold. Both caches must hold every channel (record them with ``channels=torch.arange(width)``) and have the same
    rows. Returns {"difference": (blocks,), "energy": (blocks,), "blocks": [...]}: NaN for blocks not cached."""
    if source.channels.shape != target.channels.shape or not torch.equal(source.channels, target.channels):
        raise ValueError("source and target caches must hold the same channels (record both with the same channels)")
    if source.n_sources != target.n_sources:
        raise ValueError(f"the caches hold {source.n_sources} and {target.n_sources} rows: pair them one to one")
    keys = sorted(set(source.values) & set(target.values))
    if not keys:
        raise ValueError("the caches share no (step, block): record them at the same steps and blocks")
    n_blocks = source.channels.shape[0]
    cols = _columns(source, channels, sorted({b for _, b in keys}))
    diff, energy = torch.full((n_blocks,), float("nan")), torch.full((n_blocks,), float("nan"))
    for b in cols:
        d = sum(((source.values[k] - target.values[k]).float() ** 2).sum((0, 1)) for k in keys if k[1] == b)
        e = sum((target.values[k].float() ** 2).sum((0, 1)) for k in keys if k[1] == b)
        diff[b], energy[b] = d[cols[b]].sum() / d.sum(), e[cols[b]].sum() / e.sum()
    return {"difference": diff, "energy": energy, "blocks": sorted(cols)}


def cached_transport(pipe, cache: SourceCache, target, channels=None, blocks: Iterable[int] | None = None,
                     steps: Iterable[int] | None = None, mask: MaskSpec = None, alpha=1.0, seed=0,
                     latents: torch.Tensor | None = None, **pipe_kwargs):
    """Generate the targets (row i seeded ``seed + i``, or from ``latents[i]``), transporting the cached source
    values into them: source i into target i, or one source into every target. ``channels``, ``blocks``, ``steps``:
    subsets of the cache's (None: all cached). ``mask``, ``alpha``: as in ``lockstep_transport`` (a 2-D tensor mask
    has one row per source). ``pipe_kwargs`` must agree with the recording on MATCHED_ARGUMENTS. Returns the
    target images (``output_type="np"`` by default)."""
    if not isinstance(cache, SourceCache):
        raise TypeError(f"cache must be a SourceCache from record_source, got {type(cache).__name__}")
    m = _rows_of(target, "target")
    if cache.n_sources not in (1, m):
        raise ValueError(f"the cache holds {cache.n_sources} sources but there are {m} targets: give one target per "
                         "source, or record a single source to transport into every target")
    for name in MATCHED_ARGUMENTS:
        value = _resolved(pipe, pipe_kwargs, name)
        if value != cache.arguments[name]:
            raise ValueError(f"{name}={value!r} differs from the recorded source's {name}={cache.arguments[name]!r}"
                             f": source and target must share {name} so that their steps and tokens line up")
    blocks = _check_subset("blocks", blocks, cache.blocks)
    steps = _check_subset("steps", steps, cache.steps)
    cols = _columns(cache, channels, blocks)
    table = cache.channels[:, :len(cols[blocks[0]])].clone()  # rows of blocks not transported are never used
    for b in blocks:
        table[b] = cache.channels[b][cols[b]]
    noise = row_noise(m, seed, latents)
    tokens = _image_tokens_hint(pipe, {**pipe_kwargs, **noise})
    if tokens is not None and tokens != cache.n_tokens:
        raise ValueError(f"the targets have {tokens} image tokens but the source was recorded with "
                         f"{cache.n_tokens}: source and target must have the same resolution")
    mask = _check_mask(mask, cache.n_sources, cache.n_tokens, what="sources")
    strength = _check_alpha(alpha, m)
    seen: dict[tuple[int, int], int] = {}
    device_values: dict = {}

    def values(step: int, block: int, x: torch.Tensor) -> torch.Tensor:
        offset = seen.get((step, block), 0)                       # rows of earlier calls of this step
        seen[step, block] = offset + x.shape[0]
        if x.shape[1] != cache.n_tokens:
            raise ValueError(f"the targets have {x.shape[1]} image tokens but the source was recorded with "
                             f"{cache.n_tokens}: source and target must have the same resolution")
        target_rows = torch.arange(offset, offset + x.shape[0])
        group, j = target_rows // m, target_rows % m
        source_rows = group * cache.n_sources + (j if cache.n_sources == m else 0)
        key = (step, block, x.device)
        if key not in device_values:  # move this step's cached values to the model once
            device_values.clear()
            device_values[key] = cache.values[step, block][..., cols[block]].to(x.device, x.dtype)
        cached = device_values[key]
        if int(source_rows.max()) >= cached.shape[0]:
            raise ValueError(f"the target run has more rows per step than the recorded source (cached {cached.shape[0]}"
                             f" rows): record and transport with the same guidance settings")
        src = cached[source_rows.to(x.device)]
        ch = table[block].to(x.device)
        tgt = x[..., ch]
        p = _token_mask(mask, step, block, source_rows % cache.n_sources, source_rows, cache.n_sources, src, x)
        a = strength.to(x.device, x.dtype)[j.to(x.device)][:, None, None]
        out = x.clone()
        out[..., ch] = tgt + a * p * (src - tgt)
        return out

    pipe_kwargs.setdefault("output_type", "np")
    with intervene(pipe, channels=table, mode="replace", values=values, blocks=blocks, steps=steps):
        return _images(pipe(**_as_kwargs(target), **noise, **pipe_kwargs))


# ------------------------------------------------------------------------------------------------ baseline

def interpolated_prompt_embeds(pipe, source_prompts: list[str], target_prompts: list[str], alpha=0.5) -> dict:
    """The text-side baseline: ``{"prompt_embeds", "pooled_prompt_embeds"}`` mixed as (1 - alpha) * target + alpha *
    source, for pipelines whose ``encode_prompt(prompts)`` returns (prompt_embeds, pooled_prompt_embeds, ...) (the
    book model; FLUX.1 with ``prompt_2=None``). Pass the result to ``plain_generation`` or as pipeline kwargs."""
    n = _rows_of(source_prompts, "source_prompts")
    if _rows_of(target_prompts, "target_prompts") != n:
        raise ValueError(f"{n} source prompts but {len(target_prompts)} target prompts; give one per pair")
    a = _check_alpha(alpha, n)
    with torch.no_grad():
        src, tgt = pipe.encode_prompt(list(source_prompts))[:2], pipe.encode_prompt(list(target_prompts))[:2]
    mixed = []
    for s, t in zip(src, tgt):
        w = a.to(t.device, t.dtype).reshape(-1, *[1] * (t.ndim - 1))
        mixed.append(t + w * (s - t))
    return {"prompt_embeds": mixed[0], "pooled_prompt_embeds": mixed[1]}


# ------------------------------------------------------------------------------------------------ shapes-only scoring

def attribute_pairs(attribute: str, n: int | None = None, seed: int = 0, targets=None) -> tuple[list, list]:
    """Shapes world only: (sources, targets), scene pairs that differ in exactly one ``attribute`` (one of
    ``helpers.shapes.ATTRIBUTES``). The targets are ``targets`` (e.g. the same scenes for every attribute) or ``n``
    nominal scenes drawn with ``seed``; each source takes another value of ``attribute``, drawn with ``seed``, never
    the background's colour for the object (or the reverse) and never a held-out combination."""
    import numpy as np

    from .shapes import ATTRIBUTES, COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, is_held_out, sample_scenes
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    if (targets is None) == (n is None):
        raise ValueError("give either n (to draw targets) or targets, not both")
    targets = list(targets) if targets is not None else sample_scenes(n, seed, exclude=HELD_OUT, jitter=False)
    choices = {"size": list(SIZES), "colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS),
               "background": list(COLOURS)}[attribute]
    rng = np.random.default_rng(seed)
    sources = []
    for target in targets:
        clash = {"colour": target.background, "background": target.colour}.get(attribute)
        options = [target.replace(**{attribute: v}) for v in choices if v not in (getattr(target, attribute), clash)]
        options = [o for o in options if not is_held_out(o, HELD_OUT)]
        if not options:
            raise ValueError(f"no source differs from {target.caption!r} in {attribute} alone")
        sources.append(options[rng.integers(len(options))])
    return sources, targets


def transport_scores(images, sources, targets, attribute: str, reference=None) -> dict:
    """Shapes world only: read each transported image back (``helpers.shapes.evaluate``) and score it against its
    pair. ``adopted``: the image shows the source's value of ``attribute``; ``preserved``: every other attribute is
    the target's, as read from ``reference`` (the untransported target images, same noise: "the transport changed
    nothing else") or, without it, as the target's caption says; ``both``: the two at once. Bool arrays, one entry
    per pair; ``lost``: {other attribute: bool array}, where that attribute is not kept."""
    import numpy as np

    from .shapes import ATTRIBUTES, evaluate_batch
    if not (len(images) == len(sources) == len(targets)) or (reference is not None and len(reference) != len(images)):
        raise ValueError(f"{len(images)} images, {len(sources)} sources, {len(targets)} targets"
                         f"{'' if reference is None else f', {len(reference)} reference images'}: one of each per pair")
    read = evaluate_batch(images)
    kept = evaluate_batch(reference) if reference is not None else [t.attributes for t in targets]
    lost = {a: np.array([r[a] != k[a] for r, k in zip(read, kept)]) for a in ATTRIBUTES if a != attribute}
    adopted = np.array([r[attribute] == getattr(s, attribute) for r, s in zip(read, sources)])
    preserved = ~np.any(list(lost.values()), axis=0)
    return {"adopted": adopted, "preserved": preserved, "both": adopted & preserved, "lost": lost}


# ------------------------------------------------------------------------------------------------ figures

def plot_k_sweep(ks, lines: Mapping[str, Sequence[float]], references: Mapping[str, float] | None = None,
                 ylabel: str = "adoption", ax=None):
    """One line per channel choice (e.g. {"top-k": [...], "random-k": [...]}) of a score against k (log scale),
    with dashed horizontal ``references`` (e.g. {"no transport": 0.02, "all channels": 0.9}). Returns the figure."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 2.8), dpi=80, layout="constrained")
    for name, values in lines.items():
        xs = [k for k, v in zip(ks, values) if v is not None]
        ax.plot(xs, [v for v in values if v is not None], marker="o", ms=3, label=name)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + len(lines)}", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("k (channels transported per block)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    return ax.figure


def plot_scores(labels: Sequence[str], scores: Mapping[str, Sequence[float]], title: str | None = None):
    """Horizontal grouped bars: one group per configuration (``labels``), one bar per score (e.g. {"adoption": [...],
    "preservation": [...]}). Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(5.0, 0.32 * len(labels) * len(scores) + 0.8), dpi=80, layout="constrained")
    height = 0.8 / len(scores)
    y = np.arange(len(labels))
    for i, (name, values) in enumerate(scores.items()):
        ax.barh(y + i * height, values, height, label=name)
    ax.set_yticks(y + height * (len(scores) - 1) / 2, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_by_kind(kinds: Sequence[str], estimates: Mapping[str, Sequence[tuple[float, float, float]]],
                 ylabel: str = "adoption"):
    """Grouped bars with 95% intervals: one group per kind of difference, one bar per method; ``estimates`` maps a
    method to one (fraction, low, high) per kind (``helpers.stats.proportion``). Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(6.4, 2.6), dpi=80, layout="constrained")
    width = 0.8 / len(estimates)
    x = np.arange(len(kinds))
    for i, (name, values) in enumerate(estimates.items()):
        p, lo, hi = (np.array(v, float) for v in zip(*values))
        ax.bar(x + (i - (len(estimates) - 1) / 2) * width, p, width, yerr=[p - lo, hi - p], capsize=2, label=name,
               error_kw={"lw": 0.8})
    ax.set_xticks(x, kinds)
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncols=len(estimates), loc="upper center", columnspacing=1.0, handlelength=1.2)
    return fig


def plot_difference_share(share: Mapping, block_labels: Sequence[str], k: int):
    """Bars per block: the share of the source-target difference on the top-k channels next to their share of the
    hidden state's energy (``difference_share``). Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(5.0, 2.6), dpi=80, layout="constrained")
    x = np.arange(len(block_labels))
    ax.bar(x - 0.2, share["energy"].numpy(), 0.4, label=f"share of energy ($X^2$) on the top-{k}")
    ax.bar(x + 0.2, share["difference"].numpy(), 0.4, label=f"share of source-target difference on the top-{k}")
    ax.set_xticks(x, block_labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7)
    return fig
