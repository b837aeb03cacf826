"""helpers.memory: parameter counts from the published configs (meta device, no download), the offload arithmetic,
and the generated tables of book/real_models.md, which must equal what the code computes."""
import inspect
from pathlib import Path

import diffusers
import pytest
import torch

from helpers import memory
from helpers.memory import COMPONENTS, GIB, PUBLISHED_BYTES, Size, component_sizes, fit, peak_gib
from helpers.models import ARCHITECTURES, MODELS

PAGE = Path(__file__).resolve().parents[1] / "book" / "real_models.md"


def test_committed_page_equals_the_computed_tables():
    text = PAGE.read_text(encoding="utf-8")
    blocks = memory.generated_blocks(text)
    assert set(blocks) == set(memory.SECTIONS), "book/real_models.md must hold every generated block once"
    assert memory.render(text) == text, ("book/real_models.md differs from what helpers.memory computes: run "
                                         "`python -m helpers.memory --write book/real_models.md`")


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
    signature = inspect.signature(getattr(diffusers, MODELS[model].pipeline).__init__)
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


@pytest.mark.parametrize("model", sorted(COMPONENTS))
def test_transformers_are_in_the_architecture_table(model):
    transformer = component_sizes(model)["transformer"]
    cls = next(c.cls for c in COMPONENTS[model] if c.attribute == "transformer").rsplit(".", 1)[1]
    assert model in ARCHITECTURES[cls].models
    assert transformer.blocks > 0 and transformer.width > 0
    assert transformer.params > max(s.params for a, s in component_sizes(model).items() if a == "vae")


def _size(billions: float, leaf: float = 0.01) -> Size:
    n = int(billions * 1e9)
    return Size(params=n, linear_weights=n, buffers=0, persistent_buffers=0, largest_leaf=int(leaf * 1e9))


def test_fit_picks_the_least_offloading_that_fits():
    sizes = {"transformer": _size(6.0), "text_encoder": _size(2.0), "vae": _size(0.1)}  # 12, 4, 0.2 GB in bf16
    weights = sum(s.nbytes() for s in sizes.values()) / GIB
    assert peak_gib(sizes, "GPU", margin_gib=1.0) == pytest.approx(weights + 1.0)
    assert peak_gib(sizes, "model offload", margin_gib=1.0) == pytest.approx(12e9 / GIB + 1.0)
    assert fit(sizes, 40.0, margin_gib=1.0) == "GPU"
    assert fit(sizes, 14.0, margin_gib=1.0) == "model offload"
    assert fit(sizes, 5.0, margin_gib=1.0) == "sequential offload"
    assert fit(sizes, 0.5, margin_gib=1.0) == "does not fit"
    assert fit(sizes, 8.0, fmt="4-bit", margin_gib=1.0) == "GPU"  # 8.1e9 x 0.5625 bytes = 4.3 GiB + 1


def test_quantised_formats_shrink_only_linear_weights():
    size = Size(params=100, linear_weights=80, buffers=10, persistent_buffers=10, largest_leaf=10)
    assert size.nbytes("bf16") == 220
    assert size.nbytes("fp8") == 80 * 1 + 30 * 2
    with pytest.raises(ValueError, match="unknown weight format"):
        size.nbytes("int3")
    with pytest.raises(ValueError, match="mode must be one of"):
        peak_gib({"vae": size}, "everything")


def test_render_replaces_only_known_blocks():
    text = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb\n"
    assert memory.render(text, {"x": lambda: "new"}) == "a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb\n"
    with pytest.raises(KeyError, match="unknown generated block 'x'"):
        memory.render(text, {})
