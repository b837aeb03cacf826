"""Every architecture in helpers.ARCHITECTURES, through its real diffusers pipeline's own ``__call__`` (tiny random
components built from config, no download), in float32 and bfloat16, against an independent capture of every block
output registered by the test itself:

- ``record`` gives exactly the statistics and tokens computed by hand from the captured outputs, one step per
  scheduler step, and changes nothing;
- ``intervene(edit=...)`` changes exactly the image tokens it is asked to (a capture before its hook and one after
  it see the edit's result and nothing else changed, in every call and block), and the change propagates;
- afterwards no hook and no scheduler wrapper is left.

In bfloat16, FLUX.1, FLUX.2 and Qwen-Image cast the timestep to the latents' dtype, so the bfloat16 runs use sigmas
(1.0, 0.999, 0.5) whose first two timesteps collide: the steps must still be counted right (issue 14, point 2).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import tiny_pipelines as tp
import torch

import helpers

CASTS_TIMESTEP = {"FluxTransformer2DModel", "Flux2Transformer2DModel", "QwenImageTransformer2DModel"}
CHANNEL, SCALED = 3, 5


def test_every_architecture_has_a_pipeline():
    assert set(tp.SIX) == set(helpers.ARCHITECTURES)


def call_kwargs(name: str, dtype: torch.dtype) -> dict:
    kw = dict(prompt=tp.PROMPTS, output_type="latent", **tp.SETTINGS[name][0])
    if dtype == torch.bfloat16 and name in CASTS_TIMESTEP:
        kw["sigmas"] = [1.0, 0.999, 0.5]  # 1000 and 999 are both 1000 in bfloat16
    else:
        kw["num_inference_steps"] = 2
    return kw


def run(pipe, kw):
    return pipe(**kw, generator=helpers.generators(len(tp.PROMPTS))).images


@pytest.fixture(scope="module", params=[(n, d) for n in tp.SIX for d in ("float32", "bfloat16")],
                ids=lambda p: f"{p[0].removesuffix('Transformer2DModel')}-{p[1]}")
def case(request):
    """Three runs of one tiny pipeline: plain, recorded and intervened, each with the independent capture."""
    name, dtype = request.param[0], getattr(torch, request.param[1])
    pipe = tp.build(name, dtype)
    kw, last = call_kwargs(name, dtype), len(tp.blocks_of(pipe.transformer)) - 1
    with tp.capture(pipe) as (plain_calls, plain_kwargs):
        plain = run(pipe, kw)
    with helpers.record(pipe, keep_tokens={"steps": [1], "blocks": [0, last]}) as rec:
        recorded = run(pipe, kw)

    def edit(x, site):  # zero one channel in block 0, double another in the last block at step 1
        if site.block == 0:
            return x.index_fill(-1, torch.tensor([CHANNEL]), 0.0)
        return x * torch.where(torch.arange(x.shape[-1]) == SCALED, 2.0, 1.0).to(x.dtype) if site.step == 1 else x
    with tp.capture(pipe) as (before, _), helpers.intervene(pipe, edit=edit, blocks=[0, last]):
        with tp.capture(pipe) as (after, _):
            edited = run(pipe, kw)
    yield SimpleNamespace(name=name, dtype=dtype, pipe=pipe, plain=plain, plain_calls=plain_calls,
                          kwargs=plain_kwargs, rec=rec, recorded=recorded, before=before, after=after,
                          edited=edited, last=last)


def steps_of(case) -> int:
    return len(case.pipe.scheduler.timesteps)


def test_recording_equals_the_hand_computed_statistics(case):
    steps, blocks = steps_of(case), len(case.plain_calls[0])
    assert len(case.plain_calls) == steps  # one transformer call per step in these settings
    images = [[tp.image_and_text(case.name, b, call[b], case.kwargs[i])[0].float() for b in range(blocks)]
              for i, call in enumerate(case.plain_calls)]
    rows, width = images[0][0].shape[0], helpers.hidden_width(case.pipe)
    assert rows == len(tp.PROMPTS) * tp.SETTINGS[case.name][2] and images[0][0].shape[1] == tp.SETTINGS[case.name][1]
    rec = case.rec
    assert rec.mean.shape == rec.abs_mean.shape == rec.abs_max.shape == (steps, blocks, rows, width)
    assert rec.rows_per_step == [rows] * steps and len(rec.timesteps) == steps
    for name, f in [("mean", lambda x: x.mean(1)), ("abs_mean", lambda x: x.abs().mean(1)),
                    ("abs_max", lambda x: x.abs().amax(1))]:
        expected = torch.stack([torch.stack([f(x) for x in step]) for step in images])
        torch.testing.assert_close(getattr(rec, name), expected, rtol=1e-5, atol=1e-5, msg=name)
    assert set(rec.tokens) == {(1, 0), (1, case.last)}
    for b in (0, case.last):
        assert rec.tokens[1, b].dtype == case.dtype
        assert torch.equal(rec.tokens[1, b].float(), images[1][b])
    assert rec.block_names == [b.name for b in helpers.residual_blocks(case.pipe)]
    assert torch.equal(case.recorded, case.plain)  # recording changes nothing


def test_intervening_changes_exactly_what_the_edit_says(case):
    assert len(case.before) == len(case.after) == steps_of(case)
    for step, (before, after) in enumerate(zip(case.before, case.after)):
        for b in before:
            x, tx = tp.image_and_text(case.name, b, before[b], case.kwargs[step])
            y, ty = tp.image_and_text(case.name, b, after[b], case.kwargs[step])
            expected = x
            if b == 0:
                expected = x.index_fill(-1, torch.tensor([CHANNEL]), 0.0)
            elif b == case.last and step == 1:
                expected = x.clone()
                expected[..., SCALED] *= 2
            assert torch.equal(y, expected), (step, b)
            assert (tx is None and ty is None) or torch.equal(tx, ty), f"text tokens changed at {step, b}"
    assert (case.before[0][0][1] if isinstance(case.before[0][0], tuple) else case.before[0][0]).abs().sum() > 0
    assert not torch.equal(case.edited, case.plain)  # the rest of the network saw the change


def test_nothing_is_left_behind(case):
    assert tp.hook_counts(case.pipe) == 0
    assert tp.scheduler_clean(case.pipe)
