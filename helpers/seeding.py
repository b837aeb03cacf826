"""The book's one seeding rule: row i of a generation starts from ``torch.Generator().manual_seed(seed + i)``, so
an image depends on its prompt and seed only, not on the batch it was drawn in."""
from __future__ import annotations

import operator

import torch


def generators(n: int, seed=0) -> list[torch.Generator]:
    """One CPU generator per row: ``manual_seed(seed + i)``, or ``manual_seed(seed[i])`` for a list of n seeds
    (repeat a seed to give rows the same noise)."""
    if isinstance(seed, (list, tuple)):
        seeds = [operator.index(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"seed as a list needs one seed per row ({n}), got {len(seeds)}")
    elif isinstance(seed, bool):
        raise TypeError(f"seed must be an integer or a list of integers, got {seed!r}")
    else:
        seeds = [operator.index(seed) + i for i in range(n)]
    return [torch.Generator().manual_seed(s) for s in seeds]


def generate(pipe, prompts: list[str], seed=0, **pipe_kwargs):
    """Images of a plain generation, row i from ``generators``'s rule (``output_type="np"`` by default)."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    pipe_kwargs.setdefault("output_type", "np")
    return pipe(prompt=list(prompts), generator=generators(len(prompts), seed), **pipe_kwargs).images
