"""Looks at a report the way a person does: headless Chromium at a given window width.

`tlpipe screenshot REPORT` writes full-page PNGs at 1400 and 700 px; `page_size` tells whether a page
fits its window (a page wider than the window scrolls sideways as a whole, which reads badly in
MLflow's artifact preview). Chromium comes from Debian's `chromium` package (scripts/setup installs it
where it can).
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tlpipe.errors import TlpipeError

# Headless, offline, and with nothing that reaches out to the network at start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_MEASURE = ("<script>window.addEventListener('load', () => { const e = document.documentElement; "
            "document.title = 'size:' + e.scrollWidth + 'x' + e.scrollHeight; });</script>")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        raise TlpipeError("no Chromium found; install Debian's chromium package (apt-get install chromium).")
    return found


def _run(args: list[str], page: Path, width: int, height: int) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               "--virtual-time-budget=10000", *args, page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise TlpipeError(f"Chromium failed on {page} ({done.stderr.strip().splitlines()[-1:]}).")
    return done.stdout


def page_size(report: str | Path, width: int) -> tuple[int, int]:
    """The laid-out page's (width, height) in CSS pixels in a window `width` pixels wide."""
    html = Path(report).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        measured = Path(tmp) / "measured.html"
        measured.write_text(html.replace("</body>", _MEASURE + "</body>", 1))
        dom = _run(["--dump-dom"], measured, width, 900)
    found = re.search(r"<title>size:(\d+)x(\d+)</title>", dom)
    if not found:
        raise TlpipeError(f"Chromium did not lay out {report}.")
    return int(found.group(1)), int(found.group(2))


def screenshot(report: str | Path, out: str | Path, width: int) -> tuple[int, int]:
    """A PNG of the whole page at window width `width`; returns the page's (width, height)."""
    page_width, height = page_size(report, width)
    _run([f"--screenshot={Path(out).resolve()}"], Path(report), width, min(height, 16000))
    return page_width, height
