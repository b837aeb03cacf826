"""Tests of the shapes world: grammar, renderer, masks, sampler, evaluator accuracy and error messages."""
import re

import numpy as np
import pytest
from PIL import Image

from helpers.shapes.world import (ATTRIBUTES, COLOURS, HELD_OUT, PALETTE, PATTERNS, POSITIONS, SHAPES, SIZES, TEXTURES,
                                  UNNAMED, WHERE, Scene, agreement, all_scenes, evaluate, evaluate_batch, is_held_out,
                                  parse_caption, render, sample_scenes, score, stray_fraction)

EXPECTED_PALETTE = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
    "purple": (150, 60, 190), "white": (240, 240, 240), "black": (20, 20, 20), "orange": (240, 140, 30),
}
CAPTION = re.compile(
    r"^a (small|big) ({c}) ({s}) (on the left|on the right|at the top|at the bottom|in the center) "
    r"on a ({c}) background$".format(c="|".join(EXPECTED_PALETTE), s="circle|square|triangle"))
SCENE = Scene("big", "red", "circle", "left", "blue")


@pytest.fixture(scope="module")
def nominal():
    return all_scenes()


@pytest.fixture(scope="module")
def sample():
    scenes = sample_scenes(2000, seed=1234)
    return scenes, render(scenes)


# ------------------------------------------------------------------------------------------------ grammar

def test_palette_has_the_eight_colours_with_exact_rgb():
    assert dict(PALETTE) == EXPECTED_PALETTE
    assert COLOURS == tuple(EXPECTED_PALETTE)
    assert set(SHAPES) == {"circle", "square", "triangle"} and set(SIZES) == {"small", "big"}
    assert set(POSITIONS) == set(WHERE) == {"left", "right", "top", "bottom", "center"}


def test_all_scenes_counts_every_nominal_scene(nominal):
    assert len(nominal) == 2 * 8 * 3 * 5 * 7 == 1680
    assert len(set(nominal)) == 1680
    assert all(s.dx == 0 and s.dy == 0 and s.scale == 1 for s in nominal)


def test_captions_follow_the_grammar_and_round_trip(nominal):
    assert SCENE.caption == "a big red circle on the left on a blue background"
    for s in nominal:
        m = CAPTION.match(s.caption)
        assert m, s.caption
        assert (m[1], m[2], m[3], m[5]) == (s.size, s.colour, s.shape, s.background)
        assert m[4] == WHERE[s.position]
        assert parse_caption(s.caption) == s


def test_parse_caption_ignores_case_and_spacing():
    assert parse_caption("  A Big RED circle on the left   on a blue background ") == SCENE


def test_render_range_shape_and_dtype(nominal):
    images = render(nominal[::7])
    assert images.shape == (len(nominal[::7]), 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    one = render(SCENE)
    assert one.shape == (32, 32, 3) and np.array_equal(one, SCENE.render())


def test_mask_is_where_the_object_colour_is(nominal):
    for s in nominal[::5]:
        img, mask = s.render(), s.mask
        fg = np.array(PALETTE[s.colour], np.float32) / 255
        bg = np.array(PALETTE[s.background], np.float32) / 255
        alpha = (img - bg) @ (fg - bg) / ((fg - bg) ** 2).sum()  # each pixel's share of object colour
        assert mask.dtype == bool and mask.shape == (32, 32)
        assert 20 < mask.sum() < 600, s
        decided = np.abs(alpha - 0.5) > 1e-3  # pixels exactly half covered may go either way
        assert np.array_equal(mask[decided], alpha[decided] > 0.5), s
        assert np.allclose(img[alpha > 1 - 1e-6], fg) and np.allclose(img[alpha < 1e-6], bg)
        assert (alpha > 1 - 1e-6).sum() >= mask.sum() / 3  # much of the mask is pure object colour


def test_object_colour_differs_from_background(nominal, sample):
    assert all(s.colour != s.background for s in nominal)
    assert all(s.colour != s.background for s in sample[0])


# ------------------------------------------------------------------------------------------------ sampler

def test_sampler_is_seeded():
    a, b, c = sample_scenes(50, seed=7), sample_scenes(50, seed=7), sample_scenes(50, seed=8)
    assert a == b
    assert a != c
    assert np.array_equal(render(a), render(b))
    assert sample_scenes(0, seed=0) == []


def test_sampler_jitter_is_small_and_optional():
    jittered = sample_scenes(200, seed=3)
    assert all(abs(s.dx) <= 0.04 and abs(s.dy) <= 0.04 and 0.9 <= s.scale <= 1.1 for s in jittered)
    assert any(s.dx != 0 for s in jittered)
    assert all(s.dx == 0 and s.dy == 0 and s.scale == 1 for s in sample_scenes(50, seed=3, jitter=False))


def test_excluding_held_out_really_excludes_them(sample):
    assert any(is_held_out(s) for s in sample[0])  # without exclusion they do occur ...
    kept = sample_scenes(2000, seed=1234, exclude=HELD_OUT)
    assert len(kept) == 2000 and not any(is_held_out(s) for s in kept)  # ... and with it they never do
    assert not any((s.colour, s.shape) in {("green", "triangle"), ("purple", "square")} for s in kept)
    nominal_kept = all_scenes(exclude=HELD_OUT)
    assert len(nominal_kept) == 1680 - 2 * (2 * 5 * 7)
    assert not any(is_held_out(s) for s in nominal_kept)


# ------------------------------------------------------------------------------------------------ evaluator

def test_evaluator_reads_every_nominal_scene(nominal):
    acc = score(evaluate_batch(render(nominal)), nominal)
    assert acc["all"] == 1.0, acc


def test_evaluator_accuracy_on_clean_renders(sample):
    scenes, images = sample
    acc = score(evaluate_batch(images), scenes)
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES), acc


def test_evaluator_accuracy_with_noise(sample):
    scenes, images = sample
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.05, images.shape), 0, 1)
    acc = score(evaluate_batch(noisy), scenes)
    assert all(acc[a] >= 0.95 for a in ATTRIBUTES), acc


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_evaluator_result_and_mask(nominal):
    out = evaluate(SCENE.render())
    assert {a: out[a] for a in ATTRIBUTES} == SCENE.attributes
    assert _iou(out["mask"], SCENE.mask) > 0.8
    assert out["match_iou"] > 0.9
    # the detected mask (pixels nearest the object's palette colour) follows the true mask; anti-aliased edge
    # pixels may land nearest a third palette colour (red + blue -> purple), so small shapes lose some edge pixels
    ious = np.array([_iou(evaluate(s.render())["mask"], s.mask) for s in nominal[::4]])
    assert ious.mean() > 0.85 and ious.min() >= 0.5, (ious.mean(), ious.min())


def test_evaluator_accepts_pil_and_uint8():
    for s in sample_scenes(20, seed=5):
        u8 = (s.render() * 255).round().astype(np.uint8)
        for image in (u8, Image.fromarray(u8)):
            out = evaluate(image)
            assert {a: out[a] for a in ATTRIBUTES} == s.attributes


def test_evaluator_on_a_blank_image_reads_only_the_background():
    out = evaluate(np.full((32, 32, 3), np.array(PALETTE["blue"]) / 255, np.float32))
    assert out["background"] == "blue"
    assert all(out[a] is None for a in ATTRIBUTES if a != "background")


def test_score_checks_lengths():
    with pytest.raises(ValueError, match="2 evaluations but 1 ground-truth"):
        score([evaluate(SCENE.render())] * 2, [SCENE])


# ------------------------------------------------------------------------------------------------ bad input

def test_caption_with_unknown_word_names_it():
    with pytest.raises(ValueError, match="unknown word.*'hexagon'"):
        parse_caption("a big red hexagon on the left on a blue background")


def test_caption_with_word_in_wrong_slot():
    with pytest.raises(ValueError, match="'blue' is not a shape"):
        parse_caption("a big red blue on the left on a green background")
    with pytest.raises(ValueError, match="'circle' is not a colour"):
        parse_caption("a big circle circle on the left on a green background")
    with pytest.raises(ValueError, match="position phrase 'on the top'"):
        parse_caption("a big red circle on the top on a green background")


@pytest.mark.parametrize("caption", ["a big red circle", "a big red circle on the left on a blue background background",
                                     ""])
def test_caption_of_wrong_length(caption):
    with pytest.raises(ValueError, match="does not follow the grammar"):
        parse_caption(caption)


def test_caption_not_a_string():
    with pytest.raises(TypeError, match="caption must be a string, got int"):
        parse_caption(42)
    with pytest.raises(TypeError, match="got list"):
        parse_caption(["a", "big"])


def test_caption_with_same_colour_and_background():
    with pytest.raises(ValueError, match="both 'red'.*must differ"):
        parse_caption("a big red circle on the left on a red background")


def test_scene_with_same_colour_and_background():
    with pytest.raises(ValueError, match="both 'blue'.*must differ"):
        Scene("big", "blue", "circle", "left", "blue")


@pytest.mark.parametrize("field,value", [("size", "huge"), ("colour", "pink"), ("shape", "star"),
                                         ("position", "middle"), ("background", "grey")])
def test_scene_with_unknown_attribute(field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; expected one of"):
        SCENE.replace(**{field: value})


@pytest.mark.parametrize("shape", [(64, 64, 3), (4, 32, 32, 3), (32, 32), (3, 32, 32)])
def test_evaluator_wrong_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"expected an image of shape (32, 32, 3), got {shape}")):
        evaluate(np.zeros(shape, np.float32))


def test_evaluator_batched_input_points_to_evaluate_batch():
    with pytest.raises(ValueError, match="evaluate_batch"):
        evaluate(render(sample_scenes(4, seed=0)))


def test_evaluator_nan():
    image = SCENE.render()
    image[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(image)


def test_evaluator_minus_one_to_one_range_suggests_conversion():
    with pytest.raises(ValueError, match=re.escape("convert from [-1, 1] with (x + 1) / 2")):
        evaluate(SCENE.render() * 2 - 1)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
def test_evaluator_integer_non_uint8(dtype):
    with pytest.raises(ValueError, match=f"got dtype {np.dtype(dtype).name}"):
        evaluate((SCENE.render() * 255).astype(dtype))


# ------------------------------------------------------------------------------------------------ world 2

@pytest.fixture(scope="module")
def sample_v2():
    scenes = sample_scenes(2000, seed=4321, world=2)
    return scenes, render(scenes)


def test_world_2_keeps_world_1_captions_and_draws_the_unnamed_content():
    v1, v2 = sample_scenes(300, seed=11), sample_scenes(300, seed=11, world=2)
    assert [s.caption for s in v1] == [s.caption for s in v2]
    assert all(s.texture is None and s.pattern == "plain" for s in v1)
    assert {s.texture for s in v2} == set(TEXTURES) and {s.pattern for s in v2} == set(PATTERNS)
    assert len({round(s.phase, 3) for s in v2}) > 250
    assert sample_scenes(50, seed=3, world=2) == sample_scenes(50, seed=3, world=2)


def test_world_2_keeps_every_pixel_nearest_its_palette_colour(sample_v2):
    scenes, images = sample_v2
    palette = np.array(list(PALETTE.values()), np.float32) / 255
    for s, img in zip(scenes[:400], images[:400]):
        nearest = ((img[..., None, :] - palette) ** 2).sum(-1).argmin(-1)
        flat = s.replace(texture=None, pattern="plain").render()
        flat_nearest = ((flat[..., None, :] - palette) ** 2).sum(-1).argmin(-1)
        pure = np.isclose(flat[..., None, :], palette).all(-1).any(-1)  # not an anti-aliased edge pixel
        assert np.array_equal(nearest[pure], flat_nearest[pure]), s
        assert not np.array_equal(img, flat)


def test_world_2_evaluator_reads_captioned_and_unnamed_content(sample_v2):
    scenes, images = sample_v2
    predicted = evaluate_batch(images)
    acc = score(predicted, scenes) | score(predicted, scenes, attributes=UNNAMED)
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES + UNNAMED), acc
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.03, images.shape), 0, 1).astype(np.float32)
    acc = score(evaluate_batch(noisy), scenes, attributes=UNNAMED)
    assert all(acc[a] >= 0.97 for a in UNNAMED), acc


def test_world_2_evaluator_reads_the_stripes_phase(sample_v2):
    scenes, images = sample_v2
    for s, img in zip(scenes[:100], images[:100]):
        gap = abs(evaluate(img)["phase"] - s.phase)
        assert min(gap, 1 - gap) < 0.02, s


def test_flat_images_read_as_plain_and_untextured(nominal):
    out = [evaluate(s.render()) for s in nominal[::20]]
    assert all(o["texture"] is None and o["pattern"] == "plain" for o in out)


def test_unknown_unnamed_content_and_world_are_refused():
    with pytest.raises(ValueError, match="unknown texture 'zigzag'"):
        SCENE.replace(texture="zigzag")
    with pytest.raises(ValueError, match="unknown pattern 'spots'"):
        SCENE.replace(pattern="spots")
    with pytest.raises(ValueError, match="world must be 1 or 2"):
        sample_scenes(3, seed=0, world=3)
    with pytest.raises(ValueError, match="unknown attribute"):
        score([], [], attributes=("mood",))


def test_exclude_that_rules_out_everything_is_refused_instead_of_looping():
    with pytest.raises(ValueError, match="rules out every scene"):
        sample_scenes(1, 0, exclude=[{}])
    with pytest.raises(ValueError, match="non-negative integer"):
        sample_scenes(2.5, 0)


def test_agreement_is_per_image_and_score_is_its_mean(sample_v2):
    scenes, images = sample_v2
    predicted = evaluate_batch(images[:50])
    right = agreement(predicted, scenes[:50], ATTRIBUTES + UNNAMED)
    assert right.shape == (50, 7) and right.dtype == bool
    assert score(predicted, scenes[:50])["all"] == right[:, :5].all(1).mean()
    wrong = [dict(p, colour="purple" if p["colour"] != "purple" else "red") for p in predicted]
    assert not agreement(wrong, scenes[:50]).all(1).any()


def test_stray_fraction_is_small_on_renders_and_large_on_noise(sample_v2):
    _, images = sample_v2
    assert stray_fraction(images[:100]).max() < 0.08 and np.median(stray_fraction(images[:100])) < 0.02  # edges
    noise = np.random.default_rng(0).uniform(0, 1, (10, 32, 32, 3))
    assert stray_fraction(noise).min() > 0.5
