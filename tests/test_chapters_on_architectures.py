"""Chapters 1-5 on every architecture: the one-line model switch (``MODEL = "sd3.5-medium"``, ...) must not fail for
a reason other than weights. On a tiny random real pipeline of each class a reader loads (tests/tiny_pipelines.py),
at the chapters' default guidance, the chapters' own functions run the way the chapters call them: the statistic,
top-k and the ratio to the median on a recording's conditional rows (chapter 1), the foreground mask on kept tokens
(chapter 3), cached transport equal to lockstep transport with the source rows untouched (chapter 4), and flow
inversion, or a named error where the pipeline is not a flow (chapter 5)."""
from __future__ import annotations

import numpy as np
import pytest
import tiny_pipelines as tp
import torch

import helpers
from helpers import transport
from helpers.chapters import channel_statistic, top_k, top_to_median
from helpers.inversion import invert
from helpers.masks import grid

SOURCES = ["a red car on a city street", "a white mug on a desk"]
TARGETS = ["a blue car on a city street", "a black mug on a desk"]
STEPS = 2
#: One row of the pipeline's ``latents=`` (None: not a flow-matching pipeline).
LATENTS = {"FluxTransformer2DModel": (64, 16), "Flux2Transformer2DModel": (16, 8, 8),
           "QwenImageTransformer2DModel": (64, 16), "SD3Transformer2DModel": (4, 16, 16),
           "SanaTransformer2DModel": (4, 16, 16), "PixArtTransformer2DModel": None}


@pytest.fixture(scope="module", params=tp.SIX, ids=lambda n: n.removesuffix("Transformer2DModel"))
def arch(request):
    name = request.param
    settings, tokens, guidance_rows = tp.SETTINGS[name]
    return name, tp.build(name), dict(settings, num_inference_steps=STEPS, output_type="latent"), tokens, guidance_rows


@torch.no_grad()
def test_chapters_1_to_4(arch):
    name, pipe, kw, tokens, guidance_rows = arch
    n, width, blocks = len(SOURCES), helpers.hidden_width(pipe), len(helpers.residual_blocks(pipe))
    with helpers.record(pipe, keep_tokens={"steps": [1]}) as rec:
        plain = helpers.generate(pipe, SOURCES, **kw)
    rows = rec.conditional_rows(n)
    assert rows == list(range((guidance_rows - 1) * n, guidance_rows * n))
    assert rec.mean.shape == (STEPS, blocks, guidance_rows * n, width) and torch.isfinite(rec.mean).all()
    stat = channel_statistic(rec.mean, rows=rows)
    top = top_k(stat, 4)
    assert top.shape == (blocks, 4) and torch.isfinite(top_to_median(stat)).all()
    kept = rec.tokens[1, blocks - 1][rows]
    assert kept.shape == (n, tokens, width) and grid(tokens)[0] ** 2 == tokens
    foreground_mask = getattr(helpers.chapters, "foreground_mask", None)
    if foreground_mask is not None:  # chapter 3's export
        assert foreground_mask(kept[0], top[blocks - 1]).shape == (tokens,)

    lock = transport.lockstep_transport(pipe, SOURCES, TARGETS, top, **kw)
    torch.testing.assert_close(lock.source, plain, rtol=1e-4, atol=1e-4)  # the source rows run untouched
    cache = transport.record_source(pipe, SOURCES, top, **kw)
    torch.testing.assert_close(cache.images, plain)
    assert cache.values[1, 0].shape == (guidance_rows * n, tokens, 4)
    cached = transport.cached_transport(pipe, cache, TARGETS, **kw)
    torch.testing.assert_close(cached, lock.target, rtol=1e-4, atol=1e-4)  # cached = lockstep
    assert (cached - helpers.generate(pipe, TARGETS, **kw)).abs().max() > 1e-5  # and it moves the targets
    assert tp.hook_counts(pipe) == 0


@torch.no_grad()
def test_chapter_5_inversion(arch):
    name, pipe, kw, tokens, guidance_rows = arch
    kw = {k: v for k, v in kw.items() if k not in ("output_type", "num_inference_steps")}
    scheduler = pipe.scheduler
    if LATENTS[name] is None:  # not a flow-matching pipeline: a clear error, before anything runs
        with pytest.raises(ValueError, match=f"{type(pipe).__name__}.*not a flow-matching scheduler"):
            invert(pipe, torch.randn(1, 4, 32, 32), STEPS, prompt=SOURCES[:1], **kw)
        assert pipe.scheduler is scheduler
        return
    latents = torch.randn(1, *LATENTS[name], generator=torch.Generator().manual_seed(5))
    with helpers.record(pipe) as rec:
        inversion = invert(pipe, latents, STEPS, prompt=SOURCES[:1], **kw)
    assert rec.mean.shape[0] == STEPS and tp.hook_counts(pipe) == 0  # recording counts the inversion's steps
    assert inversion.noise.shape == latents.shape and torch.isfinite(inversion.noise).all()
    redrawn = pipe(prompt=SOURCES[:1], latents=inversion.noise, num_inference_steps=STEPS, output_type="latent", **kw)
    assert torch.isfinite(redrawn.images).all()  # the inverted noise is a valid starting point
    assert inversion.trajectory.shape == (1, STEPS + 1, *LATENTS[name])
    torch.testing.assert_close(inversion.trajectory[:, 0], latents)   # starts at the image, in latents= format
    assert np.isclose(float(inversion.sigmas[0]), 0) and (inversion.sigmas.diff() > 0).all()
    assert pipe.scheduler is scheduler and tp.scheduler_clean(pipe) and tp.hook_counts(pipe) == 0
