"""Opening report.html in real headless Chromium (Debian's, driven by Playwright).

Also a command, to make the README's picture from any run:

    python -m tests.browser_support results/quickstart/<run id>/report.html docs/images/report-html.png
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

CHROMIUM = os.environ.get("FMBENCH_CHROMIUM", "/usr/bin/chromium")
# As this machine's Chromium needs them: no sandbox as root, no GPU, and none of the background
# connections a closed network refuses (Playwright gives every launch a new empty profile).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_missing() -> str | None:
    """Why the browser test cannot run here, or None. CI installs chromium (.ci/run)."""
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found: apt-get install -y chromium"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed: pip install -e '.[dev]'"
    return None


@dataclasses.dataclass
class PageVisit:
    console_errors: list[str]
    page_errors: list[str]
    requests_outside: list[str]  # anything fetched from beyond the file itself
    hover_text: str
    plot_ids: list[str]


def visit(html_file: Path, screenshot: Path | None = None) -> PageVisit:
    """Load the page from file:// with every network request refused; hover the first point of
    the price/performance chart; take a screenshot of the top of the page."""
    from playwright.sync_api import sync_playwright

    visit = PageVisit([], [], [], "", [])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 940})
            page.on("console", lambda message: visit.console_errors.append(message.text)
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: visit.page_errors.append(str(error)))

            def route(handle: object) -> None:
                request_url = handle.request.url  # type: ignore[attr-defined]
                if request_url.startswith(("file:", "data:", "blob:")):
                    handle.continue_()  # type: ignore[attr-defined]
                else:
                    visit.requests_outside.append(request_url)
                    handle.abort()  # type: ignore[attr-defined]

            page.route("**/*", route)
            page.goto(html_file.resolve().as_uri(), wait_until="load")
            page.wait_for_selector("#price-performance .scatterlayer .point", timeout=30_000)
            visit.plot_ids = page.eval_on_selector_all(".js-plotly-plot", "nodes => nodes.map(n => n.id)")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
            point = page.locator("#price-performance .scatterlayer .point").first
            point.hover(force=True)
            page.wait_for_selector("#price-performance .hoverlayer .hovertext", timeout=10_000)
            visit.hover_text = page.text_content("#price-performance .hoverlayer") or ""
        finally:
            browser.close()
    return visit


if __name__ == "__main__":
    seen = visit(Path(sys.argv[1]), Path(sys.argv[2]))
    print(seen)
    sys.exit(1 if seen.console_errors or seen.page_errors or seen.requests_outside else 0)
