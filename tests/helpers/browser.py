"""A page opened in a real browser: headless Chromium (Debian's ``chromium`` package), driven from the command
line (no driver library): what the page's images, tables and console say once it has loaded, and a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  const out = document.createElement('pre');
  out.id = 'stylexfer-probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken,
    tables: document.querySelectorAll('table').length, rows: document.querySelectorAll('tr').length,
    title: document.title});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    """The browser's executable, or None where none is installed."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _args(exe: str) -> list[str]:
    return [
        exe,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--hide-scrollbars",
    ]


def check_page(page: Path, timeout: int = 120) -> dict:
    """Open ``page`` (beside its images) in headless Chromium; returns the loaded page's image count, the images
    that did not load, its tables and rows, and the console's error lines."""
    exe = chromium()
    page = Path(page).resolve()
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text() + PROBE)
    try:
        res = subprocess.run(
            [
                *_args(exe),
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="stylexfer-probe">(.*?)</pre>', res.stdout, re.S)
    if not found:
        raise AssertionError(f"the page did not load in chromium (exit {res.returncode}): {res.stderr[-1500:]}")
    doc = json.loads(
        found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    )
    doc["console_errors"] = [
        line for line in res.stderr.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)
    ]
    return doc


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 1600, timeout: int = 120) -> Path:
    """A PNG of ``page`` as Chromium draws it, ``width`` × ``height`` pixels."""
    out = Path(out).resolve()
    subprocess.run(
        [
            *_args(chromium()),
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            f"--screenshot={out}",
            Path(page).resolve().as_uri(),
        ],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return out
