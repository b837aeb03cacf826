"""Transport of massive activations: lockstep and cached transport agree, leave what they should alone, and refuse
bad input before touching the pipeline. Runs on a tiny random book-model pipeline (fast)."""
import numpy as np
import pytest
import torch

from helpers.transport import (SourceCache, attribute_pairs, cached_transport, cluster_masks, difference_share,
                               foreground_mask, interpolated_prompt_embeds, lockstep_transport, massive_channels,
                               plain_generation, record_source, transport_scores)

SOURCES = ["a big red circle on the left on a blue background", "a small white square at the top on a black background"]
TARGETS = ["a big green circle on the left on a blue background", "a small white square at the top on a red background"]
STEPS = 4


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture(scope="module")
def top(pipe):
    return massive_channels(pipe, SOURCES, k=4, num_inference_steps=STEPS)


def no_hooks(pipe):
    t = pipe.transformer
    return not (t._forward_hooks or t._forward_pre_hooks
                or any(m._forward_hooks for m in t.modules()))


def test_massive_channels_one_row_per_block(pipe, top):
    assert top.shape == (2, 4) and top.dtype == torch.long
    assert int(top.max()) < 32


def test_alpha_zero_gives_the_plain_target_and_source_rows_are_untouched(pipe, top):
    out = lockstep_transport(pipe, SOURCES, TARGETS, top, alpha=0.0, num_inference_steps=STEPS)
    plain_t = plain_generation(pipe, TARGETS, num_inference_steps=STEPS)
    plain_s = plain_generation(pipe, SOURCES, num_inference_steps=STEPS)
    np.testing.assert_allclose(out.target, plain_t, atol=1e-5)
    np.testing.assert_allclose(out.source, plain_s, atol=1e-5)
    moved = lockstep_transport(pipe, SOURCES, TARGETS, top, alpha=1.0, num_inference_steps=STEPS)
    np.testing.assert_allclose(moved.source, plain_s, atol=1e-5)  # the source never changes
    assert np.abs(moved.target - plain_t).max() > 1e-3           # the target does
    assert no_hooks(pipe)


def test_transported_entries_are_the_sources_and_only_those(pipe, top):
    """What the next block sees: the target's massive channels within the mask are the source's, the rest is not."""
    seen = []
    handle = pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[10:30] = True
    try:
        lockstep_transport(pipe, SOURCES, TARGETS, top, blocks=[0], steps=[1], mask=mask, num_inference_steps=STEPS)
    finally:
        handle.remove()
    x = seen[1]  # step 1, rows [sources, targets]
    src, tgt = x[:2], x[2:]
    for r in range(2):
        inside = tgt[r][mask][:, top[0]]
        torch.testing.assert_close(inside, src[r][mask][:, top[0]])
        assert (tgt[r][~mask][:, top[0]] - src[r][~mask][:, top[0]]).abs().max() > 1e-4
        others = torch.ones(32, dtype=torch.bool)
        others[top[0]] = False
        assert (tgt[r][mask][:, others] - src[r][mask][:, others]).abs().max() > 1e-4
    assert not torch.equal(seen[0][2:], seen[0][:2])  # step 0 is not transported: the target differs


def test_cached_transport_equals_lockstep(pipe, top):
    kw = dict(blocks=[1], steps=[0, 2], mask="cluster", alpha=0.5, num_inference_steps=STEPS, seed=3)
    lock = lockstep_transport(pipe, SOURCES, TARGETS, top, **kw)
    cache = record_source(pipe, SOURCES, top, seed=3, num_inference_steps=STEPS)
    cached = cached_transport(pipe, cache, TARGETS, **{k: v for k, v in kw.items() if k != "seed"}, seed=3)
    np.testing.assert_allclose(cached, lock.target, atol=1e-4)
    np.testing.assert_allclose(cache.images, lock.source, atol=1e-5)
    # a subset of the cached channels equals lockstep with that subset
    lock2 = lockstep_transport(pipe, SOURCES, TARGETS, top[:, :2], blocks=[0, 1], num_inference_steps=STEPS, seed=3)
    cached2 = cached_transport(pipe, cache, TARGETS, channels=top[:, :2], blocks=[0, 1], num_inference_steps=STEPS,
                               seed=3)
    np.testing.assert_allclose(cached2, lock2.target, atol=1e-4)
    assert no_hooks(pipe)


def test_cached_equals_lockstep_with_guidance_and_given_masks(pipe, top):
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :20], mask[1, 30:] = True, True
    kw = dict(num_inference_steps=STEPS, guidance_scale=3.0, alpha=[1.0, 0.3])
    lock = lockstep_transport(pipe, SOURCES, TARGETS, top, mask=mask, **kw)
    cache = record_source(pipe, SOURCES, top, num_inference_steps=STEPS, guidance_scale=3.0)
    assert cache.values[0, 0].shape == (4, 64, 4)  # [uncond, cond] rows of the two sources
    np.testing.assert_allclose(cached_transport(pipe, cache, TARGETS, mask=mask, **kw), lock.target, atol=1e-4)
    masks = cluster_masks(cache)
    lock_c = lockstep_transport(pipe, SOURCES, TARGETS, top, mask=masks, **kw)
    lock_s = lockstep_transport(pipe, SOURCES, TARGETS, top, mask="cluster", **kw)
    np.testing.assert_allclose(cached_transport(pipe, cache, TARGETS, mask=masks, **kw), lock_c.target, atol=1e-4)
    np.testing.assert_allclose(lock_c.target, lock_s.target, atol=1e-4)  # the same masks, computed in the loop


def test_a_mask_outside_the_transported_tokens_changes_nothing(pipe, top):
    nothing = torch.zeros(64, dtype=torch.bool)
    out = lockstep_transport(pipe, SOURCES, TARGETS, top, mask=nothing, num_inference_steps=STEPS)
    np.testing.assert_allclose(out.target, plain_generation(pipe, TARGETS, num_inference_steps=STEPS), atol=1e-5)


def test_one_source_into_many_targets(pipe, top):
    cache = record_source(pipe, SOURCES[:1], top, blocks=[0], steps=[0, 1], num_inference_steps=STEPS)
    assert cache.nbytes == 2 * 1 * 1 * 64 * 4 * 4  # steps x blocks x rows x tokens x k x float32
    targets = TARGETS + SOURCES
    images = cached_transport(pipe, cache, targets, num_inference_steps=STEPS, seed=[1, 2, 0, 3])
    assert images.shape == (4, 32, 32, 3)
    # the source transported into itself from the same noise (seed 0) is the source
    np.testing.assert_allclose(images[2], cache.images[0], atol=1e-5)


def test_foreground_mask_finds_the_subject():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 64, 2, generator=g) * 0.1
    truth = torch.zeros(3, 64, dtype=torch.bool)
    truth[0, 5:12], truth[1, 40:60], truth[2, ::8] = True, True, True
    tokens[truth] += torch.tensor([5.0, -3.0])
    assert torch.equal(foreground_mask(tokens), truth)
    assert torch.equal(foreground_mask(tokens, rule="smaller"), truth)
    assert torch.equal(foreground_mask(tokens), foreground_mask(tokens))  # deterministic
    # a large centred subject (36 of 64 tokens, no border token): "border" finds it, "smaller" takes the ring
    centre = torch.zeros(8, 8, dtype=torch.bool)
    centre[1:7, 1:7] = True
    big = torch.randn(1, 64, 2, generator=g) * 0.1
    big[0, centre.flatten()] += 4.0
    assert torch.equal(foreground_mask(big)[0], centre.flatten())
    assert torch.equal(foreground_mask(big, rule="smaller")[0], ~centre.flatten())
    with pytest.raises(ValueError, match="rule must be"):
        foreground_mask(big, rule="largest")


def test_text_interpolation_ends(pipe):
    e0 = interpolated_prompt_embeds(pipe, SOURCES, TARGETS, alpha=0.0)
    e1 = interpolated_prompt_embeds(pipe, SOURCES, TARGETS, alpha=1.0)
    src, tgt = pipe.encode_prompt(SOURCES), pipe.encode_prompt(TARGETS)
    torch.testing.assert_close(e0["prompt_embeds"], tgt[0])
    torch.testing.assert_close(e1["pooled_prompt_embeds"], src[1])
    images = plain_generation(pipe, e0, num_inference_steps=STEPS)
    np.testing.assert_allclose(images, plain_generation(pipe, TARGETS, num_inference_steps=STEPS), atol=1e-5)


def test_dict_inputs_work_like_prompts(pipe, top):
    s, t = pipe.encode_prompt(SOURCES), pipe.encode_prompt(TARGETS)
    as_dict = lockstep_transport(pipe, dict(prompt_embeds=s[0], pooled_prompt_embeds=s[1]),
                                 dict(prompt_embeds=t[0], pooled_prompt_embeds=t[1]), top, num_inference_steps=STEPS)
    as_text = lockstep_transport(pipe, SOURCES, TARGETS, top, num_inference_steps=STEPS)
    np.testing.assert_allclose(as_dict.target, as_text.target, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS[:1], c), "source has 2 rows but target has 1"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, mask=torch.ones(63, dtype=torch.bool)), "63 tokens"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, mask=torch.ones(3, 64, dtype=torch.bool)),
     "one row per pair (2)"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, mask=torch.ones(64)), "bool tensor"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, mask="kmeans"), "'cluster'"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, alpha=1.5), "alpha must be in [0, 1]"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, latents=torch.zeros(3, 64, 48)), "one row per prompt"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, blocks=[5]), "blocks index 5 out of range"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, torch.zeros(3, 2, dtype=torch.long)), "one row per block"),
    (lambda p, c: lockstep_transport(p, SOURCES[0], TARGETS[0], c), "wrap it in a list"),
])
def test_bad_lockstep_input_is_refused_before_any_hook(pipe, top, call, message):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises((ValueError, TypeError, IndexError), match=None) as err:
            call(pipe, top)
    finally:
        handle.remove()
    assert message in str(err.value), str(err.value)
    assert not calls and no_hooks(pipe)


def test_bad_cached_input_is_refused_before_any_hook(pipe, top):
    cache = record_source(pipe, SOURCES, top[:, :2], blocks=[1], steps=[0, 1], num_inference_steps=STEPS)
    assert isinstance(cache, SourceCache) and "2 sources" in repr(cache)
    cases = [
        (dict(target=TARGETS, num_inference_steps=STEPS + 1), "num_inference_steps=5 differs"),
        (dict(target=TARGETS, num_inference_steps=STEPS, guidance_scale=2.0), "guidance_scale=2.0 differs"),
        (dict(target=TARGETS * 2, num_inference_steps=STEPS), "holds 2 sources but there are 4 targets"),
        (dict(target=TARGETS, num_inference_steps=STEPS, channels=top[:, 2:3]), "not in the cache"),
        (dict(target=TARGETS, num_inference_steps=STEPS, blocks=[0]), "blocks [0] are not in the cache"),
        (dict(target=TARGETS, num_inference_steps=STEPS, steps=[3]), "steps [3] are not in the cache"),
        (dict(target=TARGETS, num_inference_steps=STEPS, mask=torch.ones(2, 16, dtype=torch.bool)), "16 tokens"),
        (dict(target=TARGETS, num_inference_steps=STEPS, latents=torch.zeros(2, 16, 48)), "16 image tokens"),
    ]
    for kwargs, message in cases:
        calls = []
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            with pytest.raises((ValueError, TypeError)) as err:
                cached_transport(pipe, cache, **kwargs)
        finally:
            handle.remove()
        assert message in str(err.value), (message, str(err.value))
        assert not calls and no_hooks(pipe)
    with pytest.raises(TypeError, match="SourceCache"):
        cached_transport(pipe, {"values": {}}, TARGETS)


def test_seed_lists_give_rows_the_same_noise(pipe):
    images = plain_generation(pipe, SOURCES[:1] * 3, seed=[5, 5, 6], num_inference_steps=STEPS)
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - images[2]).max() > 1e-3
    with pytest.raises(ValueError, match="one seed per row"):
        plain_generation(pipe, SOURCES, seed=[1, 2, 3])
    with pytest.raises(TypeError, match="seed must be an integer"):
        plain_generation(pipe, SOURCES, seed=1.5)


def test_difference_share_splits_the_difference(pipe):
    every = torch.arange(32)
    a = record_source(pipe, SOURCES, every, blocks=[0], steps=[0, 1], num_inference_steps=STEPS)
    b = record_source(pipe, TARGETS, every, blocks=[0], steps=[0, 1], num_inference_steps=STEPS)
    whole = difference_share(a, b, every)
    torch.testing.assert_close(whole["difference"][0], torch.tensor(1.0))
    torch.testing.assert_close(whole["energy"][0], torch.tensor(1.0))
    assert torch.isnan(whole["difference"][1])  # block 1 not recorded
    halves = [difference_share(a, b, every[:16])["difference"][0], difference_share(a, b, every[16:])["difference"][0]]
    torch.testing.assert_close(sum(halves), torch.tensor(1.0))
    with pytest.raises(ValueError, match="same channels"):
        difference_share(a, record_source(pipe, TARGETS, every[:4], blocks=[0], steps=[0], num_inference_steps=STEPS),
                         every[:4])


def test_attribute_pairs_differ_in_exactly_one_attribute():
    from helpers.shapes import ATTRIBUTES, is_held_out
    for attribute in ATTRIBUTES:
        sources, targets = attribute_pairs(attribute, 40, seed=1)
        assert len(sources) == len(targets) == 40
        for s, t in zip(sources, targets):
            assert [a for a in ATTRIBUTES if getattr(s, a) != getattr(t, a)] == [attribute]
            assert not is_held_out(s) and not is_held_out(t)
        assert attribute_pairs(attribute, 40, seed=1) == (sources, targets)  # seeded
        shared = attribute_pairs(attribute, targets=targets, seed=2)[1]
        assert shared == targets
    with pytest.raises(ValueError, match="attribute must be one of"):
        attribute_pairs("texture", 4)
    with pytest.raises(ValueError, match="either n"):
        attribute_pairs("colour")


def test_transport_scores_on_ground_truth_renders():
    from helpers.shapes import render
    sources, targets = attribute_pairs("colour", 20, seed=3)
    as_source = transport_scores(render(sources), sources, targets, "colour")
    assert as_source["adopted"].all() and as_source["preserved"].all()  # a perfect transport
    as_target = transport_scores(render(targets), sources, targets, "colour", reference=render(targets))
    assert not as_target["adopted"].any() and as_target["preserved"].all()  # no transport at all
    moved = [s.replace(size="small" if s.size == "big" else "big") for s in sources]
    wrong = transport_scores(render(moved), sources, targets, "colour")
    assert wrong["adopted"].all() and not wrong["preserved"].any() and not wrong["both"].any()
    with pytest.raises(ValueError, match="one of each per pair"):
        transport_scores(render(sources[:3]), sources, targets, "colour")


def test_transport_scores_name_what_was_lost():
    from helpers.shapes import render
    sources, targets = attribute_pairs("shape", 10, seed=4)
    moved = [s.replace(position="left" if s.position != "left" else "right") for s in sources]
    scores = transport_scores(render(moved), sources, targets, "shape")
    assert set(scores["lost"]) == {"size", "colour", "position", "background"}
    assert scores["lost"]["position"].all() and not scores["lost"]["colour"].any()


@pytest.mark.parametrize("make", ["flux", "sd3"])
def test_generic_over_real_pipelines(make):
    """FLUX.1 (one call per step) and SD3 (batched CFG, negative embeddings) with per-row embeddings as inputs:
    cached transport equals lockstep transport, and the source rows are the plain sources."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           SD3Transformer2DModel, StableDiffusion3Pipeline)

    from tests.test_architectures import tiny_vae  # tiny random configs, no download
    torch.manual_seed(0)
    if make == "flux":
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)).eval()
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(4), text_encoder=None,
                            tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    else:
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                            joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
        pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                        vae=tiny_vae(4), text_encoder=None, tokenizer=None, text_encoder_2=None,
                                        tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    if make == "flux":
        side = lambda: {"prompt_embeds": torch.randn(2, 5, 32, generator=g),
                        "pooled_prompt_embeds": torch.randn(2, 32, generator=g)}
        kw = dict(height=16, width=16, num_inference_steps=2, output_type="np")
    else:
        side = lambda: {"prompt_embeds": torch.randn(2, 6, 32, generator=g),
                        "pooled_prompt_embeds": torch.randn(2, 64, generator=g),
                        "negative_prompt_embeds": torch.randn(2, 6, 32, generator=g),
                        "negative_pooled_prompt_embeds": torch.randn(2, 64, generator=g)}
        kw = dict(height=16, width=16, num_inference_steps=2, guidance_scale=3.0, output_type="np")
    source, target = side(), side()
    channels = massive_channels(pipe, source, k=3, **kw)
    lock = lockstep_transport(pipe, source, target, channels, mask="cluster", alpha=0.7, **kw)
    cache = record_source(pipe, source, channels, **kw)
    np.testing.assert_allclose(cached_transport(pipe, cache, target, mask="cluster", alpha=0.7, **kw), lock.target,
                               atol=1e-4)
    np.testing.assert_allclose(lock.source, plain_generation(pipe, source, **kw), atol=1e-5)
    assert np.abs(lock.target - plain_generation(pipe, target, **kw)).max() > 1e-4
    with pytest.raises(ValueError, match="num_inference_steps=3 differs"):
        cached_transport(pipe, cache, target, **{**kw, "num_inference_steps": 3})
