"""What an annotator sees, in a real browser: headless Chromium (Debian's ``chromium`` and
``chromedriver``, installed by ``make test``) on the test Label Studio's labeling stream.

Skipped only where no browser is installed; the screenshot goes to
docs/figures/labeling-stream.png.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connector.contracts.ports import TaskToPush
from connector.devtools.datasets import digit_png, digits_arrays
from tests.fixtures.labelstudio import LabelStudioHandle, LabelStudioProject

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "labeling-stream.png"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(`make test` does), then run again",
)


class _CorsHandler(http.server.SimpleHTTPRequestHandler):
    """The labeling view loads images cross-origin: a bucket or CDN sends this header."""

    served: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _CorsHandler.served.append(self.path)
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server for the task images (the browser loads them itself)."""
    images, labels = digits_arrays()
    seven = next(i for i, y in enumerate(labels) if y == 7)
    (tmp_path / "digit-7.png").write_bytes(digit_png(images[seven], size=256))
    handler = functools.partial(_CorsHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,900")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _wait_in(browser: Any, what: str, check: Any, timeout_s: float = 60.0) -> Any:
    """``_wait``; on a timeout, a screenshot and the page's text go into the error."""
    try:
        return _wait(what, check, timeout_s)
    except AssertionError as exc:
        failed = Path(tempfile.gettempdir()) / "labeling-stream-failed.png"
        browser.save_screenshot(str(failed))
        text = browser.execute_script("return document.body.innerText.slice(0, 1500)")
        raise AssertionError(f"{exc}; screenshot {failed}; the page says:\n{text}") from None


def test_the_labeling_stream_shows_the_image_and_ticks_the_prelabel(
    label_studio: LabelStudioHandle,
    ls_project: LabelStudioProject,
    image_server: str,
    browser: Any,
) -> None:
    from selenium.webdriver.common.by import By

    adapter = ls_project.adapter()
    tasks = [
        TaskToPush(
            item_id=f"pool/digit-{digit}.png",
            image_url=f"{image_server}/digit-{digit}.png",
            round=1,
            split="train",
            priority=priority,
            predicted_label=str(digit),
            confidence=confidence,
        )
        for priority, (digit, confidence) in enumerate([(7, 0.87), (3, 0.41), (5, 0.55)])
    ]
    adapter.push(list(reversed(tasks)), "al-r0001-margin-browser")  # served from priority 0

    browser.get(f"{label_studio.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(label_studio.username)
    browser.find_element(By.NAME, "password").send_keys(label_studio.password)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit], form [type=submit]").click()
    _wait("the login", lambda: "/user/login" not in browser.current_url)

    # "Label All Tasks": the labeling stream of the project
    browser.get(f"{label_studio.url}/projects/{ls_project.id}/data?labeling=1")
    # The labeling view fetches the URL and shows it as a blob: our server must be asked.
    width = _wait_in(
        browser,
        "the task image to load",
        lambda: (
            "/digit-7.png" in _CorsHandler.served
            and browser.execute_script(
                "return Math.max(0, ...[...document.querySelectorAll('img')]"
                ".filter(e => e.src.startsWith('blob:') || e.src.endsWith('/digit-7.png'))"
                ".map(e => e.complete ? e.naturalWidth : 0));"
            )
        ),
    )
    assert width == 256
    ticked = _wait_in(
        browser,
        "the prelabel's choice to be ticked",
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('input[type=checkbox], input[type=radio]')]"
            ".filter(e => e.checked).map(e => (e.closest('label') || e.parentElement)"
            ".textContent.trim());"
        ),
    )
    assert [re.sub(r"\[\d+\]$", "", t) for t in ticked] == ["7"]  # "7[8]": 8 is its hotkey
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
