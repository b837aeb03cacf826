"""Open the built book in headless Chromium and check every page of _toc.yml.

    python tools/check_book.py [_build/html]

Fails, naming the page, when a page is missing, one of the book's own images did not load (naturalWidth 0), a
notebook page shows an error output, or a notebook page has no Colab launch link to notebooks/<name>.ipynb.
The browser is the system Chromium ($CHROMIUM, default /usr/bin/chromium); Playwright never downloads one.
"""
import functools
import os
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
from playwright.sync_api import sync_playwright  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toc import toc_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic"]

# Wait for every image (lazy ones made eager), then report the page's own images that failed to load.
# External images (e.g. the Colab badge served by Google) are counted but not judged: the check runs offline.
IMAGES_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 10000); })));
  const local = imgs.filter(i => i.src.startsWith(location.origin) || i.src.startsWith('data:'));
  return {local: local.length, external: imgs.length - local.length,
          broken: local.filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src'))};
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


def check(html_dir):
    html_dir = Path(html_dir).resolve()
    if not (html_dir / "index.html").exists():
        return [f"{html_dir}/index.html does not exist: build the book first"], {}
    pages = ["index"] + toc_files()
    failures, stats = [], {"pages": 0, "images": 0, "external": 0, "colab": 0}
    server = serve(html_dir)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()  # a fresh, temporary profile
            for name in pages:
                url = base + name + ".html"
                response = page.goto(url, wait_until="load", timeout=60_000)
                stats["pages"] += 1
                if response is None or response.status >= 400:
                    failures.append(f"{name}: page missing (HTTP {response.status if response else '?'})")
                    continue
                if 'http-equiv="refresh"' in (html_dir / f"{name}.html").read_text().lower():  # index -> root page
                    page.wait_for_url(lambda u: u != url, timeout=30_000)
                    page.wait_for_load_state("load")
                images = page.evaluate(IMAGES_JS)
                stats["images"] += images["local"]
                stats["external"] += images["external"]
                failures += [f"{name}: image did not load: {src}" for src in images["broken"]]
                if not (ROOT / f"{name}.ipynb").exists():
                    continue
                if page.locator(".cell_output .traceback").count():
                    failures.append(f"{name}: the page shows an error output (a cell raised)")
                notebook = f"notebooks/{Path(name).name}.ipynb"
                hrefs = page.eval_on_selector_all("a[href*='colab.research.google.com']", "as => as.map(a => a.href)")
                if any(h.endswith(notebook) for h in hrefs):
                    stats["colab"] += 1
                else:
                    failures.append(f"{name}: no Colab launch link ending in {notebook} (found {hrefs or 'none'})")
            browser.close()
    finally:
        server.shutdown()
    return failures, stats


def main():
    html_dir = sys.argv[1] if len(sys.argv) > 1 else ROOT / "_build" / "html"
    failures, stats = check(html_dir)
    if failures:
        print(f"book check failed ({len(failures)} problems):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print(f"checked {stats['pages']} pages: all loaded, {stats['images']} images "
          f"({stats['external']} external not checked), colab links ok on {stats['colab']} notebook pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
