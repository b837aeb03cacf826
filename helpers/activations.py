"""Record and intervene on the residual stream of a DiT during a normal pipeline call.

Usage::

    with helpers.record(pipe, keep_tokens={"blocks": [2], "steps": [10]}) as rec:
        pipe(prompt=prompts, num_inference_steps=20)
    rec.mean.shape                      # (steps, blocks, rows, channels): signed mean over image tokens
    rec.tokens[10, 2]                   # (rows, image_tokens, channels), kept for the chosen blocks and steps only
    stat = helpers.channel_statistic(rec)   # (blocks, channels): |mean over image tokens|
    idx = helpers.top_k(stat, 4)            # (blocks, k)

    with helpers.intervene(pipe, channels=idx, mode="zero"):               # every block and step
        broken = pipe(prompt=prompts, num_inference_steps=20)
    with helpers.intervene(pipe, channels=idx, mode="replace", values=rec.tokens, blocks=[2], steps=[10],
                           token_mask=mask):                               # transport
        moved = pipe(prompt=prompts, num_inference_steps=20)

Steps are counted from the transformer's calls: a call with the same timestep as the previous call belongs to the
same denoising step (e.g. Qwen-Image's true CFG calls the transformer for cond and then uncond rows). The *rows* of a
step are the batch rows of its calls, concatenated in call order; with classifier-free guidance they are
``[uncond, cond]`` for pipelines that batch it (SD3, SANA, PixArt, the shapes model) and ``[cond, uncond]`` for
pipelines that make two calls (Qwen-Image, FLUX with true CFG): see ``helpers.models.MODELS[name].guidance``.
Select rows with ``rows=`` (intervene) or ``prompts=`` (channel_statistic). Use one context per pipeline call: a
second call inside the same context continues the step count.

Both context managers validate all their arguments before registering any hook, and remove their hooks when the
context ends, also on an exception or KeyboardInterrupt.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import torch

from .models import CONCATENATED, hidden_width, residual_blocks, transformer_of

STATISTICS = ("mean", "abs_mean", "abs_max")


def stats_nbytes(steps: int, blocks: int, rows: int, channels: int) -> int:
    """Bytes a Recording's statistics take: float32 x (steps, blocks, rows, 3 statistics, channels).
    FLUX.1 at any resolution, 28 steps, one image: stats_nbytes(28, 57, 1, 3072) = 58.8 MB."""
    return steps * blocks * rows * len(STATISTICS) * channels * 4


def image_tokens(output, rule: str, n_text: int) -> torch.Tensor:
    """The (batch, image_tokens, channels) part of a block's output."""
    if isinstance(output, tuple):  # SEPARATE, or a concatenating block asked to split its output
        return output[1]
    return output[:, n_text:] if rule == CONCATENATED else output


def with_image_tokens(output, rule: str, n_text: int, new: torch.Tensor):
    """The block's output with its image tokens replaced by ``new``."""
    if isinstance(output, tuple):
        return (output[0], new, *output[2:])
    return torch.cat([output[:, :n_text], new], dim=1) if rule == CONCATENATED else new


class _StepCounter:
    """Turns transformer calls into (step, row offset): a call with the previous call's timestep continues the step."""

    def __init__(self):
        self.step, self.row_offset, self.rows, self.n_text = -1, 0, 0, 0
        self.timesteps: list[float | None] = []

    def __call__(self, module, args, kwargs):
        t = kwargs.get("timestep")
        t = float(t.flatten()[0]) if torch.is_tensor(t) else t
        if t is None or not self.timesteps or t != self.timesteps[-1]:
            self.step, self.row_offset = self.step + 1, 0
            self.timesteps.append(t)
        else:
            self.row_offset += self.rows
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        self.rows = hidden.shape[0]
        self.n_text = text.shape[1] if torch.is_tensor(text) else 0


class _HookContext:
    """Registers a step counter on the transformer and one forward hook per residual block; removes them all on exit."""

    def __init__(self, pipe):
        self.transformer = transformer_of(pipe)
        self.blocks = residual_blocks(self.transformer)  # raises for unsupported classes
        self.width = hidden_width(self.transformer)
        self.counter = _StepCounter()
        self._handles: list = []

    def _before_call(self, module, args, kwargs):
        self.counter(module, args, kwargs)

    def _block_hook(self, index: int, rule: str) -> Callable | None:
        """The forward hook for block ``index`` (None: leave the block alone)."""
        raise NotImplementedError

    def _after_call(self, module, args, output):
        return None

    def __enter__(self):
        try:
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

    def __exit__(self, *exc):
        self._remove()
        return False

    def _remove(self):
        while self._handles:
            self._handles.pop().remove()


def _check_indices(name: str, values, upper: int | None) -> list[int] | None:
    """None, or the integers in ``values`` after checking they lie in [0, upper) (upper None: no upper bound)."""
    if values is None:
        return None
    if torch.is_tensor(values):
        values = values.reshape(-1).tolist()
    elif not isinstance(values, Iterable):
        values = [values]
    indices = []
    for v in values:
        try:
            i = operator.index(v)  # int, numpy integer, ... but not float or bool
        except TypeError:
            i = None
        if i is None or isinstance(v, bool):
            raise TypeError(f"{name} must be integers, got {v!r}")
        if i < 0 or (upper is not None and i >= upper):
            raise IndexError(f"{name} index {i} out of range [0, {upper if upper is not None else 'inf'})")
        indices.append(i)
    return indices


def _check_nonempty(name: str, indices: list[int] | None) -> list[int] | None:
    if indices is not None and not indices:
        raise ValueError(f"{name} is empty: give at least one index, or None for all")
    return indices


class Recording(_HookContext):
    """Streaming statistics of every residual block's image tokens, per (step, block, row, channel).

    ``mean``, ``abs_mean``, ``abs_max``: float32 (steps, blocks, rows, channels) on CPU, over image tokens.
    ``tokens``: {(step, block): (rows, image_tokens, channels)} for the blocks and steps asked for.
    ``block_names``: e.g. "transformer_blocks.0"; ``timesteps``: the transformer's timestep at each step.
    """

    def __init__(self, pipe, keep_tokens: Mapping | None = None):
        super().__init__(pipe)
        self.block_names = [b.name for b in self.blocks]
        keep = dict(keep_tokens or {})
        unknown = set(keep) - {"blocks", "steps"}
        if unknown:
            raise ValueError(f"keep_tokens takes the keys 'blocks' and 'steps' (None = all), got {sorted(unknown)}")
        self._keep = keep_tokens is not None
        self._keep_blocks = _check_indices("keep_tokens blocks", keep.get("blocks"), len(self.blocks))
        self._keep_steps = _check_indices("keep_tokens steps", keep.get("steps"), None)
        self._calls: list[list[torch.Tensor]] = []  # per step, per call: (blocks, rows, 3, channels) on CPU
        self._tokens: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
        self._buffer: list[torch.Tensor | None] = []
        self._n_tokens = 0
        self._cache: torch.Tensor | None = None

    @property
    def timesteps(self) -> list[float | None]:
        return self.counter.timesteps

    @property
    def calls_per_step(self) -> list[int]:
        """Transformer calls in each step: 1, or 2 where guidance makes a cond call and then an uncond call."""
        return [len(calls) for calls in self._calls]

    def _block_hook(self, index: int, rule: str) -> Callable:
        def hook(module, args, output):
            x = image_tokens(output, rule, self.counter.n_text).detach()
            # Float32 sums and max over tokens (sums become means once per call, in _after_call).
            a = x.abs()
            self._buffer[index] = torch.stack((x.sum(dim=1, dtype=torch.float32), a.sum(dim=1, dtype=torch.float32),
                                               a.amax(dim=1).float()), dim=1)
            self._n_tokens = x.shape[1]
            step = self.counter.step
            if self._keep and (self._keep_blocks is None or index in self._keep_blocks) and (
                    self._keep_steps is None or step in self._keep_steps):
                self._tokens[step, index].append(x.to("cpu", copy=True))
        return hook

    def _before_call(self, module, args, kwargs):
        super()._before_call(module, args, kwargs)
        self._buffer = [None] * len(self.blocks)

    def _after_call(self, module, args, output):
        filled = [b for b in self._buffer if b is not None]
        if not filled:
            return None
        # Blocks the transformer skipped in this call (e.g. SD3 skip-layer guidance) get NaN.
        buffer = [b if b is not None else torch.full_like(filled[0], float("nan")) for b in self._buffer]
        stats = torch.stack(buffer).to("cpu")  # the one device-to-host copy per call
        stats[:, :, :2] /= self._n_tokens
        while len(self._calls) <= self.counter.step:
            self._calls.append([])
        self._calls[self.counter.step].append(stats)
        self._cache = None
        return None

    def _stats(self) -> torch.Tensor:
        """(steps, blocks, rows, 3, channels), built from the per-call results on first use."""
        if self._cache is None:
            if not self._calls:
                return torch.empty(0, len(self.blocks), 0, len(STATISTICS), self.width)
            steps = [torch.cat(calls, dim=1) for calls in self._calls]
            rows = {s.shape[1] for s in steps}
            if len(rows) > 1:
                raise RuntimeError(f"steps have different numbers of rows {sorted(rows)}: was more than one pipeline "
                                   "call made inside one record() context? Use one context per call.")
            self._cache = torch.stack(steps)
        return self._cache

    @property
    def mean(self) -> torch.Tensor:
        return self._stats()[:, :, :, 0]

    @property
    def abs_mean(self) -> torch.Tensor:
        return self._stats()[:, :, :, 1]

    @property
    def abs_max(self) -> torch.Tensor:
        return self._stats()[:, :, :, 2]

    @property
    def tokens(self) -> dict[tuple[int, int], torch.Tensor]:
        return {key: torch.cat(parts) for key, parts in self._tokens.items()}

    def __repr__(self):
        return (f"Recording({len(self._calls)} steps x {len(self.blocks)} blocks x {self.width} channels, "
                f"tokens kept for {sorted(self._tokens)})")


def record(pipe, keep_tokens: Mapping | None = None) -> Recording:
    """Context manager recording per (step, block, row, channel) statistics of the image tokens during ``pipe(...)``.

    ``keep_tokens={"blocks": [...], "steps": [...]}`` also keeps the full image-token tensors of those blocks and
    steps (a missing key or None means all; ``{}`` keeps everything). Memory: ``stats_nbytes(steps, blocks, rows,
    channels)`` plus the kept tokens.
    """
    return Recording(pipe, keep_tokens)


Values = Callable[[int, int, torch.Tensor], torch.Tensor] | Mapping[tuple[int, int], torch.Tensor]
MODES = ("zero", "scale", "replace")


def _rows_of_call(t: torch.Tensor, offset: int, rows: int, what: str) -> torch.Tensor:
    """The rows of a per-step tensor (the rows of all the step's calls) that belong to the current call; a tensor
    with one row, or with as many rows as the call, applies as it is."""
    if t.ndim < 3 or t.shape[0] == 1:
        return t
    if t.shape[0] >= offset + rows:
        return t[offset:offset + rows]
    if t.shape[0] == rows:
        return t
    raise ValueError(f"{what} has {t.shape[0]} rows but this step has at least {offset + rows}")


class Intervention(_HookContext):
    """Zero, scale or replace chosen channels of chosen image tokens in chosen blocks and steps (see ``intervene``)."""

    def __init__(self, pipe, channels, mode: str = "zero", blocks: Iterable[int] | None = None,
                 steps: Iterable[int] | None = None, token_mask: torch.Tensor | None = None,
                 rows: Iterable[int] | None = None, scale: float | None = None, values: Values | None = None):
        super().__init__(pipe)
        n_blocks = len(self.blocks)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "scale" and not isinstance(scale, (int, float)):
            raise ValueError(f"mode='scale' needs a number scale=..., got {scale!r}")
        if mode == "replace" and values is None:
            raise ValueError("mode='replace' needs values=: a callable (step, block, image_tokens) -> tensor, "
                             "or a dict {(step, block): tensor}")
        self.mode, self.scale = mode, scale
        chosen_blocks = _check_nonempty("blocks", _check_indices("blocks", blocks, n_blocks))
        self.block_set = set(range(n_blocks) if chosen_blocks is None else chosen_blocks)
        self.steps = _check_nonempty("steps", _check_indices("steps", steps, None))
        self.rows = _check_nonempty("rows", _check_indices("rows", rows, None))
        self.channel_masks = self._channel_masks(channels, n_blocks)
        self.token_mask = self._check_token_mask(token_mask)
        self.values = self._check_values(values, n_blocks) if mode == "replace" else None
        self._device_masks: dict = {}

    def _channel_masks(self, channels, n_blocks: int) -> dict[int, torch.Tensor]:
        """{block: bool (channels,)}: 1-D channels apply to every chosen block, 2-D ones give one row per block."""
        idx = torch.as_tensor(channels)
        if idx.numel() == 0:
            raise ValueError("channels is empty: choose at least one channel")
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim not in (1, 2):
            raise TypeError(f"channels must be integer indices of shape (k,) or (blocks={n_blocks}, k), got "
                            f"dtype {idx.dtype} shape {tuple(idx.shape)}")
        if idx.ndim == 2 and idx.shape[0] != n_blocks:
            raise ValueError(f"2-D channels need one row per block ({n_blocks}), got {idx.shape[0]} rows")
        if idx.min() < 0 or idx.max() >= self.width:
            raise IndexError(f"channel indices must be in [0, {self.width}), got range [{int(idx.min())}, "
                             f"{int(idx.max())}]")
        masks = {}
        for b in self.block_set:
            mask = torch.zeros(self.width, dtype=torch.bool)
            mask[idx if idx.ndim == 1 else idx[b]] = True
            masks[b] = mask
        return masks

    @staticmethod
    def _check_token_mask(token_mask):
        if token_mask is None:
            return None
        if not torch.is_tensor(token_mask) or token_mask.dtype != torch.bool or token_mask.ndim not in (1, 2):
            got = f"{getattr(token_mask, 'dtype', type(token_mask))} {tuple(getattr(token_mask, 'shape', ()))}"
            raise TypeError(f"token_mask must be a bool tensor (image_tokens,) or (rows, image_tokens), got {got}")
        return token_mask

    def _check_values(self, values, n_blocks: int):
        if callable(values):
            return values
        if not isinstance(values, Mapping):
            raise TypeError("values must be a callable or a dict {(step, block): tensor}, got "
                            f"{type(values).__name__}")
        for key, v in values.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise TypeError(f"values keys must be (step, block) pairs, got {key!r}")
            _check_indices("values step", [key[0]], None)
            _check_indices("values block", [key[1]], n_blocks)
            if not torch.is_tensor(v) or v.ndim > 3 or v.ndim == 0 or v.shape[-1] != self.width:
                raise ValueError(f"values[{key}] must be a tensor (rows, image_tokens, {self.width}) or "
                                 f"broadcastable to it, got {tuple(getattr(v, 'shape', ()))}")
        if self.steps is not None:
            missing = [(s, b) for s in self.steps for b in sorted(self.block_set) if (s, b) not in values]
            if missing:
                raise KeyError(f"values has no entry for (step, block) {missing[:5]}{' ...' * (len(missing) > 5)}; "
                               "give one for every intervened step and block, or restrict steps= and blocks=")
        return values

    def _mask(self, index: int, x: torch.Tensor, offset: int) -> torch.Tensor:
        """Bool (rows or 1, tokens or 1, channels): which entries of this call's image tokens to change."""
        key = (index, x.device)
        if key not in self._device_masks:
            self._device_masks[key] = self.channel_masks[index].to(x.device)
        mask = self._device_masks[key][None, None, :]
        if self.token_mask is not None:
            tokens = self.token_mask
            if tokens.shape[-1] != x.shape[1]:
                raise ValueError(f"token_mask covers {tokens.shape[-1]} tokens, but the blocks have {x.shape[1]} "
                                 "image tokens")
            tokens = tokens[None] if tokens.ndim == 1 else _rows_of_call(tokens[..., None], offset, x.shape[0],
                                                                          "token_mask")[..., 0]
            mask = mask & tokens.to(x.device)[..., None]
        if self.rows is not None:
            chosen = torch.tensor([r in self.rows for r in range(offset, offset + x.shape[0])], device=x.device)
            mask = mask & chosen[:, None, None]
        return mask

    def _replacement(self, step: int, index: int, x: torch.Tensor, offset: int) -> torch.Tensor:
        if callable(self.values):
            v = self.values(step, index, x)
        elif (step, index) in self.values:
            v = _rows_of_call(self.values[step, index], offset, x.shape[0], f"values[{step}, {index}]")
        else:
            raise KeyError(f"values has no entry for (step={step}, block={index}); give one for every intervened "
                           "step and block, or restrict steps= and blocks=")
        v = torch.as_tensor(v).to(x.device, x.dtype)
        try:
            return torch.broadcast_to(v, x.shape)
        except RuntimeError:
            raise ValueError(f"replacement values of shape {tuple(v.shape)} for (step={step}, block={index}) do not "
                             f"broadcast to the image tokens {tuple(x.shape)}") from None

    def _block_hook(self, index: int, rule: str) -> Callable | None:
        if index not in self.block_set:
            return None

        def hook(module, args, output):
            step, offset = self.counter.step, self.counter.row_offset
            if self.steps is not None and step not in self.steps:
                return None
            x = image_tokens(output, rule, self.counter.n_text)
            mask = self._mask(index, x, offset)
            if self.mode == "zero":
                new = x.masked_fill(mask, 0)
            elif self.mode == "scale":
                new = torch.where(mask, x * self.scale, x)
            else:
                new = torch.where(mask, self._replacement(step, index, x, offset), x)
            return with_image_tokens(output, rule, self.counter.n_text, new)
        return hook


def intervene(pipe, channels, mode: str = "zero", blocks: Iterable[int] | None = None,
              steps: Iterable[int] | None = None, token_mask: torch.Tensor | None = None,
              rows: Iterable[int] | None = None, scale: float | None = None,
              values: Values | None = None) -> Intervention:
    """Context manager that changes chosen channels of the image tokens in the residual stream during ``pipe(...)``;
    the changed block output is what the rest of the network sees.

    ``channels``: (k,) for every chosen block, or (blocks, k) with one row per block (as ``top_k`` returns).
    ``mode``: "zero", "scale" (multiply by ``scale``) or "replace" with ``values``: a callable
    ``(step, block, image_tokens) -> tensor`` or a dict ``{(step, block): tensor}`` (e.g. ``Recording.tokens``),
    each broadcastable to the (rows, image_tokens, channels) image tokens; only the chosen entries are used.
    ``blocks``, ``steps``, ``rows``: indices to act on (None: all). ``token_mask``: bool (image_tokens,) or
    (rows, image_tokens), True where to act (None: every token).
    """
    return Intervention(pipe, channels, mode, blocks, steps, token_mask, rows, scale, values)
