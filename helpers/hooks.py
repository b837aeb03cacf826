"""Record and change the residual stream of a DiT while its own pipeline runs.

    with helpers.record(pipe, keep_tokens={"blocks": [2], "steps": [10]}) as rec:
        pipe(prompt=prompts)
    rec.mean                  # (steps, blocks, rows, channels): signed mean over the image tokens
    rec.tokens[10, 2]         # (rows, image tokens, channels), kept for the blocks and steps asked for

    def zero_top(x, site):    # an edit: the image tokens of one block in one call -> their new values
        return x.index_fill(-1, top[site.block], 0.0)
    with helpers.intervene(pipe, edit=zero_top):   # or: intervene(pipe, channels=top, mode="zero")
        pipe(prompt=prompts)

*Steps* are the denoising loop's iterations, read from the scheduler's step count (bfloat16 timesteps that collide and
extra guidance calls do not change it; a second-order scheduler counts each of its timesteps; a bare transformer each
call). A step's *rows* are its transformer calls' batch rows in call order (``helpers.models.conditional_rows``); when
steps differ in rows (SD3 skip-layer guidance) ``mean`` is NaN where a step or block lacks one. *Image tokens* are the
generated image's: reference-image tokens that edit pipelines append are neither recorded nor changed. Arguments are
checked before any hook is registered; hooks go when the ``with`` block ends, also on an error; steps, blocks or rows
asked for that never ran raise then. A context serves one ``with`` block.
"""
from __future__ import annotations

import functools
import math
import numbers
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import torch

from .models import (CONCATENATED, FIRST_ID_ZERO, IMG_SHAPES, architecture, conditional_rows, guidance_layout,
                     hidden_width, residual_blocks, transformer_of)


class Site(NamedTuple):
    """Where an edit runs: ``step``, ``block`` index, the step's ``rows`` this call holds, ``label``, ``timestep``."""
    step: int
    block: int
    rows: range
    label: str
    timestep: float | None


def as_indices(name: str, values, upper: int | None = None) -> list[int] | None:
    """None, or ``values`` (an int, a sequence, a tensor or an array of integers) as a list of ints in [0, upper)."""
    if values is None:
        return None
    values = values.tolist() if hasattr(values, "tolist") else values
    values = list(values) if isinstance(values, Iterable) and not isinstance(values, str) else [values]
    if not values:
        raise ValueError(f"{name} is empty: give at least one index, or None for all")
    if any(isinstance(v, bool) or not hasattr(type(v), "__index__") for v in values):
        raise TypeError(f"{name} must be integers, got {values!r}")
    for v in values:
        if operator.index(v) < 0 or (upper is not None and v >= upper):
            raise IndexError(f"{name} index {v} out of range [0, {upper if upper is not None else 'inf'})")
    return [operator.index(v) for v in values]


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


def _generated_tokens(rule: str, kwargs: Mapping, n_tokens: int) -> int | None:
    """How many of a call's image tokens are the generated image's (they come first, reference-image tokens after),
    from its position ids (first coordinate 0) or image shapes; None: all of them."""
    ids, shapes = kwargs.get("img_ids"), kwargs.get("img_shapes")
    if rule == FIRST_ID_ZERO and torch.is_tensor(ids):
        reference = (ids.reshape(-1, ids.shape[-1])[:n_tokens, 0] != 0).nonzero()
        return int(reference[0]) if len(reference) else None
    if rule == IMG_SHAPES and shapes:
        n = math.prod(shapes[0][0] if isinstance(shapes[0], list) else shapes[0])
        return n if n < n_tokens else None
    return None


class _Context:
    """Forward hooks on the transformer (which step and rows a call holds) and on its residual blocks, all removed on
    exit; subclasses say what a block hook does (``_on_block``) and what must have run (``_asked``)."""
    kind, calls_restart = "hook", False  # calls_restart: each pipeline call counts its steps from 0 (else refused)

    def __init__(self, pipe):
        self.pipe, self.transformer = pipe, transformer_of(pipe)
        self.blocks = residual_blocks(self.transformer)  # raises for unsupported classes
        self.width, self._rule = hidden_width(self.transformer), architecture(self.transformer).generated
        self._handles, self._entered, self._schedule, self.block_list = [], False, None, None
        self.step, self.offset, self.rows, self.n_text, self.n_image, self.timestep = -1, 0, 0, 0, None, None
        self.calls: list[list[int]] = []  # per step, the rows of each transformer call
        self.timesteps: list[float | None] = []
        self._ran: dict[str, set[int]] = {"steps": set(), "blocks": set(), "rows": set()}

    rows_per_step = property(lambda self: [sum(c) for c in self.calls], doc="Rows of each step, all calls together.")

    def __enter__(self):
        if self._entered:
            raise RuntimeError(f"this {self.kind}() context was already used; make a new one for each `with` block")
        self._entered = True
        try:
            self._handles.append(self.transformer.register_forward_pre_hook(self._before_call, with_kwargs=True))
            for i, block in enumerate(self.blocks):
                if self.block_list is None or i in self.block_list:
                    hook = functools.partial(self._block_hook, i, block.token_rule)
                    self._handles.append(block.module.register_forward_hook(hook))
            self._handles.append(self.transformer.register_forward_hook(self._after_call))
        except BaseException:
            self.__exit__(BaseException)
            raise
        return self

    def __exit__(self, exc_type, *exc):
        while self._handles:
            self._handles.pop().remove()
        for what, kind, asked in self._asked() if exc_type is None else ():
            missing, ran = sorted(set(asked or ()) - self._ran[kind]), sorted(self._ran[kind])
            if missing:
                span = f"{ran[0]}-{ran[-1]}" if ran and ran == list(range(ran[0], ran[-1] + 1)) else ran or "none"
                raise ValueError(f"{self.kind}(): {what} {missing} were asked for but never ran; the pipeline ran "
                                 f"{kind} {span}")
        return False

    def _before_call(self, module, args, kwargs):
        scheduler = getattr(self.pipe, "scheduler", None)
        if not hasattr(scheduler, "step_index"):  # a bare transformer (or a scheduler without a step count)
            step = len(self.calls)
        else:  # set_timesteps makes new timesteps and resets step_index (None until the first step of a call)
            if self._schedule is not None and scheduler.timesteps is not self._schedule:  # a second pipeline call
                if not self.calls_restart:
                    raise RuntimeError(f"a second pipeline call inside one {self.kind}() context: use one per call")
                self.step, self.calls, self.timesteps = -1, [], []
            self._schedule = scheduler.timesteps
            index, begin = scheduler.step_index, getattr(scheduler, "begin_index", None) or 0
            step = 0 if index is None else index - begin
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        t = kwargs.get("timestep")
        self.timestep = float(t.flatten()[0]) if torch.is_tensor(t) else t
        if step != self.step:
            self.calls += [[] for _ in range(step + 1 - len(self.calls))]
            self.timesteps += [None] * (step + 1 - len(self.timesteps))
            self.step, self.offset, self.timesteps[step] = step, 0, self.timestep
        else:
            self.offset += self.rows
        self.rows = hidden.shape[0]
        self.calls[step].append(self.rows)
        self.n_text = text.shape[1] if torch.is_tensor(text) else 0
        self.n_image = _generated_tokens(self._rule, kwargs, hidden.shape[1] if hidden.ndim == 3 else 0)

    def _after_call(self, module, args, output):
        return None

    def _block_hook(self, index: int, rule: str, module, args, output):
        self._ran["steps"].add(self.step)
        self._ran["blocks"].add(index)
        self._ran["rows"].update(range(self.offset + self.rows))
        parts = isinstance(output, tuple)  # (text, image) blocks, or a concatenating block returning its parts
        whole = output[1] if parts else output
        at = self.n_text if rule == CONCATENATED and not parts else 0
        n = whole.shape[1] - at if self.n_image is None else self.n_image

        def put(new: torch.Tensor):
            merged = new if n == whole.shape[1] else torch.cat([whole[:, :at], new, whole[:, at + n:]], dim=1)
            return (output[0], merged, *output[2:]) if parts else merged
        return self._on_block(index, whole[:, at:at + n], put)


def stats_nbytes(steps: int, blocks: int, rows: int, channels: int) -> int:
    """Bytes of a Recording's statistics: float32 x (steps, blocks, rows, 3 statistics, channels).
    FLUX.1, 28 steps, one image: stats_nbytes(28, 57, 1, 3072) = 58.8 MB."""
    return steps * blocks * rows * 3 * channels * 4


class Recording(_Context):
    """``record(pipe, keep_tokens=None)``: a context manager recording ``mean``, ``abs_mean`` and ``abs_max`` of the
    generated image's tokens, float32 (steps, blocks, rows, channels) on CPU (memory: ``stats_nbytes``).
    ``keep_tokens={"blocks": [...], "steps": [...]}`` also keeps ``tokens[step, block]`` (rows, image tokens,
    channels) on CPU (a missing key: all); ``"channels"`` ((k,) or (blocks, k)) keeps only those, in ``"dtype"``.
    Also ``block_names``, ``labels`` ("double 0"), ``timesteps``, ``rows_per_step``, ``calls`` (rows per call)."""
    kind = "record"

    def __init__(self, pipe, keep_tokens: Mapping | None = None):
        super().__init__(pipe)
        self.block_names, self.labels = [b.name for b in self.blocks], [b.label for b in self.blocks]
        keep = dict(keep_tokens or {}) if isinstance(keep_tokens, (Mapping, type(None))) else None
        if keep is None or set(keep) - {"blocks", "steps", "channels", "dtype"} or not isinstance(
                keep.get("dtype", torch.float32), (torch.dtype, type(None))):
            raise TypeError("keep_tokens must be a dict with the keys 'blocks', 'steps', 'channels' (None = all) and "
                            f"'dtype' (a torch.dtype), got {keep_tokens!r}")
        self._keep, self._keep_dtype = keep_tokens is not None, keep.get("dtype")
        self._keep_blocks = as_indices("keep_tokens blocks", keep.get("blocks"), len(self.blocks))
        self._keep_steps = as_indices("keep_tokens steps", keep.get("steps"))
        self._keep_channels = (None if keep.get("channels") is None else
                               channel_table(keep["channels"], len(self.blocks), self.width))
        self._stats: list[list[torch.Tensor]] = []  # per step, per call: (blocks, rows, 3, channels)
        self._tokens: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
        self._joined = None
        self._buffer, self._cache = [None] * len(self.blocks), None

    def _asked(self):
        return [("keep_tokens steps", "steps", self._keep_steps), ("keep_tokens blocks", "blocks", self._keep_blocks)]

    def _on_block(self, index: int, x: torch.Tensor, put: Callable):
        x = x.detach()
        a = x.abs()
        self._buffer[index] = torch.stack((x.sum(1, dtype=torch.float32) / x.shape[1],
                                           a.sum(1, dtype=torch.float32) / x.shape[1], a.amax(1).float()), 1)
        if self._keep and (self._keep_blocks is None or index in self._keep_blocks) and (
                self._keep_steps is None or self.step in self._keep_steps):
            kept = x if self._keep_channels is None else x[..., self._keep_channels[index].to(x.device)]
            self._tokens[self.step, index].append(kept.to("cpu", self._keep_dtype or kept.dtype, copy=True))

    def _after_call(self, module, args, output):
        filled = [b for b in self._buffer if b is not None]
        if filled:  # blocks a call skipped (SD3 skip-layer guidance) get NaN
            self._stats += [[] for _ in range(self.step + 1 - len(self._stats))]
            self._stats[self.step].append(torch.stack([torch.full_like(filled[0], math.nan) if b is None else b
                                                       for b in self._buffer]).cpu())
            self._buffer, self._cache = [None] * len(self.blocks), None

    def _all(self) -> torch.Tensor:
        """(steps, blocks, rows, 3, channels); NaN where a step has fewer rows than the largest."""
        if self._cache is None:
            steps = [torch.cat(calls, dim=1) for calls in self._stats]
            rows = max((s.shape[1] for s in steps), default=0)
            self._cache = torch.stack([torch.nn.functional.pad(s, (0, 0, 0, 0, 0, rows - s.shape[1]), value=math.nan)
                                       for s in steps]) if steps else torch.empty(0, len(self.blocks), 0, 3, self.width)
        return self._cache

    mean = property(lambda self: self._all()[:, :, :, 0], doc="Signed mean over the image tokens.")
    abs_mean = property(lambda self: self._all()[:, :, :, 1], doc="Mean |x| over the image tokens.")
    abs_max = property(lambda self: self._all()[:, :, :, 2], doc="Max |x| over the image tokens.")

    @property
    def tokens(self) -> dict[tuple[int, int], torch.Tensor]:
        """{(step, block): (rows, image tokens, channels)} for the steps and blocks kept (joined once)."""
        if self._joined is None or len(self._joined[0]) != sum(map(len, self._tokens.values())):
            self._joined = (range(sum(map(len, self._tokens.values()))),
                            {key: torch.cat(parts) for key, parts in self._tokens.items()})
        return self._joined[1]

    def conditional_rows(self, n_images: int) -> list[int]:
        """The rows of the n images' conditional samples (all rows without guidance): ``models.conditional_rows``."""
        if not self.calls:
            raise ValueError("nothing was recorded: run the pipeline inside the record() context first")
        return conditional_rows(guidance_layout(self.pipe), self.calls[0], n_images)

    def __repr__(self):
        return (f"Recording({len(self._stats)} steps x {len(self.blocks)} blocks x {self.width} channels, rows per "
                f"step {sorted(set(self.rows_per_step))}, tokens kept for {len(self._tokens)} (step, block) pairs)")


class Intervention(_Context):
    """``intervene(pipe, channels=None, mode=None, blocks=None, steps=None, token_mask=None, rows=None, scale=None,
    values=None, edit=None)``: a context manager that changes the generated image's tokens during ``pipe(...)``.

    ``edit(x, site) -> new x``: a function of one block's image tokens (rows, tokens, channels) in one call, told where
    it runs (``Site``), returning finite tokens of x's shape and dtype. Or a ``mode`` on ``channels`` ((k,) or (blocks,
    k)): "zero", "scale" by ``scale``, "replace" by ``values`` ({(step, block): tensor} broadcastable to the tokens,
    e.g. ``Recording.tokens``). ``channels``, ``token_mask`` (bool (tokens,) or (rows, tokens)) and ``rows`` restrict
    where new values are written (exactly, ``torch.where``); ``blocks`` and ``steps`` where it runs (None: all). Each
    pipeline call counts its steps from 0."""
    kind, calls_restart = "intervene", True

    def __init__(self, pipe, channels=None, mode: str | None = None, blocks=None, steps=None,
                 token_mask: torch.Tensor | None = None, rows=None, scale: float | None = None, values=None,
                 edit: Callable[[torch.Tensor, Site], torch.Tensor] | None = None):
        super().__init__(pipe)
        if edit is not None and (mode is not None or not callable(edit)):
            raise TypeError(f"edit must be a function (image_tokens, site) -> new image_tokens, given without mode=; "
                            f"got edit={edit!r}, mode={mode!r}")
        self.mode, self.edit = ("zero" if mode is None else mode) if edit is None else None, edit
        if edit is None and self.mode not in ("zero", "scale", "replace"):
            raise ValueError(f"mode must be one of ('zero', 'scale', 'replace'), got {mode!r}")
        if edit is None and channels is None:
            raise ValueError(f"mode={self.mode!r} needs channels=: (k,) indices for every block, or (blocks, k)")
        scale = scale.item() if torch.is_tensor(scale) and scale.numel() == 1 else scale
        if self.mode == "scale" and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                                     or not math.isfinite(scale)):
            raise ValueError(f"mode='scale' needs scale=, a finite number, got {scale!r}")
        self.scale = scale
        self.block_list = as_indices("blocks", blocks, len(self.blocks))
        self.steps, self.row_list = as_indices("steps", steps), as_indices("rows", rows)
        self.channels = None if channels is None else channel_table(channels, len(self.blocks), self.width)
        if token_mask is not None and (not torch.is_tensor(token_mask) or token_mask.dtype != torch.bool
                                       or token_mask.ndim not in (1, 2)):
            raise TypeError("token_mask must be a bool tensor (image_tokens,) or (rows, image_tokens), got "
                            f"{getattr(token_mask, 'dtype', type(token_mask).__name__)}")
        self.token_mask = token_mask
        self.values = self._check_values(values) if self.mode == "replace" else None

    def _asked(self):
        return [("steps", "steps", self.steps), ("blocks", "blocks", self.block_list), ("rows", "rows", self.row_list)]

    def _check_values(self, values) -> dict:
        if not isinstance(values, Mapping) or not all(isinstance(k, tuple) and len(k) == 2 for k in values):
            raise TypeError(f"mode='replace' needs values=, a dict {{(step, block): tensor}} such as Recording.tokens, "
                            f"got {type(values).__name__}; for a function use edit=")
        out = {}
        for key, v in values.items():
            key = (as_indices("values step", key[0])[0], as_indices("values block", key[1], len(self.blocks))[0])
            if not torch.is_tensor(v) or v.ndim not in (1, 2, 3) or v.shape[-1] != self.width or not v.isfinite().all():
                raise ValueError(f"values[{key}] must be a finite tensor (rows, image_tokens, {self.width}) or "
                                 f"broadcastable to it, got {getattr(v, 'shape', type(v).__name__)}")
            out[key] = v
        missing = [(s, b) for s in self.steps or () for b in self.block_list or range(len(self.blocks))
                   if (s, b) not in out]
        if missing:
            raise KeyError(f"values has no entry for (step, block) {missing[:5]}; give one for every intervened "
                           "step and block, or restrict steps= and blocks=")
        return out

    def _where(self, site: Site, x: torch.Tensor) -> torch.Tensor:
        """Bool mask broadcastable to x: the chosen channels, tokens and rows."""
        mask = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
        if self.channels is not None:
            mask = torch.zeros_like(mask).index_fill(0, self.channels[site.block].to(x.device), True)
        if self.token_mask is not None:
            if self.token_mask.shape[-1] != x.shape[1]:
                raise ValueError(f"token_mask covers {self.token_mask.shape[-1]} tokens, but the generated image has "
                                 f"{x.shape[1]} image tokens")
            mask = mask & _rows_of(self.token_mask.to(x.device), site.rows, "token_mask")[..., None]
        if self.row_list is not None:
            mask = mask & torch.tensor([r in self.row_list for r in site.rows], device=x.device)[:, None, None]
        return mask

    def _new_values(self, x: torch.Tensor, site: Site) -> torch.Tensor:
        if self.edit is not None:
            new, where = self.edit(x, site), f"the edit at {site.label}, step {site.step}"
            if not torch.is_tensor(new) or new.shape != x.shape or new.dtype != x.dtype:
                got = f"{new.dtype} {tuple(new.shape)}" if torch.is_tensor(new) else type(new).__name__
                raise ValueError(f"{where} returned {got}; expected a tensor {x.dtype} {tuple(x.shape)} (the image "
                                 "tokens it was given)")
            if not torch.isfinite(new).all():
                raise ValueError(f"{where} returned NaN or infinite values")
            return new
        if self.mode != "replace":
            return torch.zeros_like(x) if self.mode == "zero" else x * self.scale
        if (site.step, site.block) not in self.values:
            raise KeyError(f"values has no entry for (step, block) {(site.step, site.block)}; give one for every "
                           "intervened step and block, or restrict steps= and blocks=")
        v = self.values[site.step, site.block].to(x.device, x.dtype)
        v = _rows_of(v, site.rows, f"values[{site.step}, {site.block}]") if v.ndim == 3 else v
        try:
            return torch.broadcast_to(v, x.shape)
        except RuntimeError:
            raise ValueError(f"values of shape {tuple(v.shape)} for (step={site.step}, block={site.block}) do not "
                             f"broadcast to the image tokens {tuple(x.shape)}") from None

    def _on_block(self, index: int, x: torch.Tensor, put: Callable):
        if self.steps is None or self.step in self.steps:
            site = Site(self.step, index, range(self.offset, self.offset + x.shape[0]), self.blocks[index].label,
                        self.timestep)
            return put(torch.where(self._where(site, x), self._new_values(x, site), x))


def _rows_of(t: torch.Tensor, rows: range, what: str) -> torch.Tensor:
    """The rows of a per-step tensor (rows, ...) that this call holds; a tensor of one row applies to every row."""
    if t.ndim >= 2 and 1 < t.shape[0] < rows.stop:
        raise ValueError(f"{what} has {t.shape[0]} rows but this step has at least {rows.stop}")
    return t if t.ndim < 2 or t.shape[0] == 1 else t[rows.start:rows.stop]


record, intervene = Recording, Intervention
