"""Record and change the residual stream of a DiT while its own pipeline runs.

    with helpers.record(pipe, keep_tokens={"blocks": [2], "steps": [10]}) as rec:
        pipe(prompt=prompts)
    rec.mean                  # (steps, blocks, rows, channels): signed mean over the image tokens
    rec.tokens[10, 2]         # (rows, image tokens, channels), kept for the blocks and steps asked for

    def zero_top(x, site):    # an edit: the image tokens of one block in one step -> their new values
        return x.index_fill(-1, top[site.block], 0.0)
    with helpers.intervene(pipe, edit=zero_top):
        pipe(prompt=prompts)
    with helpers.intervene(pipe, channels=top, mode="zero"):  # the same, by name
        pipe(prompt=prompts)

*Steps* are the iterations of the pipeline's denoising loop, counted by the scheduler's ``step`` calls (so bfloat16
timesteps that collide, second-order schedulers and extra guidance calls all count right). The *rows* of a step are
the batch rows of its transformer calls, concatenated in call order; with classifier-free guidance they are
``[uncond, cond]`` (one batched call) or ``[cond, uncond]`` (two calls): see ``helpers.models.MODELS``. Steps may
have different numbers of rows (SD3 skip-layer guidance adds a call); ``Recording.rows_per_step`` says so and the
missing rows of ``mean`` are NaN. *Image tokens* are the generated image's: reference-image tokens that edit
pipelines append (FLUX.1 Kontext, FLUX.2, Qwen-Image-Edit) are neither recorded nor changed.

A context is used for one ``with`` block. Arguments are checked before any hook is registered, every hook is removed
when the block ends (also on an error), and steps, blocks or rows asked for that never ran raise at the end.
"""
from __future__ import annotations

import functools
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch

from .models import (CONCATENATED, FIRST_ID_ZERO, IMG_SHAPES, NONE, architecture, conditional_rows, hidden_width,
                     model_of, residual_blocks, transformer_of)


class Site(NamedTuple):
    """Where an edit runs: denoising ``step``, ``block`` index, the ``rows`` of the step this call holds, the
    ``label`` of the block ("double 2") and the ``timestep``."""

    step: int
    block: int
    rows: range
    label: str
    timestep: float | None


def as_indices(name: str, values, upper: int | None = None) -> list[int] | None:
    """None, or ``values`` (an int, a sequence, a tensor or array) as a list of ints in [0, upper)."""
    if values is None:
        return None
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    values = [values] if not isinstance(values, Iterable) else list(values)
    if not values:
        raise ValueError(f"{name} is empty: give at least one index, or None for all")
    out = []
    for v in values:
        if isinstance(v, bool) or isinstance(v, float):
            raise TypeError(f"{name} must be integers, got {v!r}")
        try:
            i = operator.index(v)
        except TypeError:
            raise TypeError(f"{name} must be integers, got {v!r}") from None
        if i < 0 or (upper is not None and i >= upper):
            raise IndexError(f"{name} index {i} out of range [0, {upper if upper is not None else 'inf'})")
        out.append(i)
    return out


def channel_table(channels, n_blocks: int, width: int) -> torch.Tensor:
    """(blocks, k) LongTensor from (k,) channels for every block or (blocks, k) ones; clear errors otherwise."""
    idx = torch.as_tensor(channels)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim not in (1, 2) or idx.numel() == 0:
        raise TypeError(f"channels must be integer indices of shape (k,) or (blocks={n_blocks}, k), got dtype "
                        f"{idx.dtype} shape {tuple(idx.shape)}")
    if idx.ndim == 2 and idx.shape[0] != n_blocks:
        raise ValueError(f"2-D channels need one row per block ({n_blocks}), got {idx.shape[0]} rows")
    if idx.min() < 0 or idx.max() >= width:
        raise IndexError(f"channel indices must be in [0, {width}), got range [{int(idx.min())}, {int(idx.max())}]")
    return (idx[None].expand(n_blocks, -1) if idx.ndim == 1 else idx).long().clone()


class _Scheduler:
    """Counts the denoising loop's iterations by wrapping the scheduler's ``step`` and ``set_timesteps`` (a new
    ``set_timesteps`` starts a new pipeline call)."""

    def __init__(self):
        self.scheduler, self.steps_done, self.calls = None, 0, 0

    def attach(self, scheduler) -> None:
        if scheduler is None or scheduler is self.scheduler:
            return
        self.detach()
        self.scheduler, self.steps_done, self._mine = scheduler, 0, {}
        for name in ("step", "set_timesteps"):
            original = getattr(scheduler, name)
            self._mine[name] = functools.wraps(original)(functools.partial(self._wrapped, name, original))
            setattr(scheduler, name, self._mine[name])

    def _wrapped(self, name, original, *args, **kwargs):
        if name == "set_timesteps":
            self.steps_done, self.calls = 0, self.calls + 1
        out = original(*args, **kwargs)
        if name == "step":
            self.steps_done += 1
        return out

    def detach(self) -> None:
        if self.scheduler is not None:
            for name, wrapper in self._mine.items():
                if self.scheduler.__dict__.get(name) is wrapper:
                    del self.scheduler.__dict__[name]
        self.scheduler = None


class _HookContext:
    """A step counter on the transformer and one forward hook per residual block, all removed on exit."""

    kind = "hook"

    def __init__(self, pipe):
        self.pipe = pipe
        self.transformer = transformer_of(pipe)
        self.blocks = residual_blocks(self.transformer)  # raises for unsupported classes
        self.width = hidden_width(self.transformer)
        self._generated = architecture(self.transformer).generated
        self._handles: list = []
        self._scheduler = _Scheduler()
        self._used = False
        self.step, self.row_offset, self.rows, self.n_text, self.n_image, self.timestep = -1, 0, 0, 0, 0, None
        self.calls: list[list[int]] = []  # per step, the rows of each transformer call
        self.timesteps: list[float | None] = []

    # --- the step counter -------------------------------------------------------------------------------------

    def _before_call(self, module, args, kwargs):
        self._scheduler.attach(getattr(self.pipe, "scheduler", None))
        if self._scheduler.calls > 1:
            self._second_call()
            self._scheduler.calls, self.step, self.calls, self.timesteps = 1, -1, [], []
        step = self._scheduler.steps_done if self._scheduler.scheduler is not None else len(self.calls)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        t = kwargs.get("timestep")
        self.timestep = float(t.flatten()[0]) if torch.is_tensor(t) else t
        if step != self.step:
            self.step, self.row_offset = step, 0
            while len(self.calls) <= step:
                self.calls.append([])
                self.timesteps.append(None)
            self.timesteps[step] = self.timestep
        else:
            self.row_offset += self.rows
        self.rows = hidden.shape[0]
        self.calls[step].append(self.rows)
        self.n_text = text.shape[1] if torch.is_tensor(text) else 0
        self.n_image = self._generated_tokens(hidden, kwargs)

    def _generated_tokens(self, hidden: torch.Tensor, kwargs: Mapping) -> int:
        """How many of the image tokens belong to the generated image (they come first)."""
        if self._generated == FIRST_ID_ZERO and torch.is_tensor(kwargs.get("img_ids")):
            ids = kwargs["img_ids"]
            return int((ids.reshape(-1, ids.shape[-1])[: hidden.shape[1], 0] == 0).sum())
        if self._generated == IMG_SHAPES and kwargs.get("img_shapes"):
            shape = kwargs["img_shapes"][0]
            shape = shape[0] if isinstance(shape, list) else shape
            return int(torch.tensor(shape).prod())
        return hidden.shape[1]

    def _second_call(self):
        raise RuntimeError(f"a second pipeline call inside one {self.kind}() context: use one context per call")

    # --- image tokens of a block's output ---------------------------------------------------------------------

    def _split(self, output, rule: str):
        """(image tokens of the generated image, a function putting new ones back into the output)."""
        if isinstance(output, tuple):  # SEPARATE (or a concatenating block that returns its parts)
            whole, at = output[1], 0
        elif rule == CONCATENATED:
            whole, at = output, self.n_text
        else:
            whole, at = output, 0
        if at == 0 and self.n_image == whole.shape[1]:
            return whole, (lambda new: (output[0], new, *output[2:]) if isinstance(output, tuple) else new)
        x = whole[:, at:at + self.n_image]

        def put(new):
            merged = torch.cat([whole[:, :at], new, whole[:, at + self.n_image:]], dim=1)
            return (output[0], merged, *output[2:]) if isinstance(output, tuple) else merged
        return x, put

    def _block_hook(self, index: int, rule: str) -> Callable | None:
        raise NotImplementedError

    # --- entering and leaving ---------------------------------------------------------------------------------

    def __enter__(self):
        if self._used:
            raise RuntimeError(f"this {self.kind}() context was already used; make a new one for each `with`")
        self._used = True
        try:
            self._scheduler.attach(getattr(self.pipe, "scheduler", None))
            self._handles.append(self.transformer.register_forward_pre_hook(self._before_call, with_kwargs=True))
            for i, block in enumerate(self.blocks):
                hook = self._block_hook(i, block.token_rule)
                if hook is not None:
                    self._handles.append(block.module.register_forward_hook(hook))
            self._handles.append(self.transformer.register_forward_hook(self._after_call))
        except BaseException:
            self._remove()
            raise
        return self

    def _after_call(self, module, args, output):
        return None

    def __exit__(self, exc_type, *exc):
        self._remove()
        if exc_type is None:
            self._check_ran()
        return False

    def _check_ran(self) -> None:
        pass

    def _missing(self, what: str, asked, ran) -> None:
        missing = sorted(set(asked or ()) - set(ran))
        if missing:
            raise ValueError(f"{self.kind}(): {what} {missing} were asked for but never ran; the pipeline ran "
                             f"{what} {_span(ran)}")

    def _remove(self):
        while self._handles:
            self._handles.pop().remove()
        self._scheduler.detach()

    @property
    def rows_per_step(self) -> list[int]:
        """Rows of each step (all its calls together)."""
        return [sum(c) for c in self.calls]


def _span(values) -> str:
    values = sorted(set(values))
    if not values:
        return "none"
    return f"{values[0]}-{values[-1]}" if values == list(range(values[0], values[-1] + 1)) else str(values)


STATISTICS = ("mean", "abs_mean", "abs_max")


def stats_nbytes(steps: int, blocks: int, rows: int, channels: int) -> int:
    """Bytes of a Recording's statistics: float32 x (steps, blocks, rows, 3 statistics, channels).
    FLUX.1, 28 steps, one image: stats_nbytes(28, 57, 1, 3072) = 58.8 MB."""
    return steps * blocks * rows * len(STATISTICS) * channels * 4


class Recording(_HookContext):
    """Streaming statistics of every residual block's image tokens, per (step, block, row, channel).

    ``mean``, ``abs_mean``, ``abs_max``: float32 (steps, blocks, rows, channels) on CPU, over image tokens.
    ``tokens``: {(step, block): (rows, image tokens, channels)} for the blocks and steps asked for.
    ``block_names`` ("transformer_blocks.0"), ``labels`` ("double 0"), ``timesteps``, ``rows_per_step``.
    """

    kind = "record"

    def __init__(self, pipe, keep_tokens: Mapping | None = None):
        super().__init__(pipe)
        self.block_names = [b.name for b in self.blocks]
        self.labels = [b.label for b in self.blocks]
        keep = dict(keep_tokens or {})
        unknown = set(keep) - {"blocks", "steps", "channels", "dtype"}
        if unknown:
            raise ValueError("keep_tokens takes the keys 'blocks', 'steps', 'channels' (None = all) and 'dtype', "
                             f"got {sorted(unknown)}")
        self._keep = keep_tokens is not None
        self._keep_blocks = as_indices("keep_tokens blocks", keep.get("blocks"), len(self.blocks))
        self._keep_steps = as_indices("keep_tokens steps", keep.get("steps"))
        self._keep_channels = (None if keep.get("channels") is None else
                               channel_table(keep["channels"], len(self.blocks), self.width))
        self._keep_dtype = keep.get("dtype")
        self._stats: list[list[torch.Tensor]] = []  # per step, per call: (blocks, rows, 3, channels)
        self._tokens: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
        self._buffer: list[torch.Tensor | None] = []
        self._cache: torch.Tensor | None = None

    def _block_hook(self, index: int, rule: str) -> Callable:
        def hook(module, args, output):
            x = self._split(output, rule)[0].detach()
            a = x.abs()
            self._buffer[index] = torch.stack((x.sum(1, dtype=torch.float32) / x.shape[1],
                                               a.sum(1, dtype=torch.float32) / x.shape[1], a.amax(1).float()), 1)
            if self._keep and (self._keep_blocks is None or index in self._keep_blocks) and (
                    self._keep_steps is None or self.step in self._keep_steps):
                kept = x if self._keep_channels is None else x[..., self._keep_channels[index].to(x.device)]
                self._tokens[self.step, index].append(kept.to("cpu", self._keep_dtype or kept.dtype, copy=True))
        return hook

    def _before_call(self, module, args, kwargs):
        super()._before_call(module, args, kwargs)
        self._buffer = [None] * len(self.blocks)

    def _after_call(self, module, args, output):
        filled = [b for b in self._buffer if b is not None]
        if filled:  # blocks a call skipped (SD3 skip-layer guidance) get NaN
            stats = torch.stack([b if b is not None else torch.full_like(filled[0], float("nan"))
                                 for b in self._buffer]).to("cpu")  # the one device-to-host copy per call
            while len(self._stats) <= self.step:
                self._stats.append([])
            self._stats[self.step].append(stats)
            self._cache = None

    def _check_ran(self) -> None:
        self._missing("keep_tokens steps", self._keep_steps, range(len(self._stats)))

    def _all(self) -> torch.Tensor:
        """(steps, blocks, rows, 3, channels); steps with fewer rows are padded with NaN."""
        if self._cache is None:
            if not self._stats:
                return torch.empty(0, len(self.blocks), 0, len(STATISTICS), self.width)
            steps = [torch.cat(calls, dim=1) for calls in self._stats]
            rows = max(s.shape[1] for s in steps)
            self._cache = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, 0, 0, rows - s.shape[1]),
                                                               value=float("nan")) for s in steps])
        return self._cache

    @property
    def mean(self) -> torch.Tensor:
        return self._all()[:, :, :, 0]

    @property
    def abs_mean(self) -> torch.Tensor:
        return self._all()[:, :, :, 1]

    @property
    def abs_max(self) -> torch.Tensor:
        return self._all()[:, :, :, 2]

    @property
    def tokens(self) -> dict[tuple[int, int], torch.Tensor]:
        return {key: torch.cat(parts) for key, parts in self._tokens.items()}

    def conditional_rows(self, n_images: int) -> list[int]:
        """The rows that belong to the images (with guidance, the conditional ones), from the first step's calls
        and the guidance layout of the pipeline's MODELS entry."""
        if not self.calls:
            raise ValueError("nothing was recorded: run the pipeline inside the record() context first")
        model = model_of(self.pipe)
        return conditional_rows(model.guidance if model else NONE, self.calls[0], n_images)

    def __repr__(self):
        return (f"Recording({len(self._stats)} steps x {len(self.blocks)} blocks x {self.width} channels, "
                f"rows per step {sorted(set(self.rows_per_step))}, tokens kept for {len(self._tokens)} "
                "(step, block) pairs)")


def record(pipe, keep_tokens: Mapping | None = None) -> Recording:
    """Context manager recording, per (step, block, row, channel), the signed mean, mean |x| and max |x| of the
    generated image's tokens during ``pipe(...)`` (memory: ``stats_nbytes``). ``keep_tokens={"blocks": [...],
    "steps": [...]}`` also keeps the image-token tensors of those blocks and steps (a missing key: all), on CPU;
    ``"channels"`` ((k,) or (blocks, k)) keeps only those channels and ``"dtype"`` stores them in that dtype."""
    return Recording(pipe, keep_tokens)


Edit = Callable[[torch.Tensor, Site], torch.Tensor]
MODES = ("zero", "scale", "replace")


class Intervention(_HookContext):
    """Change the generated image's tokens in chosen blocks and steps (see ``intervene``)."""

    kind = "intervene"

    def __init__(self, pipe, channels=None, mode: str | None = None, blocks=None, steps=None,
                 token_mask: torch.Tensor | None = None, rows=None, scale: float | None = None, values=None,
                 edit: Edit | None = None):
        super().__init__(pipe)
        n_blocks = len(self.blocks)
        if edit is not None and mode is not None:
            raise ValueError("give either edit= (a function) or mode= ('zero', 'scale', 'replace'), not both")
        mode = "zero" if edit is None and mode is None else mode
        if edit is None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if edit is not None and not callable(edit):
            raise TypeError(f"edit must be a function (image_tokens, site) -> new image_tokens, got {edit!r}")
        if mode == "scale" and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                or not torch.isfinite(torch.tensor(float(scale)))):
            raise ValueError(f"mode='scale' needs a finite number scale=..., got {scale!r}")
        if mode == "replace" and values is None:
            raise ValueError("mode='replace' needs values=: a dict {(step, block): tensor} such as "
                             "Recording.tokens, or use edit= for a function")
        if edit is None and channels is None:
            raise ValueError(f"mode={mode!r} needs channels=: (k,) indices for every block, or (blocks, k)")
        self.mode, self.scale, self.edit = mode, scale, edit
        self.block_set = set(as_indices("blocks", blocks, n_blocks) or range(n_blocks))
        self.steps = as_indices("steps", steps)
        self.row_set = as_indices("rows", rows)
        self.channels = None if channels is None else channel_table(channels, n_blocks, self.width)
        self.token_mask = _check_token_mask(token_mask)
        self.values = self._check_values(values) if mode == "replace" else None
        self._ran_steps: set[int] = set()
        self._max_rows = 0

    def _check_values(self, values) -> Mapping:
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a dict {{(step, block): tensor}}, got {type(values).__name__}; "
                            "for a function use edit=")
        for key, v in values.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise TypeError(f"values keys must be (step, block) pairs, got {key!r}")
            as_indices("values step", key[0]), as_indices("values block", key[1], len(self.blocks))
            if not torch.is_tensor(v) or v.ndim not in (1, 2, 3) or v.shape[-1] != self.width:
                raise ValueError(f"values[{key}] must be a tensor (rows, image_tokens, {self.width}) or "
                                 f"broadcastable to it, got {tuple(getattr(v, 'shape', ()))}")
            if not torch.isfinite(v).all():
                raise ValueError(f"values[{key}] holds NaN or infinite values")
        if self.steps is not None:
            missing = [(s, b) for s in self.steps for b in sorted(self.block_set) if (s, b) not in values]
            if missing:
                raise KeyError(f"values has no entry for (step, block) {missing[:5]}; give one for every "
                               "intervened step and block, or restrict steps= and blocks=")
        return values

    def _where(self, site: Site, x: torch.Tensor) -> torch.Tensor | None:
        """Bool mask broadcastable to x: the chosen channels, tokens and rows (None: everything)."""
        mask = None
        if self.channels is not None:
            mask = torch.zeros(self.width, dtype=torch.bool, device=x.device)
            mask[self.channels[site.block].to(x.device)] = True
            mask = mask[None, None]
        if self.token_mask is not None:
            t = self.token_mask.to(x.device)
            if t.shape[-1] != x.shape[1]:
                raise ValueError(f"token_mask covers {t.shape[-1]} tokens, but the generated image has "
                                 f"{x.shape[1]} image tokens")
            t = t[None] if t.ndim == 1 else _rows_of(t, site.rows, "token_mask")
            mask = t[..., None] if mask is None else mask & t[..., None]
        if self.row_set is not None:
            chosen = torch.tensor([r in self.row_set for r in site.rows], device=x.device)[:, None, None]
            mask = chosen if mask is None else mask & chosen
        return mask

    def _new_values(self, x: torch.Tensor, site: Site) -> torch.Tensor:
        if self.edit is not None:
            new = self.edit(x, site)
            _check_edit(new, x, site)
            return new
        if self.mode == "zero":
            return torch.zeros_like(x)
        if self.mode == "scale":
            return x * self.scale
        if (site.step, site.block) not in self.values:
            raise KeyError(f"values has no entry for (step={site.step}, block={site.block}); give one for every "
                           "intervened step and block, or restrict steps= and blocks=")
        v = self.values[site.step, site.block].to(x.device, x.dtype)
        v = _rows_of(v, site.rows, f"values[{site.step}, {site.block}]") if v.ndim == 3 else v
        try:
            return torch.broadcast_to(v, x.shape)
        except RuntimeError:
            raise ValueError(f"values of shape {tuple(v.shape)} for (step={site.step}, block={site.block}) do not "
                             f"broadcast to the image tokens {tuple(x.shape)}") from None

    def _block_hook(self, index: int, rule: str) -> Callable | None:
        if index not in self.block_set:
            return None

        def hook(module, args, output):
            self._ran_steps.add(self.step)
            self._max_rows = max(self._max_rows, self.row_offset + self.rows)
            if self.steps is not None and self.step not in self.steps:
                return None
            x, put = self._split(output, rule)
            site = Site(self.step, index, range(self.row_offset, self.row_offset + x.shape[0]),
                        self.blocks[index].label, self.timestep)
            new, where = self._new_values(x, site), self._where(site, x)
            return put(new if where is None else torch.where(where, new, x))
        return hook

    def _check_ran(self) -> None:
        self._missing("steps", self.steps, self._ran_steps)
        self._missing("rows", self.row_set, range(self._max_rows))

    def _second_call(self):
        pass  # each pipeline call counts its steps from 0 again


def _rows_of(t: torch.Tensor, rows: range, what: str) -> torch.Tensor:
    """The rows of a per-step tensor that belong to this call; one row, or as many as the call, apply as they are."""
    if t.shape[0] == 1 or t.shape[0] == len(rows) and rows.start == 0:
        return t
    if t.shape[0] >= rows.stop:
        return t[rows.start:rows.stop]
    if t.shape[0] == len(rows):
        return t
    raise ValueError(f"{what} has {t.shape[0]} rows but this step has at least {rows.stop}")


def _check_token_mask(token_mask):
    if token_mask is None:
        return None
    if not torch.is_tensor(token_mask) or token_mask.dtype != torch.bool or token_mask.ndim not in (1, 2):
        got = f"{getattr(token_mask, 'dtype', type(token_mask).__name__)} {tuple(getattr(token_mask, 'shape', ()))}"
        raise TypeError(f"token_mask must be a bool tensor (image_tokens,) or (rows, image_tokens), got {got}")
    return token_mask


def _check_edit(new, x: torch.Tensor, site: Site) -> None:
    """An edit must return finite image tokens of the same shape and dtype; the error names block and step."""
    where = f"the edit at {site.label}, step {site.step}"
    if not torch.is_tensor(new):
        raise TypeError(f"{where} returned {type(new).__name__}, not a tensor")
    if new.shape != x.shape or new.dtype != x.dtype:
        raise ValueError(f"{where} returned {new.dtype} {tuple(new.shape)}; expected {x.dtype} {tuple(x.shape)} "
                         "(the image tokens it was given)")
    if not torch.isfinite(new).all():
        raise ValueError(f"{where} returned NaN or infinite values")


def intervene(pipe, channels=None, mode: str | None = None, blocks=None, steps=None, token_mask=None, rows=None,
              scale: float | None = None, values=None, edit: Edit | None = None) -> Intervention:
    """Context manager that changes the generated image's tokens in the residual stream during ``pipe(...)``; the
    changed block output is what the rest of the network sees.

    ``edit(x, site) -> new x``: any function of one block's image tokens x (rows, tokens, channels) in one call,
    told where it runs (``Site``: step, block, rows, label, timestep). Or a ``mode`` with ``channels`` ((k,) for
    every block or (blocks, k)): "zero", "scale" by ``scale``, "replace" by ``values`` ({(step, block): tensor}
    broadcastable to the tokens, e.g. ``Recording.tokens``). ``channels``, ``token_mask`` (bool (tokens,) or
    (rows, tokens)) and ``rows`` restrict where the new values are written (exactly, with ``torch.where``);
    ``blocks`` and ``steps`` where the edit runs at all (None: everywhere).
    """
    return Intervention(pipe, channels, mode, blocks, steps, token_mask, rows, scale, values, edit)

