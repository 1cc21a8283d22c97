"""The upload page in headless Chromium against a live server: pick an image, see the label and the overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.service.servicetools import COLOURS, save_model, solid_png

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
    assert overlay.get_attribute("src").startswith("data:image/jpeg;base64,")
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


def explain_on_page(browser, url: str, image: Path, explain: str | None = None):
    """The page at ``url`` with its class-map choice offered, ``image`` uploaded (its map asked for ``explain``)."""
    page = browser.new_page()
    page.goto(url + "/")
    expect(page.locator("#explain-row")).to_be_visible()
    if explain:
        page.select_option("#explain", explain)
    page.set_input_files("#file", str(image))
    page.click("#submit")
    return page


def test_the_page_shows_the_map_of_a_chosen_class_over_the_whole_image(browser, live_server, tmp_path: Path) -> None:
    server = live_server()
    image = tmp_path / "red.png"
    image.write_bytes(solid_png(COLOURS["red"], size=(64, 48)))
    page = explain_on_page(browser, server.url, image, "blue")  # not the predicted class: explain it anyway
    expect(page.locator("#top-label")).to_contain_text("red")
    expect(page.locator("#class-caption")).to_contain_text("evidence for blue")
    expect(page.locator("#class-overlay")).to_be_visible()
    page.wait_for_function("document.getElementById('class-overlay').naturalWidth > 0")
    sizes = page.evaluate("['overlay', 'class-overlay'].map((id) => document.getElementById(id).naturalWidth)")
    assert sizes == [64, 64]  # whole-image overlays: the uploaded image's own width


def test_a_gap_model_shows_its_class_activation_map_and_no_attention(browser, live_server, tmp_path: Path) -> None:
    server = live_server(save_model(tmp_path / "cam.onnx", "gap", class_maps=True))
    image = tmp_path / "green.png"
    image.write_bytes(solid_png(COLOURS["green"], size=(64, 48)))
    page = explain_on_page(browser, server.url, image)
    expect(page.locator("#top-label")).to_contain_text("green")
    expect(page.locator("#class-caption")).to_contain_text("class activation map: evidence for green")
    expect(page.locator("#class-overlay")).to_be_visible()
    expect(page.locator("#overlay-figure")).to_be_hidden()
    expect(page.locator("#no-attention")).to_contain_text("no learned attention")


def test_api_docs_render_with_the_network_closed(browser, live_server) -> None:
    server = live_server()
    outside: list[str] = []

    def only_loopback(route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context = browser.new_context()
    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto(server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("castream")
    expect(page.locator(".opblock-summary-path", has_text="/classify").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/v2/models/{model_name}/infer")).to_be_visible()
    assert outside == [], f"the docs page tried to reach {outside}"
    context.close()


def test_the_page_says_what_the_model_knows_and_classifies_a_sample_in_one_click(browser, live_server) -> None:
    server = live_server()
    page = browser.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#trained-on")).to_contain_text("Trained on solid colours: 4 classes")
    expect(page.locator("#trained-on")).to_contain_text("any other picture still gets one of them")
    samples = page.locator("#samples button")
    expect(samples).to_have_count(2)
    page.wait_for_function("[...document.querySelectorAll('#samples img')].every((i) => i.naturalWidth > 0)")
    samples.nth(1).click()  # the blue one
    expect(page.locator("#top-label")).to_contain_text("blue")
    expect(page.locator("#overlay")).to_be_visible()
