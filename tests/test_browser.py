"""The web shell page as a person uses it, in a real browser: Debian's Chromium driven
over WebDriver (Selenium with Debian's chromium-driver; scripts/ensure-test-tools
installs both), against a real gateway with a token and a real worker.

One session, in the order a person would go: the page asks for a token, gets one;
a tool's link shows its help; a line with an attached file runs; output arrives
live while a job runs and the job is cancelled; a job cancelled before it wrote
anything says so instead of showing an empty box; a refused line clears the last
job; the recent jobs keep quoting and dates and never break a word; the policy
blocks nothing the page needs. A screenshot is saved and must not be blank."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import infra
from tests.infra import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "browser-test-token-0123456789abcdef"
WAIT_S = 20

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromium-driver (scripts/ensure-test-tools installs them)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("browser")
    tools = infra.clone_tools_dir(workdir / "tools")
    stack = Stack(workdir, amqp_url, tools_dir=tools, tokens=TOKEN, kill_grace=1)
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(browser: Any, condition: Any, what: str) -> Any:
    """Until condition() is truthy. The page redraws its job table every few seconds,
    so an element found a moment ago may be gone: that try is tried again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda _: condition(), message=f"waiting for {what}")


def text(browser: Any, element_id: str) -> str:
    return browser.find_element("id", element_id).text


def run_line(browser: Any, line: str, *files: Path) -> None:
    field = browser.find_element("id", "line")
    field.clear()
    field.send_keys(line)
    if files:
        browser.find_element("id", "files").send_keys("\n".join(str(f) for f in files))
    browser.find_element("id", "submit").click()


def test_a_person_uses_the_page(stack: Stack, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.get(stack.url + "/")
    # 1. The gateway wants a token: the page says so, then works once one is typed.
    wait(browser, lambda: "enter a token above" in text(browser, "error"), "the token hint")
    browser.find_element("id", "token").send_keys(TOKEN, Keys.TAB)
    wait(browser, lambda: browser.find_elements("css selector", "#tools a"), "the tool links")
    assert text(browser, "error") == ""

    # 2. A tool's link shows its help.
    browser.find_element("link text", "deploy").click()
    wait(browser, lambda: "usage: deploy" in text(browser, "output"), "deploy's help")
    assert browser.find_element("id", "line").get_attribute("value") == "deploy "

    # 3. A line with an attached file runs; control characters are shown, not obeyed.
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello from an attached file\n\x1b[31mred\n")
    run_line(browser, "cat notes.txt", notes)
    wait(browser, lambda: text(browser, "state") == "succeeded", "the cat job to succeed")
    assert "hello from an attached file" in text(browser, "output")
    assert "\\x1b[31mred" in text(browser, "output")

    # 3b. Carriage returns as the CLI shows them on a terminal: \r\n is a newline even
    # when its halves come in two events, a lone \r is shown, and so is a last one.
    run_line(browser, "crlf 0.3")

    def shown() -> str:
        return str(browser.execute_script(
            "return document.getElementById('output').textContent"))

    # A last \r is held until the output ends: seeing it means the end was handled.
    wait(browser, lambda: "trailing CR\\x0d" in shown(), "the crlf job's last \\r")
    output = shown()
    assert "one\ntwo\n" in output, repr(output)
    assert "progress 10%\\x0dprogress 50%\nsplit CR\nafter a split CRLF" in output, repr(output)
    assert "last err\\x0d" in output, repr(output)

    # 4. Output arrives live while the job runs; then it is cancelled.
    run_line(browser, "sleep 30")
    wait(browser, lambda: "tick 2" in text(browser, "output"), "live output")
    assert text(browser, "state") == "running"
    browser.find_element("id", "cancel").click()
    wait(browser, lambda: text(browser, "state") == "cancelled", "the job cancelled")

    # 5. Cancelled before it wrote anything: said, not an empty black box.
    run_line(browser, "sleep 30")
    wait(browser, lambda: text(browser, "state") in ("queued", "running"), "the second job")
    browser.find_element("id", "cancel").click()
    wait(browser, lambda: text(browser, "state") == "cancelled", "the second cancel")
    output = browser.find_element("id", "output")
    assert output.text.strip(), "an empty output box is left on the page"

    # 6. A refused line: its error, and nothing of the previous job.
    run_line(browser, "cat 'unbalanced")
    wait(browser, lambda: "cannot split" in text(browser, "error"), "the refusal")
    assert text(browser, "state") == "refused" and text(browser, "meta") == ""
    assert not browser.find_element("id", "output").is_displayed()

    # 7. Recent jobs: quoting kept, a date shown, a word never broken across lines.
    run_line(browser, "args 'zoo*' --dry-run-with-a-long-option-name")
    wait(browser, lambda: text(browser, "state") == "succeeded", "the args job")

    def recent_row_checked() -> bool:
        rows = [r for r in browser.find_elements("css selector", "tr.job") if "zoo*" in r.text]
        if not rows:
            return False
        assert "args 'zoo*' --dry-run-with-a-long-option-name" in rows[0].text
        assert re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d:\d\d\b", rows[0].text), rows[0].text
        for word in rows[0].find_elements("css selector", "td.cmd .word"):
            assert browser.execute_script("return arguments[0].getClientRects().length",
                                          word) == 1
        return True

    wait(browser, recent_row_checked, "the job in the recent jobs")
    # ...and nothing sticks out of the page sideways (the badges and dates are seen).
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert browser.find_element("id", "files").get_attribute("value") == ""  # sent once

    # 8. The policy blocked nothing the page needs.
    refused = [entry["message"] for entry in browser.get_log("browser")
               if "Content Security Policy" in entry["message"]]
    assert refused == []

    screenshot = Path(os.environ.get("OCHO_TEST_SCREENSHOT", tmp_path / "page.png"))
    assert browser.save_screenshot(str(screenshot))
    assert_not_blank(screenshot)


def assert_not_blank(png: Path) -> None:
    """The screenshot shows something: many distinct colours, not one flat fill."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) in ((8, 2), (8, 6)), (depth, colour)  # RGB or RGBA, 8 bits
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    pixel = 3 if colour == 2 else 4
    stride = 1 + width * pixel
    colours = set()
    previous = bytearray(width * pixel)
    for y in range(height):
        row = _unfilter(raw[y * stride], raw[y * stride + 1:(y + 1) * stride], previous, pixel)
        if y % 8 == 0:
            colours |= {bytes(row[x:x + 3]) for x in range(0, len(row), pixel * 4)}
        previous = row
    assert width >= 800 and height >= 600
    assert len(colours) > 50, f"the screenshot looks blank: {len(colours)} colours"


def _unfilter(kind: int, line: bytes, previous: bytearray, pixel: int) -> bytearray:
    """Undo one scanline's PNG filter (RFC 2083, 6.3)."""
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - pixel] if i >= pixel else 0
        up = previous[i]
        corner = previous[i - pixel] if i >= pixel else 0
        if kind == 1:
            out[i] = (out[i] + left) & 0xFF
        elif kind == 2:
            out[i] = (out[i] + up) & 0xFF
        elif kind == 3:
            out[i] = (out[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            estimate = left + up - corner
            pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            out[i] = (out[i] + predictor) & 0xFF
    return out
