"""Flow inversion: the noise from which a flow-matching pipeline redraws a given image.

A rectified-flow model draws an image by integrating ``dx/dt = v(x, t, caption)`` from noise (t = 1) to image
(t = 0) with Euler steps on a sigma grid. Inversion runs the same ODE the other way, from the clean image x0 up to
noise, on the same grid reversed (0, 1/N, ..., 1 for the book model):

    x_{t_next} = x_t + (t_next - t) * v(x_t, t, caption)          (Euler inversion, velocity at the current t)

``timestep="next"`` evaluates the velocity at ``t_next`` instead (the DDIM-inversion trick: the sampler then visits
the same timesteps the inversion did). Regenerating from the inverted noise with the pipeline redraws the image up
to the error of swapping ``v(x_t)`` for ``v(x_{t_next})`` at every step.

The inversion is generic over diffusers flow-matching pipelines: ``invert`` swaps the pipeline's scheduler for one
that walks the sigma grid backwards and calls the pipeline itself, so the pipeline still encodes the prompt, builds
its position ids and guidance and calls its transformer exactly as when it samples. Latents are in whatever form
the pipeline's ``latents=`` argument takes (packed tokens for FLUX.1, Qwen-Image and the book model, (B, C, h, w) for
SD3, SANA and FLUX.2, whose pipeline packs them itself). PixArt-Sigma samples with a noise-predicting scheduler: it is
refused with an error that names it.

    inv = invert(pipe, latents, num_inference_steps=20, prompt=captions)
    redrawn = pipe(prompt=captions, latents=inv.noise, num_inference_steps=20)

Shapes-world wrappers (``check_reference``, ``image_to_latents``, ``invert_images``, ``reconstruction``) take
(B, 32, 32, 3) images in [0, 1] and score with the evaluator.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

TIMESTEP_RULES = ("current", "next")


@dataclass
class Inversion:
    """``noise``: the latents at t = 1 (pass as ``latents=`` to regenerate). ``trajectory``: (B, N + 1, ...) latents
    from the image (index 0, t = 0) to the noise (index N, t = 1). ``sigmas``: the N + 1 times, ascending."""

    noise: torch.Tensor
    trajectory: torch.Tensor
    sigmas: torch.Tensor


def is_flow_scheduler(scheduler) -> bool:
    """Whether the scheduler integrates a velocity (flow matching), the only kind this Euler inversion inverts."""
    config = getattr(scheduler, "config", {})
    return (type(scheduler).__name__.startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"
            or bool(config.get("use_flow_sigmas")))


class ReversedFlowScheduler:
    """A flow-matching scheduler run backwards: ``set_timesteps`` asks the wrapped scheduler for its sigma grid
    (so shifts and custom sigmas apply as in sampling), reverses it, and ``step`` moves *up* the grid with
    ``x + (sigma_next - sigma) * v``. Every latent it sees is kept in ``trajectory`` (on CPU). Anything else is
    delegated to the wrapped scheduler."""

    def __init__(self, inner, timestep: str = "current"):
        if not is_flow_scheduler(inner):
            raise ValueError(f"{type(inner).__name__} is not a flow-matching scheduler; Euler flow inversion needs a "
                             "velocity-predicting (rectified-flow) pipeline such as FLUX, SD3, Qwen-Image, SANA or "
                             "the book model")
        if timestep not in TIMESTEP_RULES:
            raise ValueError(f"timestep must be one of {TIMESTEP_RULES}, got {timestep!r}")
        self.inner, self.rule = inner, timestep
        self.trajectory: list[torch.Tensor] = []
        self.sigmas = self.timesteps = None
        self._index = 0

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None, **kwargs):
        accepted = inspect.signature(self.inner.set_timesteps).parameters
        given = dict(num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu,
                     timesteps=timesteps, **kwargs)
        self.inner.set_timesteps(**{k: v for k, v in given.items() if v is not None and k in accepted})
        down = self.inner.sigmas.detach().float().cpu()  # descending, ending with the terminal 0
        if down[-1] != 0:
            down = torch.cat([down, down.new_zeros(1)])
        self.sigmas = down.flip(0)
        at = self.sigmas[:-1] if self.rule == "current" else self.sigmas[1:]
        scale = self.inner.config.get("num_train_timesteps", 1000)
        self.timesteps = (at * scale).to(self.inner.timesteps.device if device is None else device)
        self.trajectory, self._index = [], 0

    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        i = self._index
        if i + 1 >= len(self.sigmas):
            raise RuntimeError("ReversedFlowScheduler.step called more often than there are steps")
        if i == 0:
            self.trajectory.append(sample.detach().float().cpu())
        dt = float(self.sigmas[i + 1] - self.sigmas[i])
        prev = (sample.float() + dt * model_output.float()).to(sample.dtype)
        self.trajectory.append(prev.detach().float().cpu())
        self._index += 1
        if not return_dict:
            return (prev,)
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)

    def set_begin_index(self, begin_index: int = 0):
        self._index = begin_index

    def __getattr__(self, name):  # only reached for attributes this class does not define
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextmanager
def reversed_scheduler(pipe, timestep: str = "current"):
    """Swap ``pipe.scheduler`` for a ``ReversedFlowScheduler`` inside the context; the original comes back on exit,
    also on error. The pipeline's config is left untouched."""
    original = pipe.scheduler
    try:
        wrapper = ReversedFlowScheduler(original, timestep)
    except ValueError as err:  # name the pipeline: e.g. PixArt-Sigma samples with an epsilon-prediction DPM-Solver
        transformer = type(getattr(pipe, "transformer", None)).__name__
        raise ValueError(f"{type(pipe).__name__} ({transformer}): {err}") from None
    object.__setattr__(pipe, "scheduler", wrapper)  # DiffusionPipeline.__setattr__ would rewrite the config
    try:
        yield wrapper
    finally:
        object.__setattr__(pipe, "scheduler", original)


def invert(pipe, latents: torch.Tensor, num_inference_steps: int = 20, timestep: str = "current",
           **pipe_kwargs) -> Inversion:
    """Euler flow inversion of clean ``latents`` (the pipeline's ``latents=`` format) to noise, by running the
    pipeline with its sigma grid reversed. ``pipe_kwargs`` condition the velocity as in sampling: ``prompt=...``
    or ``prompt_embeds=...`` (+ ``pooled_prompt_embeds=...``), ``guidance_scale`` (use 1 / no CFG for a faithful
    inversion), ... Returns the noise and the whole trajectory (see ``Inversion``)."""
    if not torch.is_tensor(latents):
        raise TypeError(f"latents must be a tensor in the pipeline's latents= format, got {type(latents).__name__}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or infinite values")
    if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if "output_type" in pipe_kwargs:
        raise ValueError("invert always asks the pipeline for latents; do not pass output_type")
    with reversed_scheduler(pipe, timestep) as scheduler:
        pipe(latents=latents, num_inference_steps=num_inference_steps, output_type="latent", **pipe_kwargs)
    if len(scheduler.trajectory) != num_inference_steps + 1:
        raise RuntimeError(f"expected {num_inference_steps} inversion steps, the pipeline took "
                           f"{len(scheduler.trajectory) - 1}")
    trajectory = _as_latents(torch.stack(scheduler.trajectory, dim=1), latents)
    return Inversion(noise=trajectory[:, -1].to(latents.device, latents.dtype), trajectory=trajectory,
                     sigmas=scheduler.sigmas)


def invert_and_regenerate(pipe, latents: torch.Tensor, num_inference_steps: int = 20, timestep: str = "current",
                          **pipe_kwargs) -> tuple[Inversion, torch.Tensor]:
    """Invert ``latents`` and sample again from the inverted noise with the same conditioning and steps; returns
    the inversion and the regenerated latents, in the format of ``latents`` (compare the two for the inversion's
    faithfulness)."""
    inv = invert(pipe, latents, num_inference_steps, timestep, **pipe_kwargs)
    # The scheduler's last sample, not the pipeline's output: FLUX.2 returns its latents unpacked and de-normalised.
    with _last_sample(pipe) as last:
        pipe(latents=inv.noise, num_inference_steps=num_inference_steps, output_type="latent", **pipe_kwargs)
    return inv, _as_latents(last[0][:, None], latents)[:, 0]


def _as_latents(states: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Scheduler samples (B, T, ...) in the format of the pipeline's ``latents=`` argument, as ``latents`` are. Most
    pipelines step the latents in the form they are given; FLUX.2 takes (B, C, h, w) and packs them into tokens
    (B, h * w, C) first, which is undone here, so that the inverted noise can be given back as ``latents=``."""
    shape = tuple(latents.shape[1:])
    if tuple(states.shape[2:]) == shape:
        return states
    if len(shape) == 3 and tuple(states.shape[2:]) == (shape[1] * shape[2], shape[0]):
        return states.transpose(-1, -2).reshape(*states.shape[:2], *shape)
    raise RuntimeError(f"the pipeline's scheduler stepped latents of shape {tuple(states.shape[2:])}, which do not "
                       f"map back onto the latents= format {shape}")


@contextmanager
def _last_sample(pipe):
    """Inside the context, ``kept[0]`` is the sample the scheduler's latest step returned."""
    scheduler, kept = pipe.scheduler, []
    step = scheduler.step

    def keeping(*args, **kwargs):
        out = step(*args, **kwargs)
        kept[:] = [out[0] if isinstance(out, tuple) else out.prev_sample]
        return out

    scheduler.step = keeping  # an instance attribute, in front of the class's method
    try:
        yield kept
    finally:
        del scheduler.step


# ----------------------------------------------------------------------------------- subject-driven transport

def _pipe_inputs(inputs) -> dict:
    """A list of prompts -> ``{"prompt": [...]}``; a dict of per-row pipeline inputs is passed as it is."""
    if isinstance(inputs, str):
        raise TypeError(f"give a list of prompts (one per row), not one string: [{inputs!r}]")
    return dict(inputs) if isinstance(inputs, Mapping) else {"prompt": list(inputs)}


@dataclass
class SubjectTransport:
    """The result of ``subject_transport``. ``inversion``: the references' inversion (its ``noise`` starts every
    run). ``cache``: the regenerated references' values on the cached channels (``helpers.transport.SourceCache``;
    ``cache.images`` are the regenerated references). ``statistic``: (blocks, channels) |mean over image tokens| on
    the regenerated trajectories. ``channels``: {"top-k", "random-k"} (blocks, k). ``masks``: the references'
    foreground at every step and block, from K = 2 k-means on the top-k channels. ``images``: {"no transport",
    "top-k", "random-k"}, the targets drawn from the inverted noise."""

    inversion: Inversion
    cache: object
    statistic: torch.Tensor
    channels: dict
    masks: dict
    images: dict


def record_reference(pipe, noise: torch.Tensor, inputs, channels=None, blocks=None, steps=None,
                     dtype: torch.dtype | None = None, **pipe_kwargs):
    """Regenerate references from their inverted ``noise`` (the source trajectory) and record along it: per-channel
    statistics of every block and step (a ``Recording``, to choose the massive channels) and the image tokens of
    ``channels`` (None: all) at ``blocks`` and ``steps`` (None: all) for ``helpers.transport.cached_transport``.
    Returns (cache, recording)."""
    from .activations import record
    from .models import hidden_width
    from .transport import record_source

    channels = torch.arange(hidden_width(pipe)) if channels is None else channels
    with record(pipe) as recording:
        cache = record_source(pipe, inputs, channels, blocks=blocks, steps=steps, latents=noise, dtype=dtype,
                              **pipe_kwargs)
    return cache, recording


def subject_transport(pipe, reference_latents: torch.Tensor, reference_inputs, target_inputs, k: int = 16,
                      num_inference_steps: int = 20, cache_channels="all", control_seed: int = 0,
                      timestep: str = "current", blocks=None, steps=None, cache_dtype: torch.dtype | None = None,
                      inversion: Inversion | None = None, **pipe_kwargs) -> SubjectTransport:
    """Subject-driven generation by transport, generic over flow-matching pipelines.

    1. invert the reference latents, conditioned on ``reference_inputs`` (prompts or a dict of per-row inputs);
    2. regenerate them from the inverted noise, recording channel statistics and caching the image tokens;
    3. draw every target (``target_inputs``, one per reference) from its reference's inverted noise: without
       transport, and with the reference's top-k (massive) or random-k channels transported at ``blocks`` and
       ``steps`` (None: all) inside the reference's foreground (K = 2 k-means on its top-k channels).

    ``cache_channels``: "all" keeps every channel (later ``cached_transport`` calls may use any set), "used" only
    the top-k and random-k ones (what a large model can afford), or a (blocks, m) index tensor.
    ``inversion``: an earlier ``invert`` of the same latents and inputs, to skip step 1. ``pipe_kwargs`` go to
    every pipeline call (e.g. ``guidance_scale=1``). Returns a ``SubjectTransport``.
    """
    from .channels import channel_statistic, random_k, top_k
    from .transport import cached_transport, cluster_masks, plain_generation

    if inversion is None:
        inversion = invert(pipe, reference_latents, num_inference_steps, timestep, **_pipe_inputs(reference_inputs),
                           **pipe_kwargs)
    elif len(inversion.sigmas) != num_inference_steps + 1 or inversion.noise.shape != reference_latents.shape:
        raise ValueError(f"the given inversion has {len(inversion.sigmas) - 1} steps and noise of shape "
                         f"{tuple(inversion.noise.shape)}; expected {num_inference_steps} steps and "
                         f"{tuple(reference_latents.shape)}")
    run = dict(num_inference_steps=num_inference_steps, **pipe_kwargs)
    # Channel statistics come from the regenerated trajectory; a first pass is only needed to cache fewer channels.
    if isinstance(cache_channels, str) and cache_channels == "all":
        cached = None
    elif isinstance(cache_channels, str) and cache_channels == "used":
        _, probe = record_reference(pipe, inversion.noise, reference_inputs, channels=torch.arange(1), steps=[0],
                                    blocks=[0], **run)
        stat = channel_statistic(probe)
        cached = torch.cat([top_k(stat, k), random_k(stat, k, control_seed, exclude=top_k(stat, k))], 1)
    elif torch.is_tensor(cache_channels):
        cached = cache_channels
    else:
        raise ValueError(f"cache_channels must be 'all', 'used' or a (blocks, m) index tensor, got {cache_channels!r}")
    cache, recording = record_reference(pipe, inversion.noise, reference_inputs, channels=cached, blocks=blocks,
                                        steps=steps, dtype=cache_dtype, **run)
    statistic = channel_statistic(recording)  # (blocks, channels): |mean over image tokens|, over steps and rows
    top = top_k(statistic, k)
    channels = {f"top-{k}": top, f"random-{k}": random_k(statistic, k, control_seed, exclude=top)}
    masks = cluster_masks(cache, top)
    images = {"no transport": plain_generation(pipe, target_inputs, latents=inversion.noise, **run)}
    for name, chosen in channels.items():
        images[name] = cached_transport(pipe, cache, target_inputs, channels=chosen, mask=masks,
                                        latents=inversion.noise, **run)
    return SubjectTransport(inversion, cache, statistic, channels, masks, images)


# ----------------------------------------------------------------------------------- the shapes world

def check_reference(images) -> np.ndarray:
    """Reference images as a float32 (B, 32, 32, 3) array in [0, 1]; one (32, 32, 3) image becomes a batch of one.
    Anything else raises a ValueError that names the problem and the fix."""
    from .shapes.world import CANVAS

    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != (CANVAS, CANVAS, 3):
        raise ValueError(f"a reference image must have shape ({CANVAS}, {CANVAS}, 3) (or a batch (B, {CANVAS}, "
                         f"{CANVAS}, 3)), height x width x RGB, got {images.shape}; render the scene with "
                         "helpers.shapes.render or resize the image to 32x32")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"a reference image must hold floats in [0, 1], got dtype {images.dtype}; "
                         "convert uint8 images with image / 255")
    if not np.isfinite(images).all():
        raise ValueError("the reference image contains NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"a reference image must hold values in [0, 1], got range [{images.min():.3f}, "
                         f"{images.max():.3f}]; convert from [-1, 1] with (x + 1) / 2 or from 0-255 with x / 255")
    return images.astype(np.float32)


def image_to_latents(images) -> torch.Tensor:
    """(B, 32, 32, 3) images in [0, 1] -> the book model's packed latents (B, 64, 48) in [-1, 1]."""
    from .shapes.pipeline import pack

    x = torch.from_numpy(check_reference(images)).permute(0, 3, 1, 2)
    return pack(x * 2 - 1)


def latents_to_image(latents: torch.Tensor) -> np.ndarray:
    """The book model's packed latents -> (B, 32, 32, 3) images in [0, 1] (as the pipeline decodes them)."""
    from .shapes.pipeline import unpack

    return ((unpack(latents.float()) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def invert_images(pipe, images, captions: list[str], num_inference_steps: int = 20,
                  timestep: str = "current") -> Inversion:
    """Invert shapes-world reference images (B, 32, 32, 3) in [0, 1], each conditioned on its caption."""
    latents = image_to_latents(images)
    if len(captions) != latents.shape[0]:
        raise ValueError(f"{latents.shape[0]} reference images but {len(captions)} captions")
    return invert(pipe, latents, num_inference_steps, timestep, prompt=list(captions))


def attribute_agreement(images, references) -> np.ndarray:
    """Bool (B, 5): whether the evaluator reads each attribute of ``images`` as it reads it on ``references``."""
    from .shapes.world import ATTRIBUTES, evaluate_batch

    got, want = evaluate_batch(images), evaluate_batch(references)
    return np.array([[g[a] == w[a] for a in ATTRIBUTES] for g, w in zip(got, want)], bool)


def reconstruction(pipe, images, captions: list[str], num_inference_steps: int = 20,
                   timestep: str = "current") -> dict:
    """Invert shapes references and regenerate them: ``mae`` (mean |pixel error| in [0, 1] units, per image),
    ``agree`` (bool (B, 5) evaluator agreement per attribute), ``all`` (every attribute agrees), the regenerated
    ``images`` and the ``inversion``."""
    images = check_reference(images)
    latents = image_to_latents(images)
    if len(captions) != latents.shape[0]:
        raise ValueError(f"{latents.shape[0]} reference images but {len(captions)} captions")
    inv, redrawn = invert_and_regenerate(pipe, latents, num_inference_steps, timestep, prompt=list(captions))
    regenerated = latents_to_image(redrawn)
    agree = attribute_agreement(regenerated, images)
    return dict(mae=np.abs(regenerated - images).mean(axis=(1, 2, 3)), agree=agree, all=agree.all(1),
                images=regenerated, inversion=inv)


#: Attributes of the subject (what the reference gives) and of its context (what the target prompt gives).
IDENTITY = ("shape", "colour")
CONTEXT = ("size", "position", "background")


def subject_pairs(n: int, seed: int = 0, changes=CONTEXT) -> tuple[list, list, list[str]]:
    """Shapes world only: ``n`` (reference, target) scene pairs for subject-driven generation. The reference is a
    jittered scene (rendered, never generated); the target keeps the reference's context except one attribute of
    ``changes`` (cycled over the pairs), and names a *different* subject: another shape and another colour, so
    that the target prompt alone never draws the reference's subject. Neither is a held-out combination, and the
    target's background differs from both subjects' colours. Returns (references, targets, changed attributes)."""
    from .shapes import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, is_held_out, sample_scenes

    choices = {"size": list(SIZES), "position": list(POSITIONS), "background": list(COLOURS)}
    changes = [changes] if isinstance(changes, str) else list(changes)
    if not changes or any(c not in CONTEXT for c in changes):
        raise ValueError(f"changes must be context attributes among {CONTEXT}, got {changes!r}")
    rng = np.random.default_rng(seed)
    references, targets, changed = [], [], []
    for ref in sample_scenes(4 * n + 16, seed, exclude=HELD_OUT):
        attribute = changes[len(targets) % len(changes)]
        value = [v for v in choices[attribute] if v != getattr(ref, attribute)]
        value = value[rng.integers(len(value))]
        background = value if attribute == "background" else ref.background
        shapes = [s for s in SHAPES if s != ref.shape]
        colours = [c for c in COLOURS if c not in (ref.colour, background)]
        target = ref.replace(dx=0.0, dy=0.0, scale=1.0, shape=shapes[rng.integers(len(shapes))],
                             colour=colours[rng.integers(len(colours))], **{attribute: value})
        if ref.colour == background or is_held_out(target, HELD_OUT):
            continue
        references.append(ref)
        targets.append(target)
        changed.append(attribute)
        if len(targets) == n:
            return references, targets, changed
    raise RuntimeError(f"could not draw {n} pairs")  # not reached for the shapes grammar


def subject_scores(images, references, targets) -> dict:
    """Shapes world only: read each image back and score it as subject-driven generation. ``identity``: the
    subject's shape and colour are the reference's; ``context``: size, position and background are the target's;
    ``both``; and per attribute (``shape``, ``colour``, ``size``, ...), whether it has the value the task asks for.
    Each a bool array with one entry per pair."""
    from .shapes import evaluate_batch

    if not (len(images) == len(references) == len(targets)):
        raise ValueError(f"{len(images)} images, {len(references)} references and {len(targets)} targets: one of "
                         "each per pair")
    read = evaluate_batch(images)
    out = {a: np.array([r[a] == getattr(ref, a) for r, ref in zip(read, references)]) for a in IDENTITY}
    out.update({a: np.array([r[a] == getattr(t, a) for r, t in zip(read, targets)]) for a in CONTEXT})
    out["identity"] = np.logical_and.reduce([out[a] for a in IDENTITY])
    out["context"] = np.logical_and.reduce([out[a] for a in CONTEXT])
    out["both"] = out["identity"] & out["context"]
    return out


# ----------------------------------------------------------------------------------- figures

def trajectory_figure(inversion: Inversion, rows=(0, 1), columns: int = 5, seed: int = 0):
    """Shapes world: for each chosen reference, its inversion trajectory at ``columns`` evenly spaced times from
    t = 0 (the image) to t = 1 (the inverted noise), above the same image noised the way training noises it,
    ``(1 - t) x0 + t * noise`` with Gaussian noise. Returns the figure."""
    from .plotting import image_grid

    n = inversion.trajectory.shape[1] - 1
    index = np.linspace(0, n, columns).round().astype(int)
    noise = torch.randn(inversion.trajectory[:1, 0].shape, generator=torch.Generator().manual_seed(seed))
    images, titles = [], []
    for r in rows:
        x0 = inversion.trajectory[r:r + 1, 0]
        for label, frames in (("inversion", [inversion.trajectory[r:r + 1, i] for i in index]),
                              ("noising", [(1 - float(inversion.sigmas[i])) * x0 + float(inversion.sigmas[i]) * noise
                                           for i in index])):
            images += [latents_to_image(f)[0] for f in frames]
            titles += [f"{label} t={float(inversion.sigmas[i]):.2f}" for i in index]
    return image_grid(images, titles=titles, ncols=columns, wrap=24)


def sweep_figure(ks, scores: dict, baseline: dict, keys=("identity", "both")):
    """Adoption against the number of transported channels k: one panel per key of ``keys``, a line for the top-k
    (massive) and one for the random-k channels with 95% Wilson intervals, and the no-transport baseline.
    ``scores[(name, k)]`` and ``baseline`` are ``subject_scores`` dicts. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import DPI
    from .stats import proportion

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), dpi=DPI, squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes.flat, keys):
        for name, colour in (("top", "tab:red"), ("random", "tab:grey")):
            present = [k for k in ks if (name, k) in scores]
            stats = np.array([proportion(scores[name, k][key]) for k in present])
            ax.errorbar(present, stats[:, 0], yerr=[stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]],
                        marker="o", ms=4, capsize=2, color=colour, label=f"{name}-k channels")
        ax.axhline(np.mean(baseline[key]), color="black", ls=":", lw=1, label="no transport")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("channels transported per block (k)")
        ax.set_title(key, fontsize=9)
    axes.flat[0].set_ylabel("fraction of pairs")
    axes.flat[0].legend(fontsize=7)
    return fig
