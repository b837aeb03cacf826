"""Three small Sphinx fixes for the book, loaded from _config.yml (`sphinx.local_extensions`).

1. Author-year labels on the references page. The text cites author-year ({cite:t} -> "Turri et al. [2026]"), so the
   bibliography is labelled the same way ("Turri et al., 2026") and sorted by author, year and title, instead of
   pybtex's alpha labels ("[TBS+26]"). Registered as the pybtex style ``authoryear`` (``bibtex_default_style``).
2. No duplicated inline scripts. Sphinx 7.4 adds a body-only script registered after the builder started (sphinx-thebe's
   ``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector) twice: once when it is registered (filename None) and
   again in ``prepare_writing`` (filename ''), so every page logged "Identifier 'THEBE_JS_URL' has already been
   declared". Before writing, the first copies are dropped; ``prepare_writing`` puts each back exactly once.
3. One chapter number. A chapter notebook's title carries its number ("# 3. Spatial clustering"), so that it reads
   right on Colab; the book numbers chapters itself (_toc.yml, ``numbered: true``), so the notebook's own "3. " is
   dropped from the page title in the book ("3. Spatial clustering", not "3. 3. Spatial clustering").
   tests/test_notebook_conventions.py checks that the two numbers agree.
"""
import re
from collections import Counter

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle
from sphinx.transforms import SphinxTransform


def _last_names(person) -> str:
    return str(Text.from_latex(" ".join(person.prelast_names + person.last_names)))


class AuthorYearLabelStyle(BaseLabelStyle):
    """'Sun et al., 2024', 'Peebles and Xie, 2023', 'Black Forest Labs, 2024'; 'a', 'b' suffixes on clashes."""

    def format_label(self, entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [_last_names(p) for p in persons]
        if not names:
            who = entry.fields.get("key") or entry.fields.get("organization") or entry.key
        elif len(names) == 1:
            who = names[0]
        elif len(names) == 2:
            who = f"{names[0]} and {names[1]}"
        else:
            who = f"{names[0]} et al."
        year = entry.fields.get("year", "n.d.")
        return f"{who}, {year}"

    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        count, seen = Counter(labels), Counter()
        for label in labels:
            if count[label] == 1:
                yield label
            else:
                yield label + chr(ord("a") + seen[label])
                seen[label] += 1


class AuthorYearSortingStyle(BaseSortingStyle):
    """By the label's names (braces and accents as printed), then year, then title."""

    def sorting_key(self, entry):
        who = AuthorYearLabelStyle().format_label(entry).rsplit(", ", 1)[0]
        return who.lower(), entry.fields.get("year", ""), str(Text.from_latex(entry.fields.get("title", ""))).lower()


class AuthorYearStyle(PlainStyle):
    """pybtex's plain entry format, sorted by author, year and title, with author-year labels."""

    default_label_style = "authoryear"
    default_sorting_style = "authoryear"


register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
register_plugin("pybtex.style.sorting", "authoryear", AuthorYearSortingStyle)
register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


def _drop_early_inline_scripts(app, env):
    builder = app.builder
    if hasattr(builder, "_js_files") and any(js.filename is None for js in builder._js_files):
        builder._js_files[:] = [js for js in builder._js_files if js.filename is not None]


class DropTitleNumber(SphinxTransform):
    """'3. Spatial clustering' -> 'Spatial clustering' in the title of a page under notebooks/."""

    default_priority = 500
    NUMBER = re.compile(r"^\d+\.\s+")

    def apply(self, **kwargs):
        if not self.env.docname.startswith("notebooks/"):
            return
        section = next(iter(self.document.findall(nodes.section)), None)
        title = section.next_node(nodes.title) if section is not None else None
        text = next(iter(title.findall(nodes.Text)), None) if title is not None else None
        if text is not None and self.NUMBER.match(text.astext()):
            text.parent.replace(text, nodes.Text(self.NUMBER.sub("", text.astext(), count=1)))


def setup(app):
    app.add_transform(DropTitleNumber)
    app.connect("env-updated", _drop_early_inline_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
