"""record / intervene beyond the per-architecture checks: token masks, rows, replacement (transport), step counting,
hook cleanup on errors, and clear errors for bad input raised before any hook is registered."""
from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

import helpers
from helpers.activations import stats_nbytes
from helpers.shapes import ShapesPipeline

PROMPTS = ["a big red circle on the left on a blue background", "a small green square"]
STEPS = 3


@pytest.fixture(scope="module")
def pipe(make_tiny_pipe) -> ShapesPipeline:
    return make_tiny_pipe(single=2, text_width=32, text_layers=1)


def generate(pipe, prompts=PROMPTS, **kwargs):
    return pipe(prompt=prompts, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="pt", **kwargs).images


def hook_counts(pipe) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pipe.transformer.modules())


def block_outputs(pipe, run) -> list[list[torch.Tensor]]:
    """Image tokens of every block, per transformer call, as the rest of the network sees them."""
    outputs: list[list] = []
    handles = [pipe.transformer.register_forward_pre_hook(lambda m, a: outputs.append([]))]
    for block in helpers.residual_blocks(pipe):
        handles.append(block.module.register_forward_hook(lambda m, a, o: outputs[-1].append(o[1])))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return outputs


# --- recording ---------------------------------------------------------------------------------------------------

def test_recording_shapes_steps_and_rows(pipe):
    with helpers.record(pipe, keep_tokens={"steps": [1]}) as rec:
        generate(pipe, guidance_scale=2.0)  # batched CFG: rows [uncond, uncond, cond, cond]
    assert rec.mean.shape == (STEPS, 3, 4, 32)
    assert rec.block_names == ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"]
    assert sorted(rec.tokens) == [(1, 0), (1, 1), (1, 2)] and rec.tokens[1, 0].shape == (4, 64, 32)
    assert rec.timesteps == sorted(rec.timesteps, reverse=True) and len(set(rec.timesteps)) == STEPS
    assert (rec.abs_max >= rec.abs_mean).all() and (rec.abs_mean >= rec.mean.abs() - 1e-6).all()


@torch.no_grad()
def test_calls_with_the_same_timestep_form_one_step():
    """Qwen-Image-style true CFG: two transformer calls per step; their rows are concatenated in call order."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                         pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
    x, ids = torch.randn(2, 4, 8), torch.zeros(4, 3)
    text = [torch.randn(2, 3, 16), torch.randn(2, 3, 16)]

    def run():
        for t in (1.0, 0.5):
            for call in range(2):
                transformer(hidden_states=x, encoder_hidden_states=text[call], pooled_projections=torch.zeros(2, 16),
                            timestep=torch.full((2,), t), img_ids=ids, txt_ids=torch.zeros(3, 3))
    with helpers.record(transformer) as rec:
        run()
    assert rec.mean.shape == (2, 2, 4, 32) and rec.timesteps == [1.0, 0.5]
    # rows=[0, 1]: only the first call (cond) of each step is changed.
    outputs = []
    with helpers.intervene(transformer, channels=[5], rows=[0, 1], blocks=[1]):
        hook = transformer.single_transformer_blocks[0].register_forward_hook(lambda m, a, o: outputs.append(o[1]))
        run()
        hook.remove()
    assert (outputs[0][..., 5] == 0).all() and (outputs[1][..., 5] != 0).all()
    assert (outputs[2][..., 5] == 0).all() and (outputs[3][..., 5] != 0).all()


@torch.no_grad()
def test_blocks_skipped_in_a_call_get_nan():
    """SD3.5 skip-layer guidance runs the transformer without some blocks: their statistics are NaN for that call."""
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=4, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16,
                                        pooled_projection_dim=8, out_channels=4)
    kwargs = dict(hidden_states=torch.randn(1, 4, 4, 4), encoder_hidden_states=torch.randn(1, 3, 16),
                  pooled_projections=torch.randn(1, 8), timestep=torch.tensor([500.0]))
    with helpers.record(transformer) as rec:
        transformer(**kwargs)
        transformer(**kwargs, skip_layers=[0])  # same timestep: the second call of the step
    assert rec.mean.shape == (1, 2, 2, 16)
    assert rec.mean[0, 0, 1].isnan().all() and not rec.mean[0, 0, 0].isnan().any()
    assert not rec.mean[0, 1].isnan().any()


def test_stats_memory_for_flux_1024_28_steps_is_under_100_mb():
    assert stats_nbytes(28, 57, 1, 3072) == 28 * 57 * 3 * 3072 * 4 < 100e6


# --- intervening -------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_token_mask_and_rows_limit_the_change(pipe):
    plain = block_outputs(pipe, lambda: generate(pipe, guidance_scale=2.0))
    tokens = torch.zeros(64, dtype=torch.bool)
    tokens[:10] = True
    with helpers.intervene(pipe, channels=[1, 2], blocks=[0], token_mask=tokens, rows=[2, 3]):
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
def test_replace_with_a_callable_equals_zeroing(pipe):
    seen = []

    def zeros(step, block, x):
        seen.append((step, block, tuple(x.shape)))
        return torch.zeros(())
    with helpers.intervene(pipe, channels=[4, 7], mode="replace", values=zeros, steps=[1], blocks=[2]):
        replaced = generate(pipe)
    with helpers.intervene(pipe, channels=[4, 7], mode="zero", steps=[1], blocks=[2]):
        zeroed = generate(pipe)
    assert seen == [(1, 2, (2, 64, 32))] and torch.equal(replaced, zeroed)
    assert not torch.equal(zeroed, generate(pipe))


@torch.no_grad()
def test_transport_moves_the_target_toward_the_source(pipe):
    with helpers.record(pipe, keep_tokens={}) as rec:
        source = generate(pipe, prompts=PROMPTS[:1])
    target = generate(pipe, prompts=PROMPTS[1:])
    with helpers.intervene(pipe, channels=torch.arange(32), mode="replace", values=rec.tokens,
                           blocks=[2]):  # the last block, all channels, all tokens
        moved = generate(pipe, prompts=PROMPTS[1:])
    assert (moved - source).abs().mean() < (target - source).abs().mean()


# --- cleanup -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("context", ["record", "intervene"])
def test_hooks_are_removed_on_exceptions(pipe, error, context):
    def contexts():
        return helpers.record(pipe) if context == "record" else helpers.intervene(pipe, channels=[0])
    with pytest.raises(error):
        with contexts():
            assert hook_counts(pipe) > 0
            raise error("stop")
    assert hook_counts(pipe) == 0
    with pytest.raises(ValueError, match="token_mask covers 5 tokens"):  # an error raised inside a hook
        with helpers.intervene(pipe, channels=[0], token_mask=torch.ones(5, dtype=torch.bool)):
            generate(pipe)
    assert hook_counts(pipe) == 0


# --- bad input: a clear error before anything is changed ---------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(channels=[32]), IndexError, r"\[0, 32\)"),
    (dict(channels=[-1]), IndexError, r"\[0, 32\)"),
    (dict(channels=[]), ValueError, "empty"),
    (dict(channels=[0.5]), TypeError, "integer"),
    (dict(channels=torch.zeros(2, 1, dtype=torch.long)), ValueError, "one row per block"),
    (dict(channels=[0], blocks=[3]), IndexError, "blocks index 3"),
    (dict(channels=[0], steps=[-1]), IndexError, "steps index -1"),
    (dict(channels=[0], blocks=[]), ValueError, "blocks is empty"),
    (dict(channels=[0], mode="replace", steps=[0, 1], values={(0, 0): torch.zeros(32)}), KeyError, r"\(1, 0\)"),
    (dict(channels=[0], mode="erase"), ValueError, "mode must be one of"),
    (dict(channels=[0], mode="scale"), ValueError, "needs a number"),
    (dict(channels=[0], mode="replace"), ValueError, "needs values"),
    (dict(channels=[0], mode="replace", values={(0, 0): torch.zeros(64, 31)}), ValueError, r"values\[\(0, 0\)\]"),
    (dict(channels=[0], mode="replace", values={(0, 9): torch.zeros(64, 32)}), IndexError, "values block"),
    (dict(channels=[0], token_mask=torch.ones(64)), TypeError, "token_mask must be a bool"),
])
def test_bad_intervene_arguments(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        helpers.intervene(pipe, **kwargs)
    assert hook_counts(pipe) == 0


def test_bad_record_arguments(pipe):
    with pytest.raises(ValueError, match="keys 'blocks' and 'steps'"):
        helpers.record(pipe, keep_tokens={"layers": [0]})
    with pytest.raises(IndexError, match="keep_tokens blocks index 7"):
        helpers.record(pipe, keep_tokens={"blocks": [7]})
    assert hook_counts(pipe) == 0


def test_wrong_replacement_shape_is_reported_during_the_call(pipe):
    with pytest.raises(ValueError, match="do not broadcast"):
        with helpers.intervene(pipe, channels=[0], mode="replace", values=lambda s, b, x: torch.zeros(3, 7, 32)):
            generate(pipe)
    assert hook_counts(pipe) == 0


def test_unsupported_transformer_lists_the_supported_ones():
    with pytest.raises(ValueError, match="unsupported transformer class 'Linear'.*FluxTransformer2DModel"):
        helpers.record(torch.nn.Linear(2, 2))


# --- models --------------------------------------------------------------------------------------------------------

def test_load_pipeline_unknown_name():
    with pytest.raises(ValueError, match="unknown model name 'flux.3'.*shapes"):
        helpers.load_pipeline("flux.3")


@pytest.mark.parametrize("name", ["flux.1-dev", "qwen-image"])
def test_load_pipeline_without_the_files_fails_clearly(name):
    with pytest.raises(RuntimeError, match="could not load") as info:
        helpers.load_pipeline(name, local_files_only=True)  # never touches the network
    message = str(info.value)
    assert "flux.1-dev" in message and "sd3.5-medium" in message  # the models needing a licence
    assert ("is gated" in message) == (name == "flux.1-dev")


def test_load_pipeline_shapes():
    if not helpers.shapes.MODEL_DIR.joinpath("model_index.json").exists():
        pytest.skip("no bundled model yet")
    pipe = helpers.load_pipeline("shapes")
    assert type(pipe).__name__ == "ShapesPipeline" and pipe.device.type == "cpu"
    assert len(helpers.residual_blocks(pipe)) == len(pipe.transformer.transformer_blocks) + len(
        pipe.transformer.single_transformer_blocks)


def test_every_model_name_maps_to_an_architecture_and_a_pipeline_class():
    import diffusers
    names = {n for a in helpers.ARCHITECTURES.values() for n in a.models}
    assert names == {"shapes", *helpers.MODELS}
    for entry in helpers.MODELS.values():
        assert hasattr(diffusers, entry.pipeline)
