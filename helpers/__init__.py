"""Helpers for the executable book *Few Channels Draw the Whole Picture*: load a DiT pipeline (``load_pipeline``),
record and change its residual stream while it runs (``record``, ``intervene``), transport activations between
trajectories (``transport``), invert a flow (``inversion``). Import floors (each imports only from those below):
``seeding``, ``masks``, ``stats``, ``figures``, ``shapes`` | ``models`` | ``hooks`` | ``chapters`` (generated from the
chapters' ``#@save`` cells) | ``transport``, ``inversion``.
"""
from . import chapters, figures, inversion, masks, shapes, stats, transport
from .chapters import bottom_k, channel_statistic, random_k, top_k, top_to_median
from .hooks import Intervention, Recording, Site, intervene, record, stats_nbytes
from .models import (ARCHITECTURES, MODELS, Architecture, Model, block_labels, conditional_rows, hidden_width,
                     load_pipeline, residual_blocks, sampling_settings)
from .seeding import generate, generators

__all__ = [
    "ARCHITECTURES", "MODELS", "Architecture", "Intervention", "Model", "Recording", "Site", "block_labels",
    "bottom_k", "channel_statistic", "chapters", "conditional_rows", "figures", "generate", "generators",
    "hidden_width", "intervene", "inversion", "load_pipeline", "masks", "random_k", "record", "residual_blocks",
    "sampling_settings", "shapes", "stats", "stats_nbytes", "top_k", "top_to_median", "transport",
]
