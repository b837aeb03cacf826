"""Transport of massive activations (helpers.transport) and the seeding rule it runs on (helpers.seeding), on a tiny
random book-model pipeline: lockstep and cached transport agree, write the source exactly where they should and
nothing elsewhere, and refuse bad input before touching the pipeline."""
import numpy as np
import pytest
import torch
from tiny_pipelines import hook_counts

import helpers
from helpers.transport import SourceCache, cached_transport, lockstep_transport, record_source

SOURCES = ["a big red circle on the left on a blue background", "a small white square at the top on a black background"]
TARGETS = ["a big green circle on the left on a blue background", "a small white square at the top on a red background"]
STEPS = 3


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture(scope="module")
def top(pipe):
    with helpers.record(pipe) as rec:
        helpers.generate(pipe, SOURCES, num_inference_steps=STEPS)
    return helpers.top_k(helpers.channel_statistic(rec.mean), 4)


def refused(pipe, run, error=(ValueError, TypeError, IndexError)) -> str:
    """The message of the error ``run()`` raises, checking that the transformer never ran and no hook is left."""
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error) as err:
            run()
    finally:
        handle.remove()
    assert not calls and hook_counts(pipe) == 0, str(err.value)
    return str(err.value)


@torch.no_grad()
def test_alpha_zero_gives_the_plain_target_and_source_rows_are_untouched(pipe, top):
    out = lockstep_transport(pipe, SOURCES, TARGETS, top, alpha=0.0, num_inference_steps=STEPS)
    plain_t = helpers.generate(pipe, TARGETS, num_inference_steps=STEPS)
    plain_s = helpers.generate(pipe, SOURCES, num_inference_steps=STEPS)
    np.testing.assert_allclose(out.target, plain_t, atol=1e-5)
    np.testing.assert_allclose(out.source, plain_s, atol=1e-5)
    moved = lockstep_transport(pipe, SOURCES, TARGETS, top, alpha=1.0, num_inference_steps=STEPS)
    np.testing.assert_allclose(moved.source, plain_s, atol=1e-5)  # the source never changes
    assert np.abs(moved.target - plain_t).max() > 1e-3           # the target does
    nothing = lockstep_transport(pipe, SOURCES, TARGETS, top, mask=torch.zeros(64, dtype=torch.bool),
                                 num_inference_steps=STEPS)
    np.testing.assert_allclose(nothing.target, plain_t, atol=1e-5)
    assert hook_counts(pipe) == 0


@torch.no_grad()
def test_transported_entries_are_the_sources_and_only_those(pipe, top):
    """What the next block sees: the target's massive channels within the mask are exactly the source's."""
    seen = []
    handle = pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    mask = torch.zeros(64, dtype=torch.bool)
    mask[10:30] = True
    try:
        lockstep_transport(pipe, SOURCES, TARGETS, top, blocks=[0], steps=[1], mask=mask, num_inference_steps=STEPS)
    finally:
        handle.remove()
    src, tgt = seen[1][:2], seen[1][2:]  # step 1, rows [sources, targets]
    others = torch.ones(32, dtype=torch.bool)
    others[top[0]] = False
    for r in range(2):
        assert torch.equal(tgt[r][mask][:, top[0]], src[r][mask][:, top[0]])
        assert (tgt[r][~mask][:, top[0]] - src[r][~mask][:, top[0]]).abs().max() > 1e-4
        assert (tgt[r][mask][:, others] - src[r][mask][:, others]).abs().max() > 1e-4
    assert not torch.equal(seen[0][2:], seen[0][:2])  # step 0 is not transported: the target differs


@torch.no_grad()
def test_cached_transport_equals_lockstep(pipe, top):
    kw = dict(blocks=[1], steps=[0, 2], alpha=0.5, num_inference_steps=STEPS, seed=3)
    lock = lockstep_transport(pipe, SOURCES, TARGETS, top, **kw)
    cache = record_source(pipe, SOURCES, top, seed=3, num_inference_steps=STEPS)
    assert isinstance(cache, SourceCache) and "2 sources, 3 steps x 2 blocks x 4 channels" in repr(cache)
    np.testing.assert_allclose(cached_transport(pipe, cache, TARGETS, **kw), lock.target, atol=1e-5)
    np.testing.assert_allclose(cache.images, lock.source, atol=1e-5)
    # a subset of the cached channels equals lockstep with that subset
    lock2 = lockstep_transport(pipe, SOURCES, TARGETS, top[:, :2], num_inference_steps=STEPS, seed=3)
    cached2 = cached_transport(pipe, cache, TARGETS, channels=top[:, :2], num_inference_steps=STEPS, seed=3)
    np.testing.assert_allclose(cached2, lock2.target, atol=1e-5)
    assert hook_counts(pipe) == 0


@torch.no_grad()
def test_cached_equals_lockstep_with_guidance_and_per_pair_masks_and_alphas(pipe, top):
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :20], mask[1, 30:] = True, True
    kw = dict(num_inference_steps=STEPS, guidance_scale=3.0, alpha=[1.0, 0.3], mask=mask)
    lock = lockstep_transport(pipe, SOURCES, TARGETS, top, **kw)
    cache = record_source(pipe, SOURCES, top, num_inference_steps=STEPS, guidance_scale=3.0)
    assert cache.values[0, 0].shape == (4, 64, 4)  # [uncond, cond] rows of the two sources
    np.testing.assert_allclose(cached_transport(pipe, cache, TARGETS, **kw), lock.target, atol=1e-5)


@torch.no_grad()
def test_one_source_into_many_targets(pipe, top):
    cache = record_source(pipe, SOURCES[:1], top, blocks=[0], steps=[0, 1], num_inference_steps=STEPS)
    assert cache.nbytes == 2 * 1 * 1 * 64 * 4 * 4  # steps x blocks x rows x tokens x k x float32
    images = cached_transport(pipe, cache, TARGETS + SOURCES, num_inference_steps=STEPS, seed=np.array([1, 2, 0, 3]))
    assert images.shape == (4, 32, 32, 3)
    # the source transported into itself from the same noise (seed 0) is the source
    np.testing.assert_allclose(images[2], cache.images[0], atol=1e-5)


@torch.no_grad()
def test_dict_inputs_work_like_prompts(pipe, top):
    s, t = pipe.encode_prompt(SOURCES), pipe.encode_prompt(TARGETS)
    as_dict = lockstep_transport(pipe, dict(prompt_embeds=s[0], pooled_prompt_embeds=s[1]),
                                 dict(prompt_embeds=t[0], pooled_prompt_embeds=t[1]), top, num_inference_steps=STEPS)
    as_text = lockstep_transport(pipe, SOURCES, TARGETS, top, num_inference_steps=STEPS)
    np.testing.assert_allclose(as_dict.target, as_text.target, atol=1e-5)


@torch.no_grad()
def test_seeding_rule(pipe):
    images = helpers.generate(pipe, SOURCES[:1] * 3, seed=[5, 5, 6], num_inference_steps=2)
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - images[2]).max() > 1e-3
    alone = helpers.generate(pipe, SOURCES[1:], seed=8, num_inference_steps=2)  # row i: manual_seed(seed + i)
    np.testing.assert_allclose(helpers.generate(pipe, SOURCES, seed=7, num_inference_steps=2)[1], alone[0], atol=1e-6)
    for seed in (np.int64(7), torch.tensor(7), np.array([7, 8]), torch.tensor([7, 8])):
        assert [g.initial_seed() for g in helpers.generators(2, seed)] == [7, 8]


# --- misuse: refused before the pipeline runs, no hook left ------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS[:1], c), ValueError, "source has 2 rows but target has 1"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, mask=torch.ones(3, 64, dtype=torch.bool)), ValueError,
     "one row per pair (2)"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, mask=torch.ones(64)), TypeError, "bool tensor"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, alpha=1.5), ValueError, "alpha must be in [0, 1]"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, alpha=float("nan")), ValueError, "alpha must be in"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, latents=torch.zeros(3, 64, 48)), ValueError,
     "one row per prompt (2)"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, latents=torch.full((2, 64, 48), float("nan"))),
     ValueError, "finite tensor"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, blocks=[5]), IndexError, "blocks index 5 out of range"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, torch.zeros(3, 2, dtype=torch.long)), ValueError,
     "one row per block"),
    (lambda p, c: lockstep_transport(p, SOURCES[0], TARGETS[0], c), TypeError, "wrap it in a list"),
    (lambda p, c: lockstep_transport(p, [], [], c), ValueError, "non-empty list of prompts"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, seed=[1]), ValueError, "one integer seed per row (2)"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, generator=torch.Generator()), ValueError,
     "seed= or latents= (not generator=)"),
    (lambda p, c: lockstep_transport(p, SOURCES, TARGETS, c, guidance_scale=float("inf")), ValueError,
     "guidance_scale must be a finite number"),
    (lambda p, c: record_source(p, SOURCES, c, guidance_scale=float("nan")), ValueError, "guidance_scale must be"),
    (lambda p, c: record_source(p, SOURCES, c, prompt_embeds=torch.zeros(2, 4, 32)), ValueError, "not both"),
    (lambda p, c: record_source(p, [], c), ValueError, "non-empty list of prompts"),
    (lambda p, c: record_source(p, SOURCES, c, seed=1.5), TypeError, "seed must be an integer"),
    (lambda p, c: helpers.generate(p, [], num_inference_steps=2), ValueError, "non-empty list of prompts"),
    (lambda p, c: helpers.generate(p, SOURCES, latents=torch.zeros(1, 64, 48)), ValueError, "one row per prompt"),
])
def test_bad_input_is_refused_before_anything_runs(pipe, top, call, error, message):
    got = refused(pipe, lambda: call(pipe, top), error)
    assert message in got, got


@torch.no_grad()
def test_bad_cached_input_is_refused_before_anything_runs(pipe, top):
    cache = record_source(pipe, SOURCES, top[:, :2], blocks=[1], steps=[0, 1], num_inference_steps=STEPS)
    cases = [
        (dict(target=TARGETS, num_inference_steps=STEPS + 1), "num_inference_steps=4 differs"),
        (dict(target=TARGETS, num_inference_steps=STEPS, guidance_scale=2.0), "guidance_scale=2.0 differs"),
        (dict(target=TARGETS * 2, num_inference_steps=STEPS), "holds 2 sources but there are 4 targets"),
        (dict(target=TARGETS, num_inference_steps=STEPS, channels=top[:, 2:3]), "not in the cache"),
        (dict(target=TARGETS, num_inference_steps=STEPS, blocks=[0]), "blocks [0] are not in the cache"),
        (dict(target=TARGETS, num_inference_steps=STEPS, steps=[3]), "steps [3] are not in the cache"),
        (dict(target=TARGETS, num_inference_steps=STEPS, mask=torch.ones(2, 16, dtype=torch.bool)), "16 tokens"),
        (dict(target=TARGETS, num_inference_steps=STEPS, alpha=[1.0, 0.5, 0.2]), "one per target (2)"),
        (dict(target=[], num_inference_steps=STEPS), "non-empty list"),
    ]
    for kwargs, message in cases:
        got = refused(pipe, lambda kwargs=kwargs: cached_transport(pipe, cache, **kwargs))
        assert message in got, (message, got)
    with pytest.raises(TypeError, match="SourceCache"):
        cached_transport(pipe, {"values": {}}, TARGETS)


@torch.no_grad()
def test_steps_that_never_run_raise_at_the_end(pipe, top):
    with pytest.raises(ValueError, match=r"intervene\(\): steps \[9\] were asked for but never ran; the pipeline "
                                         r"ran steps 0-2"):
        lockstep_transport(pipe, SOURCES, TARGETS, top, steps=[1, 9], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"keep_tokens steps \[5\] were asked for but never ran"):
        record_source(pipe, SOURCES, top, steps=[5], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="the mask covers 63 tokens but the image has 64 image tokens"):
        lockstep_transport(pipe, SOURCES, TARGETS, top, mask=torch.ones(63, dtype=torch.bool), num_inference_steps=1)
    assert hook_counts(pipe) == 0
