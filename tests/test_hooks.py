"""record / intervene on the tiny book-model pipeline: what they record and change, the edit callback and its checks,
and misuse (issue 14, point 8): contexts used twice or nested, steps/rows/blocks that never run, bad arguments
refused before any hook is registered, numpy and tensor integers accepted alike, every hook removed on error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_pipelines import hook_counts

import helpers
from helpers.shapes import ShapesPipeline

PROMPTS = ["a big red circle on the left on a blue background", "a small green square"]
STEPS = 3


@pytest.fixture(scope="module")
def pipe(make_tiny_pipe) -> ShapesPipeline:
    return make_tiny_pipe(single=2, text_width=32, text_layers=1)


def generate(pipe, prompts=PROMPTS, **kwargs):
    return pipe(prompt=prompts, num_inference_steps=STEPS, generator=helpers.generators(len(prompts)),
                output_type="pt", **kwargs).images


def block_outputs(pipe, run) -> list[list[torch.Tensor]]:
    """Image tokens of every block, per transformer call, as the rest of the network sees them."""
    outputs: list[list] = []
    handles = [pipe.transformer.register_forward_pre_hook(lambda m, a: outputs.append([]))]
    for block in [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]:
        handles.append(block.register_forward_hook(lambda m, a, o: outputs[-1].append(o[1].clone())))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return outputs


# --- recording ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_recording_shapes_steps_rows_and_labels(pipe):
    with helpers.record(pipe, keep_tokens={"steps": [1]}) as rec:
        generate(pipe, guidance_scale=2.0)  # batched CFG: rows [uncond, uncond, cond, cond]
    assert rec.mean.shape == (STEPS, 3, 4, 32) and rec.rows_per_step == [4] * STEPS and rec.calls == [[4]] * STEPS
    assert rec.block_names == ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"]
    assert rec.labels == ["double 0", "single 0", "single 1"] == helpers.block_labels(pipe)
    assert sorted(rec.tokens) == [(1, 0), (1, 1), (1, 2)] and rec.tokens[1, 0].shape == (4, 64, 32)
    assert rec.timesteps == sorted(rec.timesteps, reverse=True) and len(set(rec.timesteps)) == STEPS
    assert (rec.abs_max >= rec.abs_mean).all() and (rec.abs_mean >= rec.mean.abs() - 1e-6).all()
    assert rec.conditional_rows(2) == [2, 3]
    assert "3 steps x 3 blocks x 32 channels" in repr(rec)


@torch.no_grad()
def test_kept_channels_and_dtype(pipe):
    channels = torch.tensor([[1, 2], [3, 4], [5, 6]])
    with helpers.record(pipe, keep_tokens={"blocks": [2], "steps": [0], "channels": channels,
                                           "dtype": torch.float16}) as rec:
        generate(pipe)
    with helpers.record(pipe, keep_tokens={"blocks": [2], "steps": [0]}) as full:
        generate(pipe)
    assert rec.tokens[0, 2].dtype == torch.float16
    assert torch.equal(rec.tokens[0, 2], full.tokens[0, 2][..., [5, 6]].half())


def test_stats_memory_for_flux_28_steps_is_under_100_mb():
    assert helpers.stats_nbytes(28, 57, 1, 3072) == 28 * 57 * 3 * 3072 * 4 < 100e6


def test_a_bare_transformer_counts_each_call_as_a_step(pipe):
    x = torch.randn(1, 64, 48)
    kwargs = dict(encoder_hidden_states=torch.randn(1, 4, 32), pooled_projections=torch.randn(1, 32),
                  img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(4, 3))
    with torch.no_grad(), helpers.record(pipe.transformer) as rec:
        for t in (1.0, 1.0):  # the same timestep twice: still two steps
            pipe.transformer(hidden_states=x, timestep=torch.tensor([t]), **kwargs)
    assert rec.mean.shape == (2, 3, 1, 32) and rec.timesteps == [1.0, 1.0]


# --- intervening -------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_token_mask_and_rows_limit_the_change(pipe):
    plain = block_outputs(pipe, lambda: generate(pipe, guidance_scale=2.0))
    tokens = torch.zeros(64, dtype=torch.bool)
    tokens[:10] = True
    with helpers.intervene(pipe, channels=np.array([1, 2]), blocks=[0], token_mask=tokens, rows=[2, 3]):
        changed = block_outputs(pipe, lambda: generate(pipe, guidance_scale=2.0))
    x, y = plain[0][0], changed[0][0]  # first call, block 0
    hit = torch.zeros_like(x, dtype=torch.bool)
    hit[2:, :10, 1:3] = True  # cond rows, first 10 tokens, channels 1 and 2
    assert (y[hit] == 0).all() and torch.equal(x[~hit], y[~hit])


@torch.no_grad()
def test_replace_with_recorded_tokens_of_the_same_run_changes_nothing(pipe):
    with helpers.record(pipe, keep_tokens={}) as rec:
        source = generate(pipe)
    with helpers.intervene(pipe, channels=torch.arange(32), mode="replace", values=rec.tokens):
        assert torch.equal(generate(pipe), source)


@torch.no_grad()
def test_an_edit_callback_sees_its_site_and_equals_the_mode(pipe):
    seen = []

    def zeros(x, site):
        seen.append((site.step, site.block, site.label, site.rows, tuple(x.shape)))
        return x.index_fill(-1, torch.tensor([4, 7]), 0.0)
    with helpers.intervene(pipe, edit=zeros, steps=[1], blocks=[2]):
        edited = generate(pipe)
    with helpers.intervene(pipe, channels=[4, 7], mode="zero", steps=[1], blocks=[2]):
        zeroed = generate(pipe)
    assert seen == [(1, 2, "single 1", range(0, 2), (2, 64, 32))] and torch.equal(edited, zeroed)
    assert not torch.equal(zeroed, generate(pipe))
    with helpers.intervene(pipe, channels=[4, 7], mode="scale", scale=np.float32(0.0), steps=[1], blocks=[2]):
        assert torch.equal(generate(pipe), zeroed)


@pytest.mark.parametrize("bad, match", [
    (lambda x, site: x[:1], r"returned torch.float32 \(1, 64, 32\); expected a tensor torch.float32 \(2, 64, 32\)"),
    (lambda x, site: x.double(), "returned torch.float64"),
    (lambda x, site: x * float("nan"), "returned NaN or infinite values"),
    (lambda x, site: x.tolist(), "returned list"),
])
@torch.no_grad()
def test_edit_results_are_checked_and_name_block_and_step(pipe, bad, match):
    with pytest.raises(ValueError, match=f"the edit at single 0, step 0 {match}"):
        with helpers.intervene(pipe, edit=bad, blocks=[1]):
            generate(pipe)
    assert hook_counts(pipe) == 0


# --- misuse: contexts ----------------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("make", [lambda p: helpers.record(p), lambda p: helpers.intervene(p, channels=[0], steps=[0])])
def test_a_context_used_twice_or_nested_is_refused(pipe, make):
    context = make(pipe)
    with context:
        generate(pipe)
    with pytest.raises(RuntimeError, match="already used"):
        with context:
            generate(pipe)
    assert hook_counts(pipe) == 0
    nested = make(pipe)
    with pytest.raises(RuntimeError, match="already used"):
        with nested, nested:
            generate(pipe)
    assert hook_counts(pipe) == 0


@torch.no_grad()
def test_a_second_pipeline_call_inside_one_record_is_refused(pipe):
    with pytest.raises(RuntimeError, match="second pipeline call"):
        with helpers.record(pipe):
            generate(pipe)
            generate(pipe)
    assert hook_counts(pipe) == 0
    with helpers.intervene(pipe, channels=[0], steps=[2]) as iv:  # intervene counts each call's steps from 0
        a, b = generate(pipe), generate(pipe)
    assert torch.equal(a, b) and iv.rows_per_step == [2] * STEPS


@torch.no_grad()
def test_different_contexts_nest(pipe):
    with helpers.intervene(pipe, channels=[3], mode="zero", blocks=[0]), helpers.record(pipe) as rec:
        generate(pipe)
    assert (rec.mean[:, 0, :, 3] == 0).all() and (rec.mean[:, 1, :, 3] != 0).all()
    assert hook_counts(pipe) == 0


@torch.no_grad()
@pytest.mark.parametrize("make, message", [
    (lambda p: helpers.intervene(p, channels=[0], steps=[1, 5]), r"intervene\(\): steps \[5\] .* ran steps 0-2"),
    (lambda p: helpers.intervene(p, channels=[0], rows=[9]), r"rows \[9\] .* ran rows 0-1"),
    (lambda p: helpers.record(p, keep_tokens={"steps": [7]}), r"record\(\): keep_tokens steps \[7\] .* steps 0-2"),
])
def test_steps_and_rows_that_never_run_raise_at_the_end(pipe, make, message):
    with pytest.raises(ValueError, match=message):
        with make(pipe):
            generate(pipe)
    assert hook_counts(pipe) == 0
    with pytest.raises(ValueError, match="never ran; the pipeline ran (steps|rows) none"):
        with make(pipe):
            pass  # nothing ran at all


@torch.no_grad()
def test_numpy_and_tensor_integers_are_accepted_alike(pipe):
    """Every index argument takes ints, lists, numpy arrays and scalars and tensors; scale takes numpy and tensor
    numbers: the same arguments in each form give the same images."""
    def run(convert, number):
        with helpers.intervene(pipe, channels=convert([1, 2]), blocks=convert([0]), steps=convert([1]),
                               rows=convert([0]), mode="scale", scale=number(2.0)):
            return generate(pipe, prompts=PROMPTS[:1] * 2)
    plain = run(list, float)
    for convert, number in [(np.array, np.float32), (torch.tensor, torch.tensor),
                            (lambda v: [np.int64(i) for i in v], np.float64)]:
        assert torch.equal(run(convert, number), plain)
    with helpers.record(pipe, keep_tokens={"blocks": np.int64(1), "steps": torch.tensor([2])}) as rec:
        generate(pipe)
    assert set(rec.tokens) == {(2, 1)}


# --- misuse: bad arguments, refused before any hook -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(channels=[32]), IndexError, r"\[0, 32\)"),
    (dict(channels=[-1]), IndexError, r"\[0, 32\)"),
    (dict(channels=[]), TypeError, "integer indices"),
    (dict(channels=[0.5]), TypeError, "integer"),
    (dict(channels=torch.zeros(2, 1, dtype=torch.long)), ValueError, "one row per block"),
    (dict(channels=[0], blocks=[3]), IndexError, "blocks index 3"),
    (dict(channels=[0], steps=[-1]), IndexError, "steps index -1"),
    (dict(channels=[0], steps=[True]), TypeError, "steps must be integers"),
    (dict(channels=[0], rows=[1.0]), TypeError, "rows must be integers"),
    (dict(channels=[0], blocks=[]), ValueError, "blocks is empty"),
    (dict(channels=[0], mode="replace", steps=[0, 1], values={(0, 0): torch.zeros(32), (0, 1): torch.zeros(32),
                                                              (0, 2): torch.zeros(32)}), KeyError, r"\(1, 0\)"),
    (dict(channels=[0], mode="erase"), ValueError, "mode must be one of"),
    (dict(mode="zero"), ValueError, "needs channels"),
    (dict(channels=[0], mode="scale"), ValueError, "needs scale=, a finite number, got None"),
    (dict(channels=[0], mode="scale", scale=float("nan")), ValueError, "finite number, got nan"),
    (dict(channels=[0], mode="scale", scale=np.inf), ValueError, "finite number"),
    (dict(channels=[0], mode="replace"), TypeError, "needs values="),
    (dict(channels=[0], mode="replace", values=lambda s, b, x: x), TypeError, "for a function use edit="),
    (dict(channels=[0], mode="replace", values={(0, 0): torch.zeros(64, 31)}), ValueError, r"values\[\(0, 0\)\]"),
    (dict(channels=[0], mode="replace", values={(0, 0): torch.full((64, 32), float("nan"))}), ValueError,
     "finite tensor"),
    (dict(channels=[0], mode="replace", values={(0, 9): torch.zeros(64, 32)}), IndexError, "values block"),
    (dict(channels=[0], token_mask=torch.ones(64)), TypeError, "token_mask must be a bool"),
    (dict(edit=lambda x, site: x, mode="zero"), TypeError, "without mode="),
    (dict(edit="zero"), TypeError, "edit must be a function"),
])
def test_bad_intervene_arguments(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        helpers.intervene(pipe, **kwargs)
    assert hook_counts(pipe) == 0


def test_bad_record_arguments(pipe):
    with pytest.raises(TypeError, match="keys 'blocks', 'steps'"):
        helpers.record(pipe, keep_tokens={"layers": [0]})
    with pytest.raises(IndexError, match="keep_tokens blocks index 7"):
        helpers.record(pipe, keep_tokens={"blocks": [7]})
    with pytest.raises(TypeError, match="keep_tokens must be a dict"):
        helpers.record(pipe, keep_tokens=[2])
    with pytest.raises(TypeError, match="torch.dtype"):
        helpers.record(pipe, keep_tokens={"dtype": "half"})
    with pytest.raises(ValueError, match="unsupported transformer class 'Linear'.*FluxTransformer2DModel"):
        helpers.record(torch.nn.Linear(2, 2))
    assert hook_counts(pipe) == 0


@torch.no_grad()
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("context", ["record", "intervene"])
def test_hooks_are_removed_on_errors(pipe, error, context):
    def make():
        return helpers.record(pipe) if context == "record" else helpers.intervene(pipe, channels=[0])
    with pytest.raises(error):
        with make():
            assert hook_counts(pipe) > 0
            raise error("stop")
    assert hook_counts(pipe) == 0
    with pytest.raises(ValueError, match="token_mask covers 5 tokens, but the generated image has 64"):
        with helpers.intervene(pipe, channels=[0], token_mask=torch.ones(5, dtype=torch.bool)):
            generate(pipe)  # an error raised inside a hook
    with pytest.raises(ValueError, match="do not broadcast"):
        with helpers.intervene(pipe, channels=[0], mode="replace", values={(0, 0): torch.zeros(7, 32)}, blocks=[0],
                               steps=[0]):
            generate(pipe)
    assert hook_counts(pipe) == 0
