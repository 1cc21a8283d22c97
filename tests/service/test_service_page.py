"""The upload page in headless Chromium against a live server: pick an image, see the label and the overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.service.servicetools import COLOURS, solid_png

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing; `make test` installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_upload_shows_the_top_label_and_the_attention_overlay(browser, live_server, tmp_path: Path) -> None:
    server = live_server()
    image = tmp_path / "red.png"
    image.write_bytes(solid_png(COLOURS["red"], size=(64, 48)))
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"not an image")

    page = browser.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_contain_text("tiny-ca")
    expect(page.locator("#key-row")).to_be_hidden()

    page.set_input_files("#file", str(image))
    page.click("#submit")
    expect(page.locator("#top-label")).to_contain_text("red")
    overlay = page.locator("#overlay")
    expect(overlay).to_be_visible()
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
    assert page.locator("#scores tr").count() == 4

    page.set_input_files("#file", str(junk))
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("415 unsupported_image")
    expect(page.locator("#result")).to_be_hidden()


def test_the_page_sends_the_api_key_when_the_service_needs_one(browser, live_server, tmp_path: Path) -> None:
    server = live_server(CASTREAM_API_KEY="open-sesame")
    image = tmp_path / "blue.png"
    image.write_bytes(solid_png(COLOURS["blue"]))
    page = browser.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#key-row")).to_be_visible()
    page.set_input_files("#file", str(image))
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("401 unauthorized")
    page.fill("#key", "open-sesame")
    page.click("#submit")
    expect(page.locator("#top-label")).to_contain_text("blue")
