"""The small parts of the helpers core: the models table and the one conditional-rows resolver, the seeding rule's
call arguments, and the statistics the chapters report with."""
import diffusers
import numpy as np
import pytest
import torch

import helpers
from helpers import stats
from helpers.models import BATCHED, NONE, TWO_CALLS, conditional_rows, guidance_layout, sampling_settings
from helpers.seeding import call_arguments

# --- models ----------------------------------------------------------------------------------------------------------


def test_every_model_names_a_pipeline_class_and_its_settings():
    for name, m in helpers.MODELS.items():
        assert m.pipeline == "ShapesPipeline" or hasattr(diffusers, m.pipeline), name
        assert m.guidance in (NONE, BATCHED, TWO_CALLS) and isinstance(m.guidance_on, tuple)
        assert (m.guidance == NONE) == (m.guidance_on == ()), name
        assert "num_inference_steps" in m.settings
    assert sampling_settings("qwen-image", num_inference_steps=4) == {**helpers.MODELS["qwen-image"].settings,
                                                                        "num_inference_steps": 4}
    assert helpers.MODELS["flux.1-dev"].settings["num_inference_steps"] == 28  # the table is not changed
    with pytest.raises(ValueError, match="unknown model name 'flux.3'.*shapes"):
        sampling_settings("flux.3")
    with pytest.raises(ValueError, match="unknown model name 'flux.3'"):
        helpers.load_pipeline("flux.3")


def test_architectures_name_real_classes_and_one_label_convention():
    for cls, arch in helpers.ARCHITECTURES.items():
        assert hasattr(diffusers, cls)
        assert all(label in ("double", "single", "block") for _, _, label in arch.blocks)


@pytest.mark.parametrize("layout, calls, expected", [
    (NONE, [2], [0, 1]),
    (BATCHED, [2], [0, 1]),              # guidance off: every row is an image
    (BATCHED, [4], [2, 3]),              # [uncond; cond]
    (BATCHED, [4, 2], [2, 3]),           # SD3 skip-layer guidance: a third call on the cond rows
    (TWO_CALLS, [2, 2], [0, 1]),         # cond, then uncond
    (NONE, [2, 2], [0, 1]),              # a guided call of a model whose table entry has none: the calls tell
    (None, [4], [2, 3]),                 # a pipeline not in the table
])
def test_the_conditional_rows_resolver(layout, calls, expected):
    assert conditional_rows(layout, calls, 2) == expected


def test_the_resolver_refuses_what_it_cannot_tell():
    with pytest.raises(ValueError, match=r"conditional rows of 2 images .* \[6\] rows"):
        conditional_rows(BATCHED, [6], 2)


def test_guidance_layout_of_a_pipeline_class():
    def pipe(name):
        return type(name, (), {})()
    assert guidance_layout(pipe("FluxPipeline")) == TWO_CALLS    # FLUX.1-dev's true CFG; schnell has none
    assert guidance_layout(pipe("Flux2KleinPipeline")) == NONE
    assert guidance_layout(pipe("ShapesPipeline")) == BATCHED
    assert guidance_layout(pipe("FluxKontextPipeline")) is None  # not in the table: the calls tell


# --- seeding ---------------------------------------------------------------------------------------------------------

def test_call_arguments():
    n, kw = call_arguments(["a", "b"], seed=3, num_inference_steps=2)
    assert n == 2 and kw["prompt"] == ["a", "b"] and kw["num_inference_steps"] == 2
    assert [g.initial_seed() for g in kw["generator"]] == [3, 4]
    latents = torch.zeros(2, 4)
    assert call_arguments({"prompt_embeds": torch.zeros(2, 3)}, latents=latents)[1]["latents"] is latents
    bad = [
        (dict(inputs={"prompt_embeds": torch.zeros(2, 3), "pooled_prompt_embeds": torch.zeros(3, 3)}),
         "one number of rows"),
        (dict(inputs={"prompt": ["a", "b"], "prompt_embeds": torch.zeros(2, 3)}), "not both"),
        (dict(inputs=["a"], true_cfg_scale=float("nan")), "true_cfg_scale must be a finite number"),
        (dict(inputs=["a"], guidance_scale="4"), "guidance_scale must be a finite number"),
        (dict(inputs=["a"], latents=torch.zeros(2, 4)), "one row per prompt (1)"),
        (dict(inputs=[1, 2]), "non-empty list of prompts"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError) as err:
            call_arguments(**kwargs)
        assert message in str(err.value), str(err.value)
    for seed in (True, [1, 2.0], "1"):
        with pytest.raises((TypeError, ValueError), match="seed"):
            helpers.generators(2, seed)


# --- statistics ------------------------------------------------------------------------------------------------------

def test_wilson_interval():
    p, lo, hi = stats.wilson([True] * 8 + [False] * 2)
    assert p == 0.8 and lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert stats.wilson([True])[1] > 0.0 and stats.fmt((0.8, 0.49, 0.94)) == "0.800 [0.490, 0.940]"
    with pytest.raises(ValueError, match="at least one trial"):
        stats.wilson([])


def test_cluster_bootstrap_resamples_whole_clusters():
    values = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    m, lo, hi = stats.cluster_bootstrap(values, clusters=[0, 0, 0, 1, 1, 1])
    assert m == 0.5 and lo == 0.0 and hi == 1.0  # two clusters: the mean is either cluster's or both
    m, lo, hi = stats.cluster_bootstrap(values)
    assert 0.0 < lo < 0.5 < hi < 1.0
    assert stats.cluster_bootstrap(np.ones(5)) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one cluster label per value"):
        stats.cluster_bootstrap(values, clusters=[0, 1])


def test_paired_tests():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.0, 3.0])
    assert stats.paired_difference(a, b) == (1.0, 1.0, 1.0)
    assert stats.mcnemar([True] * 10, [False] * 10) == pytest.approx(2 * 0.5 ** 10)
    assert stats.mcnemar([True, False], [True, False]) == 1.0
    with pytest.raises(ValueError, match="same length"):
        stats.mcnemar([True], [True, False])


def test_p_values_are_written_one_way():
    assert stats.p_text(0.0004) == "p < 0.001" and stats.p_text(0.2191) == "p = 0.219"
    assert stats.fmt((0.5, 0.41234, 0.6)) == "0.500 [0.412, 0.600]"
