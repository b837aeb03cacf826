"""Observing massive activations (chapter 1): record a generation, summarise the per-block channel statistic, and
measure whether the same channels stay massive across blocks, denoising steps and prompts.

    rec, images = record_generation(pipe, prompts, seed=0, keep_tokens={"steps": [10]})
    stat = helpers.channel_statistic(rec, steps=[10])      # (blocks, channels) at t = 0.5
    block_summary(stat, rec.block_names)                    # top-3 channels, their values, the median, the ratios
    persistence_summary(rec, k=4, step=10)                  # Jaccard overlap and top-1 agreement per block

Everything here is generic over pipelines: it only uses ``helpers.record`` and the pipeline's own ``__call__``.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pandas as pd
import torch

from .activations import record
from .channels import channel_statistic, persistence, top_k, top_to_median


def record_generation(pipe, prompts=None, seed: int = 0, num_inference_steps: int = 20, keep_tokens=None,
                      **pipe_kwargs):
    """Generate once while recording every block: returns ``(Recording, images)`` with images (B, H, W, 3) in [0, 1].

    ``prompts``: a list of strings (or None when ``prompt_embeds=...`` is given in ``pipe_kwargs``). The noise comes
    from a CPU ``torch.Generator`` seeded with ``seed``, so the same call gives the same recording.
    ``keep_tokens``: as in ``helpers.record`` (e.g. ``{"steps": [10]}`` keeps the full image tokens at step 10).
    """
    if prompts is None and "prompt_embeds" not in pipe_kwargs:
        raise ValueError("give prompts=[...] or prompt_embeds=... (in the pipeline's keyword arguments)")
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    kwargs = dict(num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed),
                  output_type="np", **pipe_kwargs)
    if prompts is not None:
        kwargs["prompt"] = list(prompts)
    with record(pipe, keep_tokens=keep_tokens) as rec:
        out = pipe(**kwargs)
    images = np.asarray(out.images if hasattr(out, "images") else out[0], dtype=np.float32)
    return rec, images


def _mean_of(rec) -> torch.Tensor:
    """The (steps, blocks, rows, channels) signed means of a Recording, or such a tensor as it is."""
    mean = rec if torch.is_tensor(rec) else getattr(rec, "mean", None)
    if not torch.is_tensor(mean) or mean.ndim != 4:
        raise ValueError("expected a Recording or its (steps, blocks, rows, channels) mean tensor, got "
                         f"{tuple(getattr(mean, 'shape', ())) or type(rec).__name__}")
    return mean


def block_labels(names) -> list[str]:
    """Short labels for block names: "transformer_blocks.2" -> "block 2", "single_transformer_blocks.0" ->
    "single 0"; other names are kept as they are."""
    labels = []
    for name in names:
        attr, _, index = str(name).rpartition(".")
        if attr == "single_transformer_blocks":
            labels.append(f"single {index}")
        elif attr == "transformer_blocks":
            labels.append(f"block {index}")
        else:
            labels.append(str(name))
    return labels


def _check_stat(stat, what: str = "stat", ndim: int = 2) -> torch.Tensor:
    stat = torch.as_tensor(stat)
    if stat.ndim != ndim or stat.dtype == torch.bool or not stat.dtype.is_floating_point:
        shape = "(blocks, channels)" if ndim == 2 else f"a {ndim}-D float tensor"
        raise ValueError(f"{what} must be a float tensor {shape} (e.g. helpers.channel_statistic(rec)), got "
                         f"{stat.dtype} {tuple(stat.shape)}")
    return stat


def block_summary(stat, block_names=None, ranks: int = 3) -> pd.DataFrame:
    """One row per block: the ``ranks`` largest channels (index and statistic), the median channel's statistic and
    each top channel's ratio to it (Sun et al. 2024's top-vs-median view). ``stat``: (blocks, channels)."""
    stat = _check_stat(stat)
    names = block_labels(block_names) if block_names is not None else [str(i) for i in range(stat.shape[0])]
    if len(names) != stat.shape[0]:
        raise ValueError(f"{len(names)} block names for {stat.shape[0]} blocks")
    values, idx = stat.topk(ranks, dim=-1)
    ratio = top_to_median(stat, ranks)
    table = {"block": names}
    for r in range(ranks):
        table[f"top{r + 1}"] = idx[:, r].tolist()
    for r in range(ranks):
        table[f"value{r + 1}"] = values[:, r].tolist()
    table["median"] = stat.median(dim=-1).values.tolist()
    for r in range(ranks):
        table[f"ratio{r + 1}"] = ratio[:, r].tolist()
    return pd.DataFrame(table).set_index("block")


def top1_agreement(top1) -> tuple[int, float]:
    """The most common top-1 channel among a set of blocks / steps / prompts and the fraction that share it."""
    top1 = torch.as_tensor(top1).reshape(-1)
    if top1.numel() == 0:
        raise ValueError("top1_agreement needs at least one channel index")
    channels, counts = top1.unique(return_counts=True)
    best = int(counts.argmax())
    return int(channels[best]), float(counts[best]) / top1.numel()


def mean_overlap(jaccard) -> float:
    """Mean Jaccard overlap over distinct pairs (the off-diagonal of a ``persistence`` matrix)."""
    jaccard = torch.as_tensor(jaccard, dtype=torch.float32)
    if jaccard.ndim != 2 or jaccard.shape[0] != jaccard.shape[1] or jaccard.shape[0] < 2:
        raise ValueError(f"expected a square (n, n) overlap matrix with n >= 2, got {tuple(jaccard.shape)}")
    n = jaccard.shape[0]
    return float((jaccard.sum() - jaccard.diagonal().sum()) / (n * (n - 1)))


def chance_overlap(k: int, channels: int) -> float:
    """Expected Jaccard overlap of two independent, uniformly random k-channel sets out of ``channels``: the level an
    overlap must beat before it says anything (hypergeometric number of shared channels)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= channels:
        raise ValueError(f"k must be an integer in [1, {channels}], got {k!r}")
    total = math.comb(channels, k)
    return sum(math.comb(k, i) * math.comb(channels - k, k - i) / total * i / (2 * k - i)
               for i in range(max(0, 2 * k - channels), k + 1))


def overlap_matrices(rec, k: int, step: int, block: int) -> dict[str, torch.Tensor]:
    """Jaccard overlaps of top-k channel sets: ``"blocks"`` (blocks x blocks, statistic at ``step`` averaged over
    prompts), ``"steps"`` (steps x steps, for ``block``, averaged over prompts) and ``"prompts"`` (prompts x prompts,
    for ``block`` at ``step``)."""
    n_steps, n_blocks, n_rows, _ = _mean_of(rec).shape
    for name, value, size in (("step", step, n_steps), ("block", block, n_blocks)):
        if not -size <= value < size:
            raise IndexError(f"{name} {value} out of range: the recording has {size} {name}s")
    return {
        "blocks": persistence(top_k(channel_statistic(rec, steps=[step]), k)),
        "steps": persistence(top_k(channel_statistic(rec, per="step"), k)[:, block]),
        "prompts": persistence(top_k(channel_statistic(rec, steps=[step], per="prompt"), k)[:, block]),
    }


def persistence_summary(rec, k: int, step: int, block_names=None) -> pd.DataFrame:
    """Per block: are the same channels massive across denoising steps and across prompts? Columns: mean Jaccard
    overlap of the top-k sets over pairs of steps (averaged over prompts) and over pairs of prompts (at ``step``),
    and the fraction of steps / prompts whose top-1 channel is the block's most common one (and which it is)."""
    n_blocks = _mean_of(rec).shape[1]
    names = block_labels(block_names if block_names is not None else getattr(rec, "block_names", None)
                         or [str(i) for i in range(n_blocks)])
    if len(names) != n_blocks:
        raise ValueError(f"{len(names)} block names for {n_blocks} blocks")
    by_step = top_k(channel_statistic(rec, per="step"), k)                       # (steps, blocks, k)
    by_prompt = top_k(channel_statistic(rec, steps=[step], per="prompt"), k)     # (prompts, blocks, k)
    rows = []
    for b, name in enumerate(names):
        step_top, step_share = top1_agreement(by_step[:, b, 0])
        prompt_top, prompt_share = top1_agreement(by_prompt[:, b, 0])
        rows.append({"block": name, "steps_jaccard": mean_overlap(persistence(by_step[:, b])),
                     "steps_top1": step_top, "steps_top1_share": step_share,
                     "prompts_jaccard": mean_overlap(persistence(by_prompt[:, b])),
                     "prompts_top1": prompt_top, "prompts_top1_share": prompt_share})
    return pd.DataFrame(rows).set_index("block")


def ratio_by_step(rec, prompts=None) -> torch.Tensor:
    """Top-1 / median ratio of the statistic at every denoising step, per block: (steps, blocks)."""
    return top_to_median(channel_statistic(rec, prompts=prompts, per="step"), 1)[..., 0]


def frequency_by_block(rec, k: int) -> torch.Tensor:
    """(blocks, channels): the fraction of (step, prompt) pairs in which each channel is among the block's top-k by
    that single prompt and step's statistic. A channel near 1 is massive whatever the prompt and timestep."""
    stat = _mean_of(rec).abs()                                                  # (steps, blocks, rows, channels)
    idx = top_k(stat, k)                                                         # (steps, blocks, rows, k)
    member = torch.zeros(*stat.shape).scatter_(-1, idx, 1.0)
    return member.mean(dim=(0, 2))


def token_magnitudes(rec, step: int, block: int, prompt: int) -> np.ndarray:
    """|x| of one prompt's image tokens in one block at one step: (image_tokens, channels). Needs the tokens kept
    with ``keep_tokens`` when recording."""
    tokens = rec.tokens
    if (step, block) not in tokens:
        raise KeyError(f"no image tokens kept for step {step}, block {block} (kept: {sorted(tokens)}); record with "
                       f"keep_tokens={{'blocks': [{block}], 'steps': [{step}]}}")
    x = tokens[step, block]
    if not -x.shape[0] <= prompt < x.shape[0]:
        raise IndexError(f"prompt {prompt} out of range: {x.shape[0]} rows were recorded")
    return x[prompt].abs().float().numpy()


def token_grid(values, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Per-token values (image_tokens,) in raster order -> (rows, cols) map; square grids need no ``shape``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"expected one value per image token (tokens,), got shape {values.shape}")
    if shape is None:
        side = int(round(np.sqrt(values.size)))
        if side * side != values.size:
            raise ValueError(f"{values.size} tokens do not form a square grid; pass shape=(rows, cols) "
                             "(image height and width divided by the patch size)")
        shape = (side, side)
    if shape[0] * shape[1] != values.size:
        raise ValueError(f"shape {shape} does not hold {values.size} tokens")
    return values.reshape(shape)


def interactive_session() -> bool:
    """True when a person is likely looking at the kernel (Colab, or a kernel started by a Jupyter server, which sets
    ``JPY_SESSION_NAME``), False when a notebook is executed unattended (nbclient, nbval, the book build).
    ``FEW_CHANNELS_WIDGETS=1`` / ``0`` in the environment forces the answer (e.g. for VS Code)."""
    forced = os.environ.get("FEW_CHANNELS_WIDGETS")
    if forced is not None:
        return forced.strip().lower() not in ("", "0", "false", "no")
    if "google.colab" in sys.modules:
        return True
    return bool(os.environ.get("JPY_SESSION_NAME"))


def image_rows(rec, n_images: int) -> list[int]:
    """The rows of a recording that hold the ``n_images`` generated images: every row without classifier-free
    guidance; with it (2 x n_images rows) the conditional half -- the second where one call per step batches
    ``[uncond, cond]`` (SD3, SANA, PixArt, the book model), the first where each step makes a cond call and then an
    uncond call (Qwen-Image, FLUX with true CFG; see ``helpers.activations``)."""
    n_rows = _mean_of(rec).shape[2]
    if n_rows == n_images:
        return list(range(n_rows))
    calls = getattr(rec, "calls_per_step", None)
    if n_rows != 2 * n_images or not calls or calls[0] not in (1, 2):
        raise ValueError(f"the recording has {n_rows} rows but {n_images} images were given (with classifier-free "
                         "guidance, give the Recording itself: its rows are twice the images)")
    return list(range(n_images)) if calls[0] == 2 else list(range(n_images, 2 * n_images))


def _check_rows(rec, images, prompts) -> list[int]:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts were given: one prompt per image")
    return image_rows(rec, len(images))


def profile_view(rec, images, prompts, block: int, step: int, prompt: int):
    """The explorer's view for one choice: the prompt's channel profile (|mean over image tokens| per channel) in
    ``block`` at ``step``, next to its generated image. ``prompt`` indexes the images; with classifier-free guidance
    the profile is that of the image's conditional row (``image_rows``). Returns the figure."""
    from .plotting import channel_profile

    mean = _mean_of(rec)
    rows = _check_rows(rec, images, prompts)
    n_steps, n_blocks, _, _ = mean.shape
    for name, value, size in (("block", block, n_blocks), ("step", step, n_steps), ("prompt", prompt, len(rows))):
        if not 0 <= value < size:
            raise IndexError(f"{name} {value} out of range [0, {size})")
    labels = block_labels(getattr(rec, "block_names", None) or [str(i) for i in range(n_blocks)])
    t = (getattr(rec, "timesteps", None) or [None] * n_steps)[step]
    when = f"step {step}" + (f" (t = {t:.2f})" if isinstance(t, float) else "")
    return channel_profile(mean[step, block, rows[prompt]].abs(), images[prompt], title=f"{labels[block]}, {when}",
                           caption=prompts[prompt])


def explore(rec, images, prompts, block: int = 0, step: int | None = None, prompt: int = 0, force: bool = False):
    """An ipywidgets explorer: block, step and prompt controls showing ``profile_view`` for the chosen values
    (initially ``block``, ``step`` (default: the middle step) and ``prompt``). Built only in an interactive session
    (see ``interactive_session``; ``force=True`` builds it anyway); returns the widget, or None when not built, so an
    unattended run stores no widget in the notebook."""
    mean = _mean_of(rec)
    n_rows = len(_check_rows(rec, images, prompts))
    n_steps, n_blocks, _, _ = mean.shape
    step = n_steps // 2 if step is None else step
    if not (force or interactive_session()):
        return None
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    labels = block_labels(getattr(rec, "block_names", None) or [str(i) for i in range(n_blocks)])
    controls = {
        "block": widgets.Dropdown(options=[(name, i) for i, name in enumerate(labels)], value=block,
                                  description="block"),
        "step": widgets.IntSlider(value=step, min=0, max=n_steps - 1, description="step"),
        "prompt": widgets.IntSlider(value=prompt, min=0, max=n_rows - 1, description="prompt"),
    }

    def show(block, step, prompt):
        profile_view(rec, images, prompts, block, step, prompt)
        plt.show()

    out = widgets.interactive_output(show, controls)
    return widgets.VBox([widgets.HBox(list(controls.values())), out])
