"""Open the built book in headless Chromium and check every page of _toc.yml as a reader would see it.

    python tools/check_book.py [_build/html]                      # every page of _toc.yml (and index)
    python tools/check_book.py _build/html --pages notebooks/02_disruption 04_prompt_transport
    python tools/check_book.py DIR --toc other/_toc.yml          # another book (e.g. a scratch book)
    python tools/check_book.py _build/html --screenshots shots/  # full-page PNGs at both widths, to look at

Each page is loaded at 1280x900 and then at 390x844 (a phone). A page fails, with the page, the element and the
numbers named, when

- it is missing, or one of the book's own images did not load (naturalWidth 0);
- it logs a JavaScript error: an uncaught exception, or console.error (a resource of the book itself that fails to
  load counts; external resources are blocked, since the check runs offline, and are not judged);
- a notebook page shows an error output, or has no Colab launch link to its notebook;
- a solution is visible before it is opened: text or an image of a sphinx-exercise solution (other than its title)
  or of a cell tagged `solution` is rendered on load. Every closed solution must also show content once opened;
- at 1280 px, a code or output block scrolls sideways: scrollWidth > clientWidth + 1 of a ``pre``, ``div.output``
  or ``div.highlight`` (closed solutions and hidden cells are opened first, so their blocks are checked too);
- a raster image in the page's content is shown wider than its natural width / 1.5, i.e. it is blurry on a HiDPI
  screen (save figures at >= 1.5x the size they are shown at: helpers.figures.setup() gives 2x); or, at 1280 px, a
  figure is shown narrower than the width it was made for (it is too wide for the page, so its fonts fall below
  8 pt and its 32x32 images below 96 px);
- at 390 px, the page itself scrolls sideways: document.scrollingElement.scrollWidth > innerWidth.

The browser is the system Chromium ($CHROMIUM, default /usr/bin/chromium) with a fresh profile; Playwright never
downloads one. Exit status 1 when any page fails, 2 when the book or the browser is missing.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toc import toc_files

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SCALE = 1.5  # an image may be shown at most at natural width / SCALE

# Shared JavaScript: a short description of an element, and whether text/images inside a root are rendered.
LIB_JS = r"""
window.__check = {
  describe(el) {
    const cells = [...document.querySelectorAll('div.cell')];
    const cell = el.closest('div.cell');
    const part = el.closest('.cell_output') ? 'output' : (el.closest('.cell_input') ? 'input' : null);
    let where = cell ? `code cell ${cells.indexOf(cell) + 1} ${part || ''}`.trim() : null;
    const sol = el.closest('.solution');
    if (sol) where = (where ? where + ' in ' : '') + 'solution ' + (sol.id || '');
    if (!where) {
      const sec = el.closest('section[id]');
      where = sec ? `section #${sec.id}` : 'page';
    }
    const cls = [...el.classList].slice(0, 2).map(c => '.' + c).join('');
    return `${where} (${el.tagName.toLowerCase()}${cls})`;
  },
  excerpt(text, n = 60) {
    const t = (text || '').replace(/\s+/g, ' ').trim();
    return t.length > n ? t.slice(0, n) + '...' : t;
  },
  clipped(el, rect, root) {
    // true when an ancestor (below root) that clips its overflow does not intersect rect
    for (let a = el.parentElement; a && a !== root.parentElement; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
        const r = a.getBoundingClientRect();
        if (rect.right <= r.left || rect.left >= r.right || rect.bottom <= r.top || rect.top >= r.bottom
            || r.width < 1 || r.height < 1) return true;
      }
    }
    return false;
  },
  shown(root, excludeSel) {
    // the text and images of root that a reader can see (rendered, not hidden, not clipped away)
    const skip = el => excludeSel && el.closest(excludeSel) && root.contains(el.closest(excludeSel));
    const out = [];
    const w = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = w.nextNode(); n; n = w.nextNode()) {
      const t = n.textContent.trim();
      const el = n.parentElement;
      if (!t || !el || skip(el)) continue;
      if (!el.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
      const range = document.createRange();
      range.selectNodeContents(n);
      const rects = [...range.getClientRects()].filter(q => q.width > 0 && q.height > 0);
      if (rects.length && !rects.every(q => this.clipped(el, q, root))) out.push(t);
    }
    for (const img of root.querySelectorAll('img, svg, canvas')) {
      if (skip(img) || img.closest('button')) continue;
      const q = img.getBoundingClientRect();
      if (q.width > 0 && q.height > 0 && img.checkVisibility({opacityProperty: true, visibilityProperty: true})
          && !this.clipped(img, q, root)) out.push(`[${img.tagName.toLowerCase()} ${img.getAttribute('src') || ''}]`);
    }
    return out;
  },
};
"""

IMAGES_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 10000); })));
  const local = imgs.filter(i => i.src.startsWith(location.origin) || i.src.startsWith('data:'));
  return {local: local.length, external: imgs.length - local.length,
          broken: local.filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src'))};
}"""

# Solutions: sphinx-exercise solution admonitions (all but their title) and cells tagged `solution` outside them.
SOLUTIONS_JS = """() => {
  const C = window.__check, out = [];
  for (const sol of document.querySelectorAll('div.solution')) {
    const shown = C.shown(sol, '.admonition-title, button');
    out.push({what: `solution ${sol.id || ''}`.trim() + ` ("${C.excerpt(sol.querySelector('.admonition-title')?.innerText, 50)}")`,
              shown: C.excerpt(shown.join(' '), 80), count: shown.length});
  }
  for (const cell of document.querySelectorAll('div.cell.tag_solution')) {
    if (cell.closest('div.solution')) continue;
    const shown = C.shown(cell, 'summary, button');
    out.push({what: C.describe(cell) + ' tagged solution outside a {solution-start} block',
              shown: C.excerpt(shown.join(' '), 80), count: shown.length});
  }
  return out;
}"""

# Open everything a reader can open: dropdown admonitions (sphinx-togglebutton), <details> (hide-input etc.).
OPEN_ALL_JS = """() => {
  let n = 0;
  document.querySelectorAll('.toggle-hidden').forEach(el => { el.classList.remove('toggle-hidden'); n++; });
  document.querySelectorAll('.toggle-button-hidden').forEach(el => el.classList.remove('toggle-button-hidden'));
  document.querySelectorAll('details:not([open])').forEach(d => { d.open = true; n++; });
  return n;
}"""

OPENED_SOLUTIONS_JS = """() => {
  const C = window.__check;
  return [...document.querySelectorAll('div.solution')]
    .filter(sol => C.shown(sol, '.admonition-title, button').length === 0)
    .map(sol => `solution ${sol.id || ''}`.trim());
}"""

BLOCKS_JS = """() => {
  const C = window.__check, out = [];
  let checked = 0;
  for (const el of document.querySelectorAll('article pre, article div.output, article div.highlight')) {
    if (el.clientWidth === 0 || !el.checkVisibility()) continue;
    checked++;
    if (el.scrollWidth > el.clientWidth + 1) {
      const lines = (el.innerText || '').split('\\n');
      const longest = lines.reduce((a, b) => b.length > a.length ? b : a, '');
      out.push({where: C.describe(el), scroll: el.scrollWidth, client: el.clientWidth,
                chars: longest.length, line: C.excerpt(longest, 70)});
    }
  }
  return {checked, out};
}"""

SCALE_JS = """(scale) => {
  const C = window.__check, out = [];
  let checked = 0;
  for (const img of document.querySelectorAll('article img')) {
    const src = img.currentSrc || img.src;
    const local = src.startsWith(location.origin) || src.startsWith('data:');
    const vector = /\\.svg([?#]|$)/i.test(src) || src.startsWith('data:image/svg');
    const w = img.getBoundingClientRect().width;
    if (!local || vector || !img.naturalWidth || w === 0 || !img.checkVisibility()) continue;
    checked++;
    const meant = parseFloat(img.style.width) || parseFloat(img.getAttribute('width')) || 0;
    if (w > img.naturalWidth / scale + 0.5 || (meant && w < 0.97 * meant)) {
      out.push({where: C.describe(img), src: img.getAttribute('src').split('/').pop().slice(0, 24),
                natural: img.naturalWidth, naturalH: img.naturalHeight, shown: Math.round(w),
                limit: Math.floor(img.naturalWidth / scale), meant: Math.round(meant)});
    }
  }
  return {checked, out};
}"""

PAGE_WIDTH_JS = """() => {
  const C = window.__check, vw = window.innerWidth;
  const width = document.scrollingElement.scrollWidth;
  if (width <= vw) return {width, vw, culprits: []};
  // the outermost elements that stick out past the viewport and are not inside a scrolling/clipping box
  const culprits = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || (r.right <= vw + 1 && r.left >= -1)) continue;
    let inside = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX !== 'visible') { inside = true; break; }
      const ra = a.getBoundingClientRect();
      if (ra.right > vw + 1 || ra.left < -1) { inside = true; break; }  // an ancestor already sticks out
    }
    if (getComputedStyle(el).position === 'fixed') continue;
    if (!inside) culprits.push(`${C.describe(el)} ${Math.round(r.width)} px wide, right edge at ${Math.round(r.right)} px`
                               + (el.innerText ? `: "${C.excerpt(el.innerText, 50)}"` : ''));
    if (culprits.length >= 3) break;
  }
  return {width, vw, culprits};
}"""


def serve(directory):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *args: None  # the browser may drop connections it no longer needs
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def select_pages(all_pages: list[str], wanted: list[str] | None) -> list[str]:
    """The pages named on the command line (with or without folder or extension), in book order."""
    if not wanted:
        return all_pages
    keys = {Path(w).with_suffix("").as_posix().removeprefix("./") for w in wanted}
    chosen = [p for p in all_pages if p in keys or Path(p).name in keys]
    unknown = sorted(k for k in keys if not any(p == k or Path(p).name == k for p in all_pages))
    if unknown:
        raise SystemExit(f"not pages of the book: {unknown}; pages: {all_pages}")
    return chosen


class Page:
    """One page's checks; failures are collected as 'page [width]: message'."""

    def __init__(self, page, name, failures, stats):
        self.page, self.name, self.failures, self.stats = page, name, failures, stats

    def fail(self, message, width=None):
        self.failures.append(f"{self.name}{f' [{width} px]' if width else ''}: {message}")

    def solutions(self):
        found = self.page.evaluate(SOLUTIONS_JS)
        self.stats["solutions"] += len(found)
        for s in found:
            if s["count"]:
                self.fail(f"{s['what']} is visible before it is opened: \"{s['shown']}\" (use {{solution-start}} "
                          f"with :class: dropdown ... {{solution-end}} around the whole solution)", DESKTOP["width"])

    def blocks(self):
        result = self.page.evaluate(BLOCKS_JS)
        self.stats["blocks"] += result["checked"]
        for b in result["out"]:
            self.fail(f"{b['where']} scrolls sideways: {b['scroll']} px of content in {b['client']} px; longest line "
                      f"{b['chars']} characters: \"{b['line']}\"", DESKTOP["width"])

    def image_scale(self):
        result = self.page.evaluate(SCALE_JS, SCALE)
        self.stats["scaled"] += result["checked"]
        for i in result["out"]:
            if i["meant"] and i["shown"] < 0.97 * i["meant"]:
                self.fail(f"figure {i['src']} in {i['where']} is {i['meant']} px wide but the page shows it at "
                          f"{i['shown']} px: its fonts and 32x32 images shrink below their size (make the figure at "
                          f"most {i['shown'] / 100:.1f} inches wide: fewer columns or a narrower figsize)",
                          DESKTOP["width"])
            else:
                self.fail(f"image {i['src']} in {i['where']} is shown {i['shown']} px wide but is only "
                          f"{i['natural']}x{i['naturalH']} px: blurry on HiDPI screens (shown at most {i['limit']} px "
                          f"= natural / {SCALE}; save it at a higher dpi or show it smaller)", DESKTOP["width"])

    def page_width(self):
        result = self.page.evaluate(PAGE_WIDTH_JS)
        if result["width"] > result["vw"]:
            where = "; ".join(result["culprits"]) or "no single element found"
            self.fail(f"the page scrolls sideways: {result['width']} px wide in a {result['vw']} px viewport "
                      f"({where})", PHONE["width"])


def settle(page):
    page.evaluate("() => document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => "
                  "requestAnimationFrame(r))))")


def check(html_dir, toc=ROOT / "_toc.yml", pages=None, screenshots=None):
    """Check the built book; returns (failures, stats)."""
    html_dir, toc = Path(html_dir).resolve(), Path(toc).resolve()
    book_root = toc.parent
    if not (html_dir / "index.html").exists():
        return [f"{html_dir}/index.html does not exist: build the book first"], None
    if not Path(CHROMIUM).exists():
        return [f"no browser at {CHROMIUM}: `apt-get install -y chromium` or set CHROMIUM=/path/to/chrome"], None
    names = select_pages(["index"] + toc_files(toc), pages)
    failures = []
    stats = dict.fromkeys(["pages", "notebooks", "images", "external", "scaled", "blocks", "solutions",
                           "phone", "colab"], 0)
    if screenshots:
        Path(screenshots).mkdir(parents=True, exist_ok=True)
    server = serve(html_dir)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profile = tempfile.mkdtemp(prefix="check-book-profile-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=ARGS, headless=True, viewport=DESKTOP,
                device_scale_factor=1)
            # offline: the book's own files only (external fonts, MathJax, badges are blocked, not judged)
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                          or route.request.url.startswith("data:") else route.abort())
            context.add_init_script(LIB_JS)
            page = context.pages[0] if context.pages else context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(f"uncaught {e.name}: {e.message}"))

            def on_console(msg):
                url = (msg.location or {}).get("url", "")
                if msg.type == "error" and (url.startswith(base) or not url) and \
                        not ("Failed to load resource" in msg.text and url and not url.startswith(base)):
                    errors.append(f"console.error: {msg.text}" + (f" ({url.removeprefix(base)})" if url else ""))
            page.on("console", on_console)
            page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url.removeprefix(base)}: "
                                                             f"{r.failure}") if r.url.startswith(base) else None)

            for name in names:
                errors.clear()
                page.set_viewport_size(DESKTOP)
                url = base + name + ".html"
                checker = Page(page, name, failures, stats)
                response = page.goto(url, wait_until="load", timeout=60_000)
                stats["pages"] += 1
                if response is None or response.status >= 400:
                    checker.fail(f"page missing (HTTP {response.status if response else '?'})")
                    continue
                if 'http-equiv="refresh"' in (html_dir / f"{name}.html").read_text().lower():  # index -> root
                    page.wait_for_url(lambda u, start=url: u != start, timeout=30_000)
                    page.wait_for_load_state("load")
                images = page.evaluate(IMAGES_JS)
                settle(page)
                stats["images"] += images["local"]
                stats["external"] += images["external"]
                for src in images["broken"]:
                    checker.fail(f"image did not load: {src}")
                checker.solutions()
                if screenshots:
                    page.screenshot(path=str(Path(screenshots) / f"{name.replace('/', '_')}-1280.png"),
                                    full_page=True)
                page.evaluate(OPEN_ALL_JS)
                settle(page)
                for sol in page.evaluate(OPENED_SOLUTIONS_JS):
                    checker.fail(f"{sol} shows nothing when opened")
                checker.blocks()
                checker.image_scale()
                # a phone loads the page at its own width (no resize transitions); opened content counts too
                page.set_viewport_size(PHONE)
                page.goto(page.url, wait_until="load", timeout=60_000)
                page.evaluate(IMAGES_JS)
                settle(page)
                if screenshots:
                    page.screenshot(path=str(Path(screenshots) / f"{name.replace('/', '_')}-390.png"), full_page=True)
                page.evaluate(OPEN_ALL_JS)
                settle(page)
                stats["phone"] += 1
                checker.page_width()
                for e in dict.fromkeys(errors):
                    if not any(e.startswith("console.error: Failed to load resource") and e.endswith(f"{src})")
                               for src in images["broken"]):  # already reported as an image that did not load
                        checker.fail(f"JavaScript error: {e}")
                if (book_root / f"{name}.ipynb").exists():
                    stats["notebooks"] += 1
                    if page.locator(".cell_output .traceback, .cell_output .output.error").count():
                        checker.fail("the page shows an error output (a cell raised)")
                    notebook = f"{name}.ipynb"
                    hrefs = page.eval_on_selector_all("a[href*='colab.research.google.com']",
                                                      "as => as.map(a => a.href)")
                    if any(h.endswith(notebook) for h in hrefs):
                        stats["colab"] += 1
                    else:
                        checker.fail(f"no Colab launch link ending in {notebook} (found {hrefs or 'none'})")
            context.close()
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return failures, stats


def summary(stats) -> str:
    return (f"{stats['pages']} pages ({stats['notebooks']} notebooks): {stats['images']} images loaded "
            f"({stats['external']} external not checked), {stats['scaled']} images checked for scale, "
            f"{stats['blocks']} code/output blocks checked for overflow at {DESKTOP['width']} px, "
            f"{stats['solutions']} solutions checked hidden, {stats['phone']} pages checked at {PHONE['width']} px, "
            f"Colab links on {stats['colab']} notebook pages")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", nargs="?", default=ROOT / "_build" / "html", help="the built book (_build/html)")
    parser.add_argument("--pages", nargs="+", metavar="PAGE",
                        help="check only these pages (e.g. notebooks/02_disruption, 02_disruption, book/intro)")
    parser.add_argument("--toc", default=ROOT / "_toc.yml", help="the book's _toc.yml (default: this repository's)")
    parser.add_argument("--screenshots", metavar="DIR", help="save full-page screenshots at 1280 and 390 px here")
    args = parser.parse_args(argv)
    failures, stats = check(args.html, toc=args.toc, pages=args.pages, screenshots=args.screenshots)
    if stats is None:
        print(*failures, sep="\n", file=sys.stderr)
        return 2
    if failures:
        print(f"book check failed ({len(failures)} problems):", *failures, sep="\n  ", file=sys.stderr)
        print(f"checked {summary(stats)}", file=sys.stderr)
        return 1
    print(f"book check passed: {summary(stats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
