"""tools/memory.py: parameter counts from the published configs (meta device, no download), the memory each model
needs on the GPU and in RAM, and what fits where. The numbers in helpers.models.MODELS and the generated tables of
book/real_models.md must equal what the tool computes, and helpers.models.memory_plan (what load_pipeline checks
before downloading) must decide by exactly the needs the page shows."""
import inspect
import re
import sys
from pathlib import Path

import diffusers
import pytest
import torch

from helpers.models import ARCHITECTURES, MODELS, memory_plan
from helpers.shapes import ShapesPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import memory  # noqa: E402  (tools/memory.py: a command-line tool, not part of the helpers package)
from memory import COMPONENTS, GIB, PUBLISHED_BYTES, Size, component_sizes, need  # noqa: E402

PAGE = ROOT / "book" / "real_models.md"
T4 = (15360 / 1024, 12.7e9 / GIB)  # a free Colab T4: 15 GiB of GPU memory (nvidia-smi), 12.7 GB of RAM
T4_TORCH = (14.74, 12.7e9 / GIB)  # the same T4 as torch.cuda.get_device_properties reports it


def test_committed_page_equals_the_computed_tables():
    text = PAGE.read_text(encoding="utf-8")
    blocks = memory.generated_blocks(text)
    assert set(blocks) == set(memory.SECTIONS), "book/real_models.md must hold every generated block once"
    assert memory.render(text) == text, ("book/real_models.md differs from what tools/memory.py computes: run "
                                         "`python tools/memory.py --write book/real_models.md`")


def test_models_hold_the_computed_numbers():
    computed = memory.models_numbers()
    typed = {name: (m.weights_gib, m.largest_gib) for name, m in MODELS.items()}
    assert typed == computed, ("helpers.models.MODELS differs from tools/memory.py: copy the weights_gib and "
                               "largest_gib that `python tools/memory.py --models` prints")


def test_the_page_fits_a_phone():
    """Tables of at most 5 short columns; code lines of at most 88 characters (as the chapters')."""
    text = PAGE.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("|"):
            visible = re.sub(r"\]\([^)]*\)|[`*\[]", "", line)
            assert line.count("|") <= 6 and len(visible) <= 64, line
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        assert max(len(line) for line in block.splitlines()) <= 88, block


def test_every_model_has_a_component_table():
    assert set(COMPONENTS) == set(MODELS)


@pytest.mark.parametrize("key", sorted(PUBLISHED_BYTES), ids="-".join)
def test_counts_match_the_published_checkpoint_sizes(key):
    """A checkpoint file holds the parameters and the persistent buffers; the hub rounds sizes to 3 digits."""
    model, attribute = key
    published, per_value = PUBLISHED_BYTES[key]
    size = component_sizes(model)[attribute]
    counted = (size.params + size.persistent_buffers) * per_value
    assert counted == pytest.approx(published, rel=0.01), f"{model} {attribute}: {counted:.4g} vs {published:.4g}"


@pytest.mark.parametrize("model", sorted(COMPONENTS))
def test_components_are_the_classes_the_pipeline_loads(model):
    pipeline = ShapesPipeline if model == "shapes" else getattr(diffusers, MODELS[model].pipeline)
    signature = inspect.signature(pipeline.__init__)
    listed = {c.attribute: c for c in COMPONENTS[model]}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        required_module = (inspect.isclass(annotation) and issubclass(annotation, torch.nn.Module)
                           and parameter.default is inspect.Parameter.empty)
        if required_module:
            assert name in listed, f"{model}: the pipeline needs {name} ({annotation.__name__}), not counted"
            assert issubclass(memory._resolve(listed[name].cls), annotation), f"{model} {name}"
    unknown = set(listed) - set(signature.parameters)
    assert not unknown, f"{model}: the pipeline has no components {unknown}"
    assert set(MODELS[model].quantize) <= set(listed), f"{model}: quantises components it does not load"


@pytest.mark.parametrize("model", sorted(COMPONENTS))
def test_transformers_are_in_the_architecture_table(model):
    transformer = component_sizes(model)["transformer"]
    cls = next(c.cls for c in COMPONENTS[model] if c.attribute == "transformer").rsplit(".", 1)[1]
    assert cls in ARCHITECTURES
    assert transformer.blocks > 0 and transformer.width > 0


def test_bundled_model_is_counted_from_its_own_files():
    pipe = ShapesPipeline.from_pretrained(memory.MODEL_DIR, local_files_only=True)
    sizes = component_sizes("shapes")
    assert sizes["transformer"].params == sum(p.numel() for p in pipe.transformer.parameters())
    assert sizes["text_encoder"].params == sum(p.numel() for p in pipe.text_encoder.parameters())


def test_four_bit_flux_quantises_the_linear_layers_the_libraries_convert():
    bf16, nf4 = component_sizes("flux.1-schnell"), component_sizes("flux.1-schnell-4bit")
    assert bf16 == nf4  # one checkpoint; MODELS says which components load in 4-bit
    t5 = nf4["text_encoder_2"]
    wo = 24 * 4096 * 10240  # T5's feed-forward output layers stay unquantised (transformers' _keep_in_fp32_modules)
    linear = sum(m.weight.numel() for m in memory.T5_COMPONENT.build().modules() if isinstance(m, torch.nn.Linear))
    assert t5.quantisable == linear - wo
    four_bit = need("flux.1-schnell-4bit")
    assert four_bit.weights < need("flux.1-schnell").weights / 2.5 and four_bit.offload is None
    assert nf4["transformer"].nbytes("4-bit") / GIB == pytest.approx(four_bit.largest, abs=0.005)


def test_nbytes_converts_only_the_quantisable_weights():
    size = Size(params=100, quantisable=80, buffers=10, persistent_buffers=10)
    assert size.nbytes("bf16") == 220
    assert size.nbytes("4-bit") == 80 * 0.5625 + 30 * 2
    with pytest.raises(ValueError, match="unknown weight format"):
        size.nbytes("int3")


def test_on_a_free_colab_t4_sana_and_four_bit_flux_fit_and_bf16_flux_names_what_does():
    for gpu, ram in (T4, T4_TORCH):
        assert memory_plan("sana-1.5", gpu, ram) == "gpu"
        assert memory_plan("flux.1-schnell-4bit", gpu, ram) == "gpu"
        assert memory_plan("shapes", gpu, ram) == "gpu"
        with pytest.raises(ValueError) as error:
            memory_plan("flux.1-schnell", gpu, ram)
        message = str(error.value)
        assert "34.4 GiB of GPU memory (25.1 with model offload) and 33.4 GiB of RAM" in message
        assert 'Use MODEL = "flux.1-schnell-4bit": the same model with 4-bit weights' in message
        assert 'Models that fit here: "sana-1.5", "flux.1-schnell-4bit";' in message
        assert "check_memory=False" in message
    with pytest.raises(ValueError, match="16.9 GiB of RAM; this machine has 15.0 GiB of GPU memory and 11.8 GiB"):
        memory_plan("flux.2-klein", *T4)  # would fit the GPU with model offload, but not the RAM


def test_memory_plan_offloads_what_fits_only_that_way_and_refuses_without_a_gpu():
    assert memory_plan("flux.2-klein", 15.0, 32.0) == "offload"
    assert memory_plan("flux.1-dev", 40.0, 64.0) == "gpu"
    assert memory_plan("shapes", 0.0, 4.0) == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU.*Models that fit here: none; the bundled \"shapes\""):
        memory_plan("sana-1.5", 0.0, 64.0)
    with pytest.raises(ValueError, match="unknown model name 'flux'"):
        memory_plan("flux", 15.0, 12.0)


@pytest.mark.parametrize("model", [n for n, m in MODELS.items() if m.hub_id])
def test_memory_plan_decides_by_the_needs_the_page_shows(model):
    """Just enough GPU memory and RAM as the page says: it fits; a little less of either: it does not (or only with
    model offload, by the page's offload column)."""
    n = need(model)
    assert memory_plan(model, n.gpu, n.ram) == "gpu"
    with pytest.raises(ValueError):
        memory_plan(model, n.gpu, n.ram - 0.02)
    if n.offload is None:
        with pytest.raises(ValueError):
            memory_plan(model, n.gpu - 0.02, n.ram)
    else:
        assert memory_plan(model, n.offload, n.ram) == "offload"
        with pytest.raises(ValueError):
            memory_plan(model, n.offload - 0.02, n.ram)


def test_render_replaces_only_known_blocks():
    text = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb\n"
    assert memory.render(text, {"x": lambda: "new"}) == "a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb\n"
    with pytest.raises(KeyError, match="unknown generated block 'x'"):
        memory.render(text, {})
