"""Helpers for the executable book *Few Channels Draw the Whole Picture*: load a DiT pipeline, record and intervene
on its residual stream, and select massive channels.

    pipe = helpers.load_pipeline("shapes")
    with helpers.record(pipe) as rec:
        pipe(prompt=["a big red circle on the left on a blue background"])
    idx = helpers.top_k(helpers.channel_statistic(rec), 4)
    with helpers.intervene(pipe, channels=idx, mode="zero"):
        pipe(prompt=["a big red circle on the left on a blue background"])
"""
from .activations import Intervention, Recording, intervene, record, stats_nbytes
from .channels import (bottom_k, channel_frequency, channel_statistic, persistence, random_k, top_k,
                       top_to_median)
from .models import ARCHITECTURES, MODELS, Architecture, hidden_width, load_pipeline, residual_blocks

__all__ = [
    "ARCHITECTURES", "MODELS", "Architecture", "Intervention", "Recording", "bottom_k", "channel_frequency",
    "channel_statistic", "hidden_width", "intervene", "load_pipeline", "persistence", "random_k", "record",
    "residual_blocks", "shapes", "stats_nbytes", "top_k", "top_to_median",
]


def __getattr__(name):
    """Submodules (``helpers.shapes``, which needs transformers, ``helpers.transport``, ...) load on first use, so
    that ``import helpers`` stays light."""
    import importlib
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
