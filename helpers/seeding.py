"""The book's one seeding rule: row i of a generation starts from ``torch.Generator().manual_seed(seed + i)``, so
an image depends on its prompt and seed only, not on the batch it was drawn in. ``call_arguments`` builds (and
checks, before anything runs) the arguments of one pipeline call by that rule."""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping

import torch


def generators(n: int, seed=0) -> list[torch.Generator]:
    """One CPU generator per row: ``manual_seed(seed + i)``, or ``manual_seed(seed[i])`` for a list (array, tensor)
    of n seeds (repeat a seed to give rows the same noise)."""
    seed = seed.tolist() if hasattr(seed, "tolist") else seed
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * n
    if any(isinstance(s, bool) or not hasattr(type(s), "__index__") for s in seeds) or len(seeds) != n:
        raise (ValueError if isinstance(seed, (list, tuple)) else TypeError)(
            f"seed must be an integer, or a list of one integer seed per row ({n}); got {seed!r}")
    offsets = [0] * n if isinstance(seed, (list, tuple)) else range(n)
    return [torch.Generator().manual_seed(operator.index(s) + i) for s, i in zip(seeds, offsets, strict=True)]


def call_arguments(inputs, seed=0, latents=None, **pipe_kwargs) -> tuple[int, dict]:
    """(rows, keyword arguments) of one pipeline call: ``inputs`` (a non-empty list of prompts, or a dict of per-row
    inputs such as ``prompt_embeds``), noise by the seeding rule (or ``latents``) and ``pipe_kwargs``, checked:
    prompts or embeddings (not both), finite guidance scales, finite latents with one row per prompt."""
    if isinstance(inputs, str):
        raise TypeError(f"inputs must be a list of prompts, got one string; wrap it in a list: [{inputs!r}]")
    if isinstance(inputs, Mapping):
        sizes = {k: v.shape[0] for k, v in inputs.items() if torch.is_tensor(v)}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"inputs as a dict need per-row tensors with one number of rows, got {sizes}")
        n, kwargs = next(iter(sizes.values())), dict(inputs)
    elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(p, str) for p in inputs):
        n, kwargs = len(inputs), {"prompt": list(inputs)}
    else:
        raise ValueError(f"inputs must be a non-empty list of prompts or a dict of per-row tensors, got {inputs!r}")
    both = {"prompt", "prompt_embeds"} <= {*kwargs, *pipe_kwargs}
    if {"generator", "latents"} & set(pipe_kwargs) or both:
        raise ValueError("give either prompts or prompt_embeds, not both" if both else
                         "give the noise as seed= or latents= (not generator=)")
    for name in ("guidance_scale", "true_cfg_scale"):
        value = pipe_kwargs.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if latents is not None and (not torch.is_tensor(latents) or latents.shape[0] != n
                                or not torch.isfinite(latents).all()):
        raise ValueError(f"latents must be a finite tensor with one row per prompt ({n}), got "
                         f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}")
    noise = {"generator": generators(n, seed)} if latents is None else {"latents": latents}
    return n, {**kwargs, **noise, **pipe_kwargs}


def generate(pipe, prompts, seed=0, latents=None, **pipe_kwargs):
    """Images (``output_type="np"`` by default) of ``prompts`` (or per-row inputs), row i by the seeding rule."""
    _, kwargs = call_arguments(prompts, seed, latents, **{"output_type": "np", **pipe_kwargs})
    return pipe(**kwargs).images
