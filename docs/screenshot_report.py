"""Full-page screenshot of a run folder's HTML report (the picture in the README).

Usage::

    python docs/screenshot_report.py RUN_FOLDER OUT.png [--max-height 12000] [--colors 256]

Writes ``RUN_FOLDER/report.html`` as ``viscope report RUN_FOLDER`` does, opens it in
headless Chromium (Debian's ``chromium`` and ``chromium-driver`` packages, driven by
selenium with the driver's path given, so nothing is downloaded) with the network cut,
and saves the whole page, 1280 px wide and as tall as the page (capped), as a PNG
reduced to a palette so that it stays small enough to keep in the repository.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

WIDTH = 1280


def _chrome(width: int):
    """Headless Chromium with the network cut; exits with a hint where none is installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        sys.exit("Expected chromium and chromedriver on PATH; found none. Install them: "
                 "apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={width},900",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def screenshot(page: Path, out: Path, width: int = WIDTH, max_height: int = 12000,
               colors: int = 256) -> tuple[int, int]:
    """Save a full-page screenshot of the HTML file ``page`` to ``out``.

    Args:
        page: the HTML file.
        out: the PNG to write.
        width: the viewport width in CSS pixels (one image pixel each).
        max_height: the tallest screenshot taken; a longer page is cut there.
        colors: palette size of the saved PNG (0: keep full colour).

    Returns:
        The image's ``(width, height)``.
    """
    from PIL import Image

    driver = _chrome(width)
    try:
        driver.get(page.resolve().as_uri())
        height = min(int(driver.execute_script(
            "return document.documentElement.scrollHeight;")), max_height)
        # The viewport as tall as the page: one screenshot holds all of it.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if colors:
        img = img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT,
                           dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return img.size


def main(argv: list[str] | None = None) -> None:
    """Command line: write the report of RUN_FOLDER, then its screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder (e.g. runs/demo)")
    parser.add_argument("out", type=Path, help="PNG to write (e.g. docs/report-demo.png)")
    parser.add_argument("--max-height", type=int, default=12000)
    parser.add_argument("--colors", type=int, default=256)
    args = parser.parse_args(argv)
    from viscope.errors import ViscopeError
    from viscope.report.html import write_report

    try:
        page = write_report([args.run])
    except ViscopeError as e:
        sys.exit(str(e))
    w, h = screenshot(page, args.out, max_height=args.max_height, colors=args.colors)
    print(f"{args.out}: {w} x {h} px, {args.out.stat().st_size / 1e6:.2f} MB (of {page})")


if __name__ == "__main__":
    main()
