"""Chapters that reuse another chapter's choice state it as a constant; their stored outputs must agree with the
chapter that made the choice (so a retrained model cannot leave one chapter behind)."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
GLUE = "application/papermill.record/text/plain"


def glued(name: str) -> dict[str, str]:
    out = {}
    for cell in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            data = o.get("data", {})
            text = data.get(GLUE) or data.get("text/plain")
            if meta and text is not None:
                out[meta["name"]] = "".join(text).strip("'\"")
    return out


@pytest.mark.parametrize("chapter, key", [("05_subject_transport", "ch5-k"), ("06_beyond", "ch6-k"),
                                          ("A1_training", "a1-k")])
def test_transport_chapters_use_chapter_4s_k(chapter, key):
    assert glued(chapter)[key] == glued("04_prompt_transport")["ch4-k"], (
        f"{chapter} uses k = {glued(chapter)[key]} but chapter 4 chose {glued('04_prompt_transport')['ch4-k']}: "
        "update the chapter's K constant and re-execute it")


def test_subject_transport_takes_its_mask_where_chapter_3_reports():
    assert glued("05_subject_transport")["ch5-mask-cell"] == glued("03_clustering")["ch3-cell"]
