"""Fixtures shared by the helpers' tests."""
import pytest
import torch

from helpers.shapes import ShapesPipeline, build_components


def build_tiny_pipe(**overrides) -> ShapesPipeline:
    """A tiny, randomly initialised shapes pipeline (seed 0 every time): fast, and enough to test the machinery.
    ``overrides`` go to ``build_components`` (e.g. ``single=2, text_width=32, text_layers=1``)."""
    torch.manual_seed(0)
    pipe = ShapesPipeline(**build_components(**{"width": 32, "heads": 2, "double": 1, "single": 1, **overrides}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def make_tiny_pipe():
    """``build_tiny_pipe``, for module fixtures that need another small configuration."""
    return build_tiny_pipe


@pytest.fixture(scope="module")
def tiny_pipe():
    """The default tiny pipeline (one double- and one single-stream block, width 32)."""
    return build_tiny_pipe()
