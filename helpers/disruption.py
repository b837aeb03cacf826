"""Are the massive channels critical? Zero chosen channels during generation and measure what changes.

The paper's first claim (Turri et al. 2026): zeroing the top-k channels by ``s_d = |mean over image tokens|`` in a
DiT's residual stream collapses generation, while zeroing as many low-statistic channels barely matters. This module
measures that for any pipeline the book supports::

    stat = calibration_statistic(pipe, calibration_prompts, seed=1)          # channels chosen on other prompts
    selections = control_selections(stat, ks=[1, 2, 4, 8], n_random=3)      # top-k, bottom-k, random-k
    table = disruption_table(pipe, prompts, selections, seed=0)              # pixel change (always)
    table = disruption_table(pipe, prompts, selections, seed=0, score_fn=shapes_score)   # + accuracy (shapes)

Each condition is one pipeline call on all prompts, with the same generator seed as the unmodified baseline, so
every difference between a condition and the baseline comes from the intervention alone.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .activations import intervene, record
from .channels import bottom_k, channel_statistic, random_k, top_k
from .models import architecture, residual_blocks
from .plotting import DPI
from .stats import proportion

#: Keys a condition may give besides ``channels``; they are passed to ``helpers.intervene``.
INTERVENE_KEYS = ("channels", "mode", "blocks", "steps", "token_mask", "rows", "scale", "values")
SETS = ("top", "bottom", "random")
SET_COLOURS = {"top": "tab:red", "bottom": "tab:blue", "random": "tab:grey"}


# ------------------------------------------------------------------------------------------------ selection

def calibration_statistic(pipe, prompts: Sequence[str] | None, seed: int, rows=None, **pipe_kwargs) -> torch.Tensor:
    """The paper's statistic (blocks, channels), averaged over every step and prompt of one recorded generation.

    Record it on *calibration* prompts and a seed distinct from the scored ones, so that the channels are not chosen
    on the very images they are then judged on. ``rows`` picks the batch rows (e.g. the conditional half with
    classifier-free guidance); ``pipe_kwargs`` go to the pipeline (e.g. ``num_inference_steps``).
    """
    kwargs = {"output_type": "latent", **pipe_kwargs}
    if prompts is not None:
        kwargs["prompt"] = list(prompts)
    with record(pipe) as rec:
        pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    return channel_statistic(rec, prompts=rows)


def control_selections(stat: torch.Tensor, ks: Sequence[int], n_random: int = 3, seed: int = 0
                       ) -> dict[str, torch.Tensor]:
    """Per-block channel sets for every k: ``top-k`` (the massive channels), ``bottom-k`` (the paper's control: the
    lowest statistic) and ``n_random`` draws ``random-k#i`` (uniform, never one of the top-k). Each is (blocks, k)."""
    if not ks:
        raise ValueError("ks is empty: give at least one k, e.g. ks=[1, 2, 4, 8]")
    selections = {}
    for k in ks:
        top = top_k(stat, k)
        selections[f"top-{k}"] = top
        selections[f"bottom-{k}"] = bottom_k(stat, k)
        for i in range(n_random):
            selections[f"random-{k}#{i}"] = random_k(stat, k, seed=seed + 1000 * k + i, exclude=top)
    return selections


def block_conditions(channels: torch.Tensor, blocks: Sequence[int], name: str) -> dict[str, dict]:
    """The same channel set applied in one block at a time: ``{"{name} @b{b}": {"channels", "blocks": [b]}}``."""
    return {f"{name} @b{b}": {"channels": channels, "blocks": [b]} for b in blocks}


def step_ranges(num_inference_steps: int, parts: Sequence[str] = ("early", "middle", "late")) -> dict[str, list[int]]:
    """Split the denoising steps into consecutive, near-equal ranges: {"early": [0..6], "middle": ..., ...}."""
    if num_inference_steps < len(parts):
        raise ValueError(f"cannot split {num_inference_steps} steps into {len(parts)} ranges; use more steps")
    chunks = np.array_split(np.arange(num_inference_steps), len(parts))
    return {p: [int(s) for s in c] for p, c in zip(parts, chunks)}


def step_conditions(channels: torch.Tensor, ranges: Mapping[str, Sequence[int]], name: str) -> dict[str, dict]:
    """The same channel set applied in every block but only during a range of steps: ``"{name} @{range}"``."""
    return {f"{name} @{part}": {"channels": channels, "steps": list(steps)} for part, steps in ranges.items()}


# ------------------------------------------------------------------------------------------------ measurement

def block_labels(pipe) -> list[str]:
    """Short block names: "double 0" ... "single 2" for two-list transformers (FLUX), "block 7" otherwise."""
    lists = [attr for attr, _ in architecture(pipe).blocks]
    prefixes = dict(zip(lists, ("double", "single"))) if len(lists) == 2 else dict.fromkeys(lists, "block")
    return [f"{prefixes[b.name.rsplit('.', 1)[0]]} {b.name.rsplit('.', 1)[1]}" for b in residual_blocks(pipe)]


def _intervention(condition) -> dict:
    """A condition (channel indices, or a dict of ``helpers.intervene`` arguments) as intervene keyword arguments."""
    if isinstance(condition, Mapping):
        unknown = set(condition) - set(INTERVENE_KEYS)
        if unknown:
            raise ValueError(f"unknown condition keys {sorted(unknown)}; a condition takes {list(INTERVENE_KEYS)}")
        if "channels" not in condition:
            raise ValueError("a condition dict needs 'channels' (indices (k,) or (blocks, k))")
        kwargs = dict(condition)
    elif torch.is_tensor(condition) or isinstance(condition, (list, tuple, np.ndarray)):
        kwargs = {"channels": condition}
    else:
        raise TypeError(f"a condition is channel indices or a dict of intervene arguments, got "
                        f"{type(condition).__name__}")
    kwargs.setdefault("mode", "zero")
    return kwargs


def generate_images(pipe, prompts: Sequence[str] | None, seed: int, condition=None, **pipe_kwargs) -> np.ndarray:
    """One pipeline call on all prompts with generator seed ``seed``, under ``condition`` (None: unmodified).
    Returns (N, H, W, 3) floats in [0, 1]."""
    kwargs = {"output_type": "np", **pipe_kwargs}
    if prompts is not None:
        kwargs["prompt"] = list(prompts)
    generator = torch.Generator().manual_seed(seed)
    if condition is None:
        images = pipe(generator=generator, **kwargs).images
    else:
        with intervene(pipe, **_intervention(condition)):
            images = pipe(generator=generator, **kwargs).images
    return _as_batch(images)


def _as_batch(images) -> np.ndarray:
    if isinstance(images, np.ndarray):
        return images.astype(np.float32)
    if torch.is_tensor(images):
        return images.float().cpu().numpy()
    return np.stack([np.asarray(im.convert("RGB"), np.float32) / 255 for im in images])  # PIL


def pixel_change(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image, the mean absolute difference to the reference image (same seed, no intervention), in [0, 1]
    units: 0 = identical, 1 = every channel of every pixel flipped from 0 to 1."""
    images, reference = np.asarray(images, np.float32), np.asarray(reference, np.float32)
    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} must have the same shape "
                         "(same prompts, same seed)")
    return np.abs(images - reference).reshape(len(images), -1).mean(1)


def shapes_score(images: np.ndarray, prompts: Sequence[str]) -> pd.DataFrame:
    """Shapes world only: per image, whether the evaluator reads each attribute of its caption right, plus ``all``
    (every attribute right). A (N, attributes + 1) boolean frame, the ``score_fn`` of ``disruption_table``."""
    from .shapes import ATTRIBUTES, evaluate_batch, parse_caption

    read = evaluate_batch(images)
    truth = [parse_caption(p).attributes for p in prompts]
    right = pd.DataFrame([{a: r[a] == t[a] for a in ATTRIBUTES} for r, t in zip(read, truth)])
    right["all"] = right.all(axis=1)
    return right


def _describe(indices) -> str:
    """Block or step indices as a short label: None -> "all", [0, 1, 2] -> "0-2", [3] -> "3", [1, 4] -> "1,4"."""
    if indices is None:
        return "all"
    values = sorted({int(i) for i in indices})
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values))


def condition_set(name: str) -> str:
    """The set a condition name belongs to: "top-4 @b2" -> "top", "random-4#1" -> "random", "baseline"."""
    return re.split(r"[-\s@#]", name, maxsplit=1)[0]


def disruption_table(pipe, prompts: Sequence[str] | None, selections: Mapping[str, object], seed: int = 0,
                     score_fn: Callable | None = None, reference: np.ndarray | None = None,
                     return_images: bool = False, **pipe_kwargs):
    """Generate once unmodified and once per condition (same prompts, same seed) and tabulate what changed.

    ``selections``: {name: channel indices ((k,) or (blocks, k), zeroed in every block and step)} or
    {name: dict of ``helpers.intervene`` arguments} (e.g. ``{"channels": idx, "blocks": [2], "steps": [0, 1]}``,
    ``"mode": "scale", "scale": 4.0``). ``score_fn(images, prompts)`` -> per-image boolean frame with a column
    ``all`` (e.g. ``shapes_score``); without it only the pixel change is measured. ``reference``: the unmodified
    images, if already generated. ``pipe_kwargs`` go to every pipeline call (``num_inference_steps``, ...).

    Returns a DataFrame indexed by condition (``baseline`` first) with columns ``set`` (the name's prefix: top,
    bottom, random, ...), ``k`` (channels per block), ``blocks``, ``steps``, ``n``, ``pixel_change`` (mean over
    images) and, with a score function, one accuracy column per attribute plus ``all_correct`` (count), ``all``,
    ``all_low``, ``all_high`` (fraction with its 95% Wilson interval). With ``return_images=True`` also returns
    {name: images}.
    """
    if not selections:
        raise ValueError("selections is empty: give {name: channel indices}, e.g. control_selections(stat, [1, 2])")
    if "baseline" in selections:
        raise ValueError("'baseline' is reserved for the unmodified generation; rename that condition")
    conditions = {name: _intervention(c) for name, c in selections.items()}  # validate all before generating
    residual_blocks(pipe)  # a clear error now for unsupported pipelines, not after the baseline
    base = generate_images(pipe, prompts, seed, **pipe_kwargs) if reference is None else _as_batch(reference)
    images = {"baseline": base}
    for name, condition in conditions.items():
        images[name] = generate_images(pipe, prompts, seed, condition, **pipe_kwargs)
    rows = []
    for name, ims in images.items():
        c = conditions.get(name)
        row = {"condition": name, "set": condition_set(name),
               "k": int(torch.as_tensor(c["channels"]).shape[-1]) if c else 0,
               "blocks": _describe(c.get("blocks")) if c else "none",
               "steps": _describe(c.get("steps")) if c else "none",
               "n": len(ims), "pixel_change": float(pixel_change(ims, base).mean())}
        if score_fn is not None:
            right = score_fn(ims, prompts)
            if "all" not in right:
                raise ValueError("score_fn must return a per-image boolean frame with a column 'all'")
            for col in right.columns:
                row[col] = float(right[col].mean())
            _, low, high = proportion(right["all"].to_numpy(bool))
            row.update(all_correct=int(right["all"].sum()), all_low=low, all_high=high)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("condition")
    return (table, images) if return_images else table


def summarise_sets(table: pd.DataFrame, blocks: str = "all", steps: str = "all") -> pd.DataFrame:
    """One row per (set, k) of the conditions acting in ``blocks`` and ``steps``, random draws pooled: mean pixel
    change, and the all-correct fraction with a Wilson interval over all draws' images (when scored)."""
    rows = table[(table["blocks"] == blocks) & (table["steps"] == steps) & (table["set"] != "baseline")]
    if rows.empty:
        raise ValueError(f"no conditions act in blocks={blocks!r} and steps={steps!r}")
    out = []
    for (name, k), group in rows.groupby(["set", "k"], sort=False):
        row = {"set": name, "k": k, "draws": len(group), "pixel_change": group["pixel_change"].mean()}
        if "all_correct" in group:
            p, low, high = proportion(int(group["all_correct"].sum()), int(group["n"].sum()))
            row.update({"all": p, "all_low": low, "all_high": high})
        out.append(row)
    return pd.DataFrame(out).set_index(["set", "k"]).sort_index()


def collapse_sentence(table: pd.DataFrame, k: int) -> str:
    """A computed sentence comparing top-k with bottom-k and random-k (all blocks, all steps) against the baseline."""
    sets = summarise_sets(table)
    base = table.loc["baseline"]
    top, bottom, rand = (sets.loc[(s, k)] for s in SETS)
    if "all" in sets:
        closer = max(bottom["all"], rand["all"])
        return (f"top-{k}: all-correct {base['all']:.3f} -> {top['all']:.3f} "
                f"(bottom-{k}: {bottom['all']:.3f}, random-{k}: {rand['all']:.3f}; gap to the better-kept control "
                f"{closer - top['all']:.3f}); pixel change {top['pixel_change']:.3f} vs {bottom['pixel_change']:.3f} "
                f"/ {rand['pixel_change']:.3f}")
    return (f"top-{k}: pixel change {top['pixel_change']:.3f} vs {bottom['pixel_change']:.3f} (bottom-{k}) and "
            f"{rand['pixel_change']:.3f} (random-{k})")


def collapse_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per k (all blocks, all steps): all-correct fraction under top-k, bottom-k and random-k, the ``gap`` from
    top-k to the worse-kept control, the pixel change of each set and ``pixel_ratio`` = top-k's change over the
    larger control's. ``collapsed``: top-k keeps at most half the baseline's all-correct fraction and its Wilson
    interval lies below both controls' (None without scoring)."""
    sets = summarise_sets(table)
    scored = "all" in sets
    out = []
    for k in sorted(sets.index.get_level_values("k").unique()):
        if not all((s, k) in sets.index for s in SETS):
            continue
        top, bottom, rand = (sets.loc[(s, k)] for s in SETS)
        row = {"k": k, "pixel_top": top["pixel_change"], "pixel_bottom": bottom["pixel_change"],
               "pixel_random": rand["pixel_change"],
               "pixel_ratio": top["pixel_change"] / max(bottom["pixel_change"], rand["pixel_change"], 1e-12)}
        if scored:
            base = table.loc["baseline", "all"]
            row.update(top=top["all"], bottom=bottom["all"], random=rand["all"],
                       gap=min(bottom["all"], rand["all"]) - top["all"],
                       collapsed=bool(top["all"] <= base / 2 and top["all_high"] < min(bottom["all_low"],
                                                                                      rand["all_low"])))
        else:
            row["collapsed"] = None
        out.append(row)
    return pd.DataFrame(out).set_index("k")


def condition_map(table: pd.DataFrame, value: str, rows: str, columns: str = "k", set_name: str = "top",
                  **fixed: str) -> pd.DataFrame:
    """A (rows x columns) frame of ``value`` over the conditions of one set that act in restricted ``rows`` (e.g.
    ``rows="blocks"``: one block at a time), the other columns fixed (e.g. ``steps="all"``); rows in table order."""
    t = table[(table["set"] == set_name) & (table[rows] != "all")]
    for col, v in fixed.items():
        t = t[t[col] == v]
    if t.empty:
        raise ValueError(f"no {set_name} conditions with restricted {rows} and {fixed}")
    return t.pivot(index=rows, columns=columns, values=value).reindex(t[rows].unique())


# ------------------------------------------------------------------------------------------------ figures

def plot_accuracy_vs_k(table: pd.DataFrame, sets: Sequence[str] = SETS):
    """All-correct fraction (95% Wilson intervals) and mean pixel change against k, one line per set, with the
    unmodified model as a dashed line. Without accuracy columns, only the pixel-change panel."""
    summary = summarise_sets(table)
    scored = "all" in summary
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(7.5 if scored else 3.8, 2.8), dpi=DPI, squeeze=False,
                             layout="constrained")
    axes = list(axes.flat)
    for name in sets:
        if name not in summary.index.get_level_values("set"):
            continue
        s = summary.loc[name]
        ks, colour = s.index.to_numpy(), SET_COLOURS.get(name)
        label = f"{name}-k" + (f" ({int(s['draws'].iloc[0])} draws)" if s["draws"].iloc[0] > 1 else "")
        if scored:
            axes[0].errorbar(ks, s["all"], yerr=[s["all"] - s["all_low"], s["all_high"] - s["all"]], marker="o",
                             ms=4, capsize=3, color=colour, label=label)
        axes[-1].plot(ks, s["pixel_change"], marker="o", ms=4, color=colour, label=label)
    if scored:
        base = table.loc["baseline"]
        axes[0].axhline(base["all"], color="black", ls="--", lw=1, label="unmodified")
        axes[0].axhspan(base["all_low"], base["all_high"], color="black", alpha=0.08, lw=0)
        axes[0].set(ylabel="all attributes right", ylim=(-0.03, 1.03), title="accuracy")
    axes[-1].set(ylabel="mean |change| (pixels in [0, 1])", title="pixel change vs unmodified")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ks = sorted(summary.index.get_level_values("k").unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (channels zeroed per block)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def condition_grid(images: Mapping[str, np.ndarray], conditions: Sequence[str], rows: Sequence[int],
                   prompts: Sequence[str] | None = None, scale: float = 1.0, wrap: int = 34):
    """Images side by side: one row per chosen prompt, one column per condition (e.g. baseline, top-k, ...)."""
    import textwrap

    missing = [c for c in conditions if c not in images]
    if missing:
        raise KeyError(f"no images for conditions {missing}; have {list(images)}")
    label_width = 1.9 if prompts is not None else 0
    fig, axes = plt.subplots(len(rows), len(conditions), squeeze=False, dpi=DPI, layout="constrained",
                             figsize=(len(conditions) * scale + label_width, len(rows) * scale + 0.3))
    for r, i in enumerate(rows):
        for c, name in enumerate(conditions):
            ax = axes[r, c]
            ax.imshow(np.clip(images[name][i], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        if prompts is not None:
            axes[r, 0].set_ylabel("\n".join(textwrap.wrap(prompts[i], wrap)), fontsize=6.5, rotation=0,
                                  ha="right", va="center")
    return fig


def plot_map(values: pd.DataFrame, title: str, fmt: str = "{:.3f}", cmap: str = "magma_r", vmin=None, vmax=None,
             label: str = ""):
    """A small annotated heat map of a (rows x columns) frame, e.g. pixel change per block (rows) and k (columns)."""
    fig, ax = plt.subplots(figsize=(0.75 * values.shape[1] + 2.2, 0.32 * values.shape[0] + 1.0), dpi=DPI,
                           layout="constrained")
    im = ax.imshow(values.to_numpy(float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in values.columns], fontsize=8)
    ax.set_yticks(range(values.shape[0]), [str(r) for r in values.index], fontsize=8)
    ax.set_xlabel(values.columns.name or "", fontsize=8)
    ax.set_ylabel(values.index.name or "", fontsize=8)
    for (r, c), v in np.ndenumerate(values.to_numpy(float)):
        red, green, blue, _ = im.cmap(im.norm(v))
        ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=7,
                color="white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    return fig
