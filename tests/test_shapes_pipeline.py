"""The book model: a real diffusers pipeline that loads offline, is deterministic and rejects bad input."""
import time

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from PIL import Image
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from helpers.shapes import MODEL_DIR, ShapesPipeline, build_components, load_shapes_pipeline, pack, unpack
from helpers.shapes import train

PROMPTS = ["a big red circle on the left on a blue background", "a small white square at the top on a black background"]


@pytest.fixture(scope="module")
def pipe():
    return load_shapes_pipeline()


def test_loads_offline_in_seconds_from_package_data():
    start = time.perf_counter()
    p = load_shapes_pipeline()
    assert time.perf_counter() - start < 10
    assert isinstance(p.transformer, FluxTransformer2DModel)
    assert isinstance(p.text_encoder, CLIPTextModel)
    assert isinstance(p.tokenizer, PreTrainedTokenizerFast)
    assert isinstance(p.scheduler, FlowMatchEulerDiscreteScheduler)
    assert p.device.type == "cpu"


def test_bundled_weights_fit_the_size_budget():
    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 16 * 2**20, f"bundled model is {size / 2**20:.1f} MB"
    assert list(MODEL_DIR.rglob("*.safetensors")), "weights must be safetensors"


def test_output_types_follow_diffusers_conventions(pipe):
    g = lambda: torch.Generator().manual_seed(0)
    images = pipe(prompt=PROMPTS, num_inference_steps=4, generator=g(), output_type="np").images
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    pil = pipe(prompt=PROMPTS, num_inference_steps=4, generator=g(), output_type="pil").images
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) for im in pil)
    np.testing.assert_allclose(np.asarray(pil[0]) / 255, images[0], atol=1 / 255 + 1e-6)


def test_same_seed_gives_bit_identical_images(pipe):
    a, b, c = (pipe(prompt=PROMPTS, num_inference_steps=6, generator=torch.Generator().manual_seed(s),
                    output_type="np").images for s in (3, 3, 4))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_callback_on_step_end_sees_and_can_change_latents(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else {}

    images = pipe(prompt=PROMPTS[:1], num_inference_steps=3, callback_on_step_end=callback, output_type="np").images
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(images, 0.5)  # zero latents decode to mid-grey


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    again = ShapesPipeline.from_pretrained(tmp_path, local_files_only=True)
    kw = dict(prompt=PROMPTS, num_inference_steps=3, output_type="np")
    a = pipe(generator=torch.Generator().manual_seed(1), **kw).images
    b = again(generator=torch.Generator().manual_seed(1), **kw).images
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=["a big red dragon on the left on a blue background"]), r"unknown word.*'dragon'.*knows"),
    (dict(prompt=PROMPTS, height=64), r"32x32.*height=64"),
    (dict(prompt=PROMPTS, width=16), r"32x32.*width=16"),
    (dict(prompt=PROMPTS, num_inference_steps=0), r"positive integer, got 0"),
    (dict(prompt=PROMPTS, num_inference_steps=-3), r"positive integer, got -3"),
    (dict(prompt=PROMPTS, output_type="jpg"), r"output_type"),
    (dict(), r"pass a prompt"),
])
def test_bad_input_is_a_clear_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_pack_and_unpack_are_inverse():
    x = torch.randn(3, 3, 32, 32)
    assert pack(x).shape == (3, 64, 48)
    assert torch.equal(unpack(pack(x)), x)


def test_training_smoke_run_saves_logs_and_resumes(tmp_path):
    tiny = ["--out", str(tmp_path), "--batch-size", "4", "--width", "32", "--heads", "2", "--double", "1",
            "--single", "1", "--warmup", "2", "--log-every", "1", "--save-every", "2", "--device", "cpu"]
    train.main(tiny + ["--steps", "2"])
    assert (tmp_path / "model_index.json").exists() and (tmp_path / "checkpoint.pt").exists()
    train.main(tiny + ["--steps", "3"])  # resumes at step 2
    log = [line for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [eval(line)["step"] for line in log] == [1, 2, 3]
    assert "massive" in log[1]
    p = load_shapes_pipeline(tmp_path)
    assert p(prompt=PROMPTS[:1], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_random_components_build():
    comps = build_components(width=32, heads=2, double=1, single=1)
    assert comps["transformer"].config.num_layers == 1
