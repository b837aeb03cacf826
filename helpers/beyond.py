"""Chapter 6, beyond the paper: what drives the massive channels, where transport acts, and what it can compose.

- ``variance_shares``: split a channel's values over (step, prompt, noise, token) into a constant and the parts
  explained by each factor (a balanced ANOVA on the full grid), to weigh "timestep-driven" (Gan et al. 2025) against
  "prompt-conditioned" (the paper).
- ``record_conditioning`` / ``modulation``: the vector that drives every block's AdaLN (the timestep embedding plus
  the pooled-text embedding, FLUX-style ``time_text_embed``) and each block's shift, scale and gate for a channel;
  ``heldout_r2`` fits a channel's value on them and scores the fit on prompts it did not see.
- ``prompt_average`` and ``split_transport``: transport only the prompt-dependent part of the source's massive
  channels, or only their prompt-independent part, from a source trajectory with other noise.
- ``transport_map``: transport success per (block, step window).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from .activations import intervene
from .models import residual_blocks, transformer_of
from .transport import SourceCache, cached_transport, plain_generation

FACTORS = ("step", "prompt", "noise", "position")
PARTS = ("step", "prompt", "noise", "position", "prompt x position", "step x position", "other interactions")


# ------------------------------------------------------------------------------------------------ variance

def _conditional(values: torch.Tensor, cache: SourceCache, n_prompts: int, n_noises: int) -> torch.Tensor:
    """The rows of one cached step that belong to the generated images: all of them, or with batched
    classifier-free guidance (rows ``[uncond, cond]``, SD3 and the book model with guidance) the second half."""
    if cache.n_sources != n_prompts * n_noises:
        raise ValueError(f"the cache holds {cache.n_sources} sources, not {n_prompts} prompts x {n_noises} noises")
    return values[-cache.n_sources:]


def grid_values(cache: SourceCache, n_prompts: int, n_noises: int, channel: int, block: int) -> np.ndarray:
    """One cached channel of one block as a (steps, prompts, noises, tokens) array; the cache's rows must be
    prompt-major (row = prompt * n_noises + noise), as ``grid_rows`` lays them out."""
    steps = [_conditional(cache.values[s, block], cache, n_prompts, n_noises)[..., channel] for s in cache.steps]
    return torch.stack(steps).float().reshape(len(steps), n_prompts, n_noises, -1).numpy()


def grid_rows(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """Every prompt with every seed, prompt-major: the rows and per-row seeds of the (prompt x noise) grid."""
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def _effect(v: np.ndarray, keep: tuple[int, ...]) -> np.ndarray:
    """The mean of ``v`` over every axis not in ``keep`` (kept as size-1 axes)."""
    drop = tuple(a for a in range(v.ndim) if a not in keep)
    return v.mean(axis=drop, keepdims=True)


def variance_shares(values: np.ndarray) -> dict[str, float]:
    """Balanced ANOVA of a (steps, prompts, noises, tokens) array. ``constant``: the squared grand mean as a share of
    the mean square (how much of the channel is one fixed number); the other entries split the variance (they sum to
    1): each factor's main effect, the prompt x position and step x position interactions, and all other
    interactions together."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 4:
        raise ValueError(f"values must be (steps, prompts, noises, tokens), got shape {v.shape}")
    grand = v.mean()
    variance = v.var()
    mains = {f: _effect(v, (a,)) - grand for a, f in enumerate(FACTORS)}
    shares = {f: float((m ** 2).mean() / variance) for f, m in mains.items()}
    for name, (a, b) in (("prompt x position", (1, 3)), ("step x position", (0, 3))):
        inter = _effect(v, (a, b)) - mains[FACTORS[a]] - mains[FACTORS[b]] - grand
        shares[name] = float((inter ** 2).mean() / variance)
    shares["other interactions"] = 1.0 - sum(shares.values())
    return {"constant": float(grand ** 2 / (v ** 2).mean()), **shares}


def shares_table(cache: SourceCache, n_prompts: int, n_noises: int, columns: Sequence[int], labels: Sequence[str]
                 ) -> pd.DataFrame:
    """``variance_shares`` per block (rows: ``labels``), averaged over the cache columns ``columns`` of each block."""
    rows = {}
    for block, label in enumerate(labels):
        per = [variance_shares(grid_values(cache, n_prompts, n_noises, c, block)) for c in columns]
        rows[label] = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    return pd.DataFrame(rows).T


# ------------------------------------------------------------------------------------------------ AdaLN

class ConditioningRecording:
    """The AdaLN conditioning of every transformer call: ``timestep`` and ``text`` (rows, width), the two summands of
    FLUX's ``temb`` (its ``time_text_embed``: timestep embedding + pooled-text embedding), one entry per call."""

    def __init__(self, pipe):
        self.transformer = transformer_of(pipe)
        embed = getattr(self.transformer, "time_text_embed", None)
        if embed is None or not all(hasattr(embed, n) for n in ("timestep_embedder", "text_embedder")):
            raise TypeError(f"{type(self.transformer).__name__} has no FLUX/SD3-style time_text_embed (a timestep "
                            "embedder plus a pooled-text embedder) to record; record_conditioning supports "
                            "FluxTransformer2DModel (FLUX.1, the book model) and SD3Transformer2DModel")
        self.embed = embed
        self.timestep: list[torch.Tensor] = []
        self.text: list[torch.Tensor] = []
        self._hooks = []

    def __enter__(self):
        self._hooks = [self.embed.timestep_embedder.register_forward_hook(
                           lambda m, i, o: self.timestep.append(o.detach().float().cpu())),
                       self.embed.text_embedder.register_forward_hook(
                           lambda m, i, o: self.text.append(o.detach().float().cpu()))]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return False

    @property
    def temb(self) -> torch.Tensor:
        """(calls, rows, width): the whole conditioning vector every AdaLN of that call sees."""
        return torch.stack(self.timestep) + torch.stack(self.text)


def record_conditioning(pipe) -> ConditioningRecording:
    """Context manager keeping the AdaLN conditioning (timestep and pooled-text parts) of every transformer call."""
    return ConditioningRecording(pipe)


def adaln_linear(block: torch.nn.Module) -> torch.nn.Linear:
    """The linear layer that maps the conditioning to a block's shift / scale / gate chunks."""
    for name in ("norm1", "norm"):
        norm = getattr(block, name, None)
        if norm is not None and isinstance(getattr(norm, "linear", None), torch.nn.Linear):
            return norm.linear
    raise TypeError(f"{type(block).__name__} has no AdaLN-Zero norm (norm1.linear or norm.linear)")


@torch.no_grad()
def modulation(pipe, temb: torch.Tensor, block: int, channel: int) -> torch.Tensor:
    """(..., chunks): block ``block``'s AdaLN shift / scale / gate entries for ``channel`` (6 chunks for a
    double-stream block, 3 for a single-stream one) at conditioning ``temb`` (..., width)."""
    module = residual_blocks(pipe)[block].module
    linear = adaln_linear(module)
    out = linear(torch.nn.functional.silu(temb.to(linear.weight.device, linear.weight.dtype))).float().cpu()
    width = temb.shape[-1]
    return out.unflatten(-1, (-1, width))[..., channel]


def heldout_r2(features: np.ndarray, target: np.ndarray, train: np.ndarray, alpha: float = 1e-3) -> float:
    """R^2 on the rows not in ``train`` of a ridge fit of ``target`` on ``features`` fitted on ``train`` rows
    (bool mask). Features are standardised on the training rows."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = np.asarray(features, np.float64).reshape(len(target), -1), np.asarray(target, np.float64)
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[train], y[train])
    return float(r2_score(y[~train], model.predict(x[~train])))


def step_onehot(n_steps: int, n_rows: int) -> np.ndarray:
    """(steps * rows, steps) one-hot of the step, for cells laid out step-major."""
    return np.repeat(np.eye(n_steps), n_rows, axis=0)


# ------------------------------------------------------------------------------------------------ split transport

def prompt_average(cache: SourceCache, n_prompts: int, n_noises: int) -> dict[tuple[int, int], torch.Tensor]:
    """{(step, block): (noises, tokens, k)}: the cached values averaged over the prompts of a prompt-major grid,
    per starting noise: the prompt-independent part of the channels along each noise's trajectory."""
    return {key: _conditional(v, cache, n_prompts, n_noises).float().unflatten(0, (n_prompts, n_noises)).mean(0)
            for key, v in cache.values.items()}


def split_transport(pipe, source: SourceCache, average: Mapping, source_noise: Sequence[int],
                    target_noise: Sequence[int], targets, part: str, seed, **pipe_kwargs):
    """Transport one part of the source's cached channels into targets that start from other noise.

    Each channel value splits as ``x = mu(noise) + delta(prompt)``, ``mu`` the prompt average along that starting
    noise (``average``, from ``prompt_average``; ``source_noise[i]`` / ``target_noise[i]`` index its noises).

    - ``"full"``: the target takes the source's values, ``mu_source + delta_source`` (ordinary transport);
    - ``"prompt"``: the target takes ``mu_target + delta_source``: the source's prompt-dependent part on the
      target's own constant part;
    - ``"constant"``: the target keeps its own ``delta`` and takes the source's ``mu``: ``x + mu_source - mu_target``.
    """
    if part not in ("full", "prompt", "constant"):
        raise ValueError(f"part must be 'full', 'prompt' or 'constant', got {part!r}")
    src, tgt = torch.as_tensor(list(source_noise)), torch.as_tensor(list(target_noise))
    if len(src) != source.n_sources or len(tgt) != source.n_sources:
        raise ValueError(f"give one source noise and one target noise index per cached source ({source.n_sources})")
    if part == "full":
        return cached_transport(pipe, source, targets, seed=seed, **pipe_kwargs)
    if part == "prompt":
        values = {key: (v.float() - average[key][src] + average[key][tgt]).to(v.dtype)
                  for key, v in source.values.items()}
        return cached_transport(pipe, replace(source, values=values), targets, seed=seed, **pipe_kwargs)
    shift = {key: average[key][src] - average[key][tgt] for key in source.values}
    table = source.channels

    def shifted(step: int, block: int, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        ch = table[block].to(x.device)
        out[..., ch] = x[..., ch] + shift[step, block].to(x.device, x.dtype)
        return out

    with intervene(pipe, channels=table, mode="replace", values=shifted, blocks=source.blocks, steps=source.steps):
        return plain_generation(pipe, targets, seed=seed, **pipe_kwargs)


# ------------------------------------------------------------------------------------------------ map

def step_windows(num_inference_steps: int, n_windows: int) -> dict[str, list[int]]:
    """{"0-4": [0..4], ...}: the steps cut into ``n_windows`` consecutive windows of (nearly) equal length."""
    if not 1 <= n_windows <= num_inference_steps:
        raise ValueError(f"n_windows must be in [1, {num_inference_steps}], got {n_windows}")
    edges = np.linspace(0, num_inference_steps, n_windows + 1).round().astype(int)
    return {f"{a}-{b - 1}": list(range(a, b)) for a, b in zip(edges[:-1], edges[1:])}


def transport_map(pipe, cache: SourceCache, targets, score, blocks: Mapping[str, Sequence[int] | None],
                  windows: Mapping[str, Sequence[int] | None], seed=0, **pipe_kwargs) -> pd.DataFrame:
    """``score(images)`` of cached transport at every (blocks, window) cell: rows ``blocks``, columns ``windows``
    (name -> indices; None means all)."""
    table = {}
    for bname, bs in blocks.items():
        table[bname] = {wname: float(score(cached_transport(pipe, cache, targets, blocks=bs, steps=ws, seed=seed,
                                                            **pipe_kwargs)))
                        for wname, ws in windows.items()}
    frame = pd.DataFrame(table).T
    frame.index.name, frame.columns.name = "transported blocks", "transported steps"
    return frame
