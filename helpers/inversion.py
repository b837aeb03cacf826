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

Chapter 5 uses it on the book model, whose pipeline takes packed latents (``helpers.shapes.image_to_latents``).
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

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
        return (prev,) if not return_dict else FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)

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
    previous = scheduler.__dict__.get("step")  # another wrapper (helpers.hooks) stays in the chain
    step = scheduler.step

    def keeping(*args, **kwargs):
        out = step(*args, **kwargs)
        kept[:] = [out[0] if isinstance(out, tuple) else out.prev_sample]
        return out

    scheduler.step = keeping  # an instance attribute, in front of the class's method
    try:
        yield kept
    finally:
        if previous is None:
            scheduler.__dict__.pop("step", None)
        else:
            scheduler.step = previous
