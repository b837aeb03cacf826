"""Fixtures shared by the helpers' tests."""
import pytest
import torch

from helpers.shapes import ShapesPipeline, build_components


@pytest.fixture(scope="module")
def tiny_pipe():
    """A tiny, randomly initialised shapes pipeline (same seed every time): fast, and enough to test the machinery."""
    torch.manual_seed(0)
    pipe = ShapesPipeline(**build_components(width=32, heads=2, double=1, single=1))
    pipe.set_progress_bar_config(disable=True)
    return pipe
