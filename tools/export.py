"""Collect the functions the chapters teach into ``helpers/chapters.py``, d2l-style.

A chapter defines a function in the cell that teaches it and marks the cell with ``#@save`` (on any line, usually
the ``def``). This tool copies every marked cell, in reading order (``_toc.yml``), into one generated module, imports
first, so later chapters and the helpers import it from there: the notebook stays the one source.

    python tools/export.py           # write helpers/chapters.py
    python tools/export.py --check   # exit 1 if helpers/chapters.py is stale (tests/test_export.py runs this)

A saved cell holds only imports, functions, classes and UPPER_CASE constants (anything else would run on import).
It may import third-party packages and the helpers modules below the export (models, hooks, masks, stats, figures);
``from helpers.X import y`` becomes ``from .X import y``.
"""
from __future__ import annotations

import argparse
import ast
import re
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toc import chapter_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "helpers" / "chapters.py"
MARK = re.compile(r"\s*#\s*@save\b")  # ruff format writes "#@save" as "# @save"
ALLOWED_HELPERS = {"helpers.models", "helpers.hooks", "helpers.masks", "helpers.stats", "helpers.figures",
                   "helpers.shapes", "helpers.shapes.world"}
HEADER = '''"""The functions the chapters teach, exported from their ``#@save`` cells by ``tools/export.py``.

GENERATED: do not edit. Change the chapter's cell and run ``python tools/export.py``; tests/test_export.py fails when
this file is stale.
"""
'''


def saved_cells(notebook: Path) -> list[str]:
    """The sources of the notebook's code cells marked ``#@save``, without the marks."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    out = []
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and MARK.search(source):
            out.append("\n".join(MARK.sub("", line).rstrip() for line in source.splitlines()).strip("\n"))
    return out


def _check_cell(tree: ast.Module, where: str) -> None:
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring or comment string
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if all(isinstance(t, ast.Name) and t.id.isupper() for t in targets):
                continue
        raise ValueError(f"{where}: a #@save cell may hold only imports, functions, classes and UPPER_CASE "
                         f"constants; line {node.lineno} is {ast.unparse(node)[:60]!r}")


def _import_line(node: ast.Import | ast.ImportFrom, where: str) -> str | None:
    """The import as the generated module writes it (None: it is the export itself)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "helpers" or alias.name.startswith("helpers."):
                raise ValueError(f"{where}: write `from helpers.<module> import name` in a #@save cell, not "
                                 f"`import {alias.name}`")
        return ast.unparse(node)
    module = node.module or ""
    if module == "helpers.chapters":
        return None
    if module == "helpers" or module.startswith("helpers."):
        if module not in ALLOWED_HELPERS:
            raise ValueError(f"{where}: a #@save cell may import from {sorted(ALLOWED_HELPERS)}, not {module!r} "
                             "(the export sits below helpers.transport and helpers.inversion)")
        node = ast.ImportFrom(module=module.removeprefix("helpers."), names=node.names, level=1)
    return ast.unparse(node)


def build(notebooks: list[Path]) -> str:
    imports: list[str] = ["from __future__ import annotations"]
    bodies: list[str] = []
    for notebook in notebooks:
        cells = saved_cells(notebook)
        if not cells:
            continue
        parts = []
        for i, source in enumerate(cells):
            where = f"{notebook.name}, saved cell {i + 1}"
            tree = ast.parse(source)
            _check_cell(tree, where)
            lines = source.splitlines()
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line = _import_line(node, where)
                    if line and line not in imports:
                        imports.append(line)
                    for n in range(node.lineno - 1, node.end_lineno):
                        lines[n] = None
            code = "\n".join(line for line in lines if line is not None).strip("\n")
            if code:
                parts.append(code)
        bodies.append(f"# {'-' * 40} {notebook.stem}\n\n" + "\n\n\n".join(parts))
    stdlib_first = sorted(imports[1:], key=lambda s: (s.startswith("from ."), s.split()[1]))
    return HEADER + "\n".join(imports[:1] + stdlib_first) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if helpers/chapters.py is stale")
    args = parser.parse_args(argv)
    text = build([ROOT / p for p in chapter_paths() if p.endswith(".ipynb")])
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run `python tools/export.py`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
