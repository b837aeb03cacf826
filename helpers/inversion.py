"""Flow inversion (chapter 5): the noise from which a flow-matching pipeline redraws a given image.

A rectified-flow model draws an image by integrating ``dx/dt = v(x, t, caption)`` from noise (t = 1) to image (t = 0)
on a sigma grid; inversion runs the same Euler steps the other way, ``x_next = x_t + (t_next - t) v(x_t, t)``
(``timestep="next"``: the velocity at ``t_next``, the DDIM-inversion trick). ``invert`` swaps the pipeline's scheduler
for one that walks its grid backwards and calls the pipeline itself, so prompt encoding, position ids, guidance and
transformer calls are those of sampling. Latents take the pipeline's ``latents=`` form (packed tokens for FLUX.1,
Qwen-Image and the book model; (B, C, h, w) for SD3, SANA, FLUX.2); PixArt-Sigma predicts noise and is refused. ::

    inv = invert(pipe, latents, num_inference_steps=20, prompt=captions)
    redrawn = pipe(prompt=captions, latents=inv.noise, num_inference_steps=20)
"""
from __future__ import annotations

import inspect
import operator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput


@dataclass
class Inversion:
    """``noise``: the latents at t = 1 (pass as ``latents=`` to regenerate). ``trajectory``: (B, N + 1, ...) latents
    from the image (index 0, t = 0) to the noise (index N, t = 1). ``sigmas``: the N + 1 times, ascending."""
    noise: torch.Tensor
    trajectory: torch.Tensor
    sigmas: torch.Tensor


class ReversedFlowScheduler:
    """A flow-matching scheduler run backwards: its sigma grid (shifts and custom sigmas as in sampling) reversed,
    ``step`` moving *up* it, every latent kept in ``trajectory``; anything else goes to the wrapped scheduler."""

    def __init__(self, inner, timestep: str = "current"):
        config = getattr(inner, "config", {})
        if not (type(inner).__name__.startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"
                or config.get("use_flow_sigmas")):
            raise ValueError(f"{type(inner).__name__} is not a flow-matching scheduler; Euler flow inversion needs a "
                             "velocity-predicting (rectified-flow) pipeline such as FLUX, SD3, Qwen-Image, SANA or "
                             "the book model")
        if timestep not in ("current", "next"):
            raise ValueError(f"timestep must be one of ('current', 'next'), got {timestep!r}")
        self.inner, self.rule, self.trajectory, self._index = inner, timestep, [], 0
        self.sigmas = self.timesteps = None

    step_index = property(lambda self: self._index, doc="Steps taken since set_timesteps (helpers.hooks counts them).")
    begin_index = None

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None, **kwargs):
        accepted = inspect.signature(self.inner.set_timesteps).parameters
        given = dict(num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu,
                     timesteps=timesteps, **kwargs)
        self.inner.set_timesteps(**{k: v for k, v in given.items() if v is not None and k in accepted})
        down = self.inner.sigmas.detach().float().cpu()  # descending, ending with the terminal 0
        self.sigmas = (down if down[-1] == 0 else torch.cat([down, down.new_zeros(1)])).flip(0)
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
        prev = (sample.float() + float(self.sigmas[i + 1] - self.sigmas[i]) * model_output.float()).to(sample.dtype)
        self.trajectory.append(prev.detach().float().cpu())
        self._index += 1
        return (prev,) if not return_dict else FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)

    def __getattr__(self, name):  # only reached for attributes this class does not define
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextmanager
def reversed_scheduler(pipe, timestep: str = "current"):
    """``pipe.scheduler`` run backwards inside the context (the original back on exit, also on error)."""
    original = pipe.scheduler
    try:
        wrapper = ReversedFlowScheduler(original, timestep)
        object.__setattr__(pipe, "scheduler", wrapper)  # DiffusionPipeline.__setattr__ would rewrite the config
    except ValueError as e:  # name the pipeline: e.g. PixArt-Sigma samples with an epsilon-prediction DPM-Solver
        raise ValueError(f"{type(pipe).__name__} ({type(getattr(pipe, 'transformer', pipe)).__name__}): {e}") from None
    try:
        yield wrapper
    finally:
        object.__setattr__(pipe, "scheduler", original)


def invert(pipe, latents: torch.Tensor, num_inference_steps: int = 20, timestep: str = "current",
           **pipe_kwargs) -> Inversion:
    """Euler flow inversion of clean ``latents`` (the ``latents=`` form) to noise, the pipeline run on its reversed
    grid; ``pipe_kwargs`` condition it as in sampling (``prompt=...``; no guidance for a faithful inversion)."""
    steps = num_inference_steps
    if not torch.is_tensor(latents) or not torch.isfinite(latents).all():
        raise ValueError(f"latents must be a finite tensor in the pipeline's latents= format, got "
                         f"{'NaN or infinite values' if torch.is_tensor(latents) else type(latents).__name__}")
    if isinstance(steps, bool) or not hasattr(type(steps), "__index__") or operator.index(steps) <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    if "output_type" in pipe_kwargs:
        raise ValueError("invert always asks the pipeline for latents; do not pass output_type")
    steps = operator.index(steps)
    with reversed_scheduler(pipe, timestep) as scheduler:
        pipe(latents=latents, num_inference_steps=steps, output_type="latent", **pipe_kwargs)
    if len(scheduler.trajectory) != steps + 1:
        raise RuntimeError(f"expected {steps} inversion steps, the pipeline took {len(scheduler.trajectory) - 1}")
    trajectory = _as_latents(torch.stack(scheduler.trajectory, dim=1), latents)
    return Inversion(trajectory[:, -1].to(latents.device, latents.dtype), trajectory, scheduler.sigmas)


def _as_latents(states: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Scheduler samples (B, T, ...) in the form of the pipeline's ``latents=`` argument, as ``latents`` are (FLUX.2
    takes (B, C, h, w) and steps them packed into tokens (B, h * w, C))."""
    shape = tuple(latents.shape[1:])
    if tuple(states.shape[2:]) == shape:
        return states
    if len(shape) == 3 and tuple(states.shape[2:]) == (shape[1] * shape[2], shape[0]):
        return states.transpose(-1, -2).reshape(*states.shape[:2], *shape)
    raise RuntimeError(f"the pipeline's scheduler stepped latents of shape {tuple(states.shape[2:])}, which do not "
                       f"map back onto the latents= format {shape}")
