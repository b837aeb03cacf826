"""The book's page list, read from _toc.yml: one place for the browser check and the notebook-convention tests."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """The root and every `file:` entry of _toc.yml, in order, without extension."""
    toc = yaml.safe_load(Path(toc_path).read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key, value in node.items():
                if key != "root":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [str(Path(f).with_suffix("")) if f.endswith((".md", ".ipynb")) else f for f in files]


def chapter_paths(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """The pages of _toc.yml as repository paths with their extension (.ipynb or .md), in reading order."""
    out = []
    for f in toc_files(toc_path):
        for ext in (".ipynb", ".md"):
            if (ROOT / (f + ext)).exists():
                out.append(f + ext)
                break
    return out


def toc_parts(toc_path: Path = ROOT / "_toc.yml") -> list[dict]:
    """The parts of _toc.yml in order: {"caption", "numbered", "files"} (files without extension, as toc_files)."""
    toc = yaml.safe_load(Path(toc_path).read_text())
    parts = []
    for part in toc.get("parts", []):
        files = []
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files += [s["file"] for s in chapter.get("sections", []) if "file" in s]
        parts.append({"caption": part.get("caption", ""), "numbered": bool(part.get("numbered", False)),
                      "files": [str(Path(f).with_suffix("")) if f.endswith((".md", ".ipynb")) else f for f in files]})
    return parts


def chapter_numbers(toc_path: Path = ROOT / "_toc.yml") -> dict[str, int]:
    """The number the book gives each chapter of a numbered part (one count across parts, as Jupyter Book's
    multitoc numbering does): {"notebooks/03_clustering": 3, ...}."""
    numbers, n = {}, 0
    for part in toc_parts(toc_path):
        if part["numbered"]:
            for f in part["files"]:
                n += 1
                numbers[f] = n
    return numbers
