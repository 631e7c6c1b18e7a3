"""The chat page at GET /, driven in headless Chromium (Debian `chromium` + `chromium-driver`).

Not skipped when Chromium is missing: .ci/run installs it, and a missing browser must fail.
"""

from __future__ import annotations

import httpx
import pytest

from serve_helpers import headless_chromium, running_server, train_tiny_run

KEY = "page-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    from chattune.serve.app import create_app
    from chattune.serve.registry import load_registry

    run = train_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("page") / "alpha", seed=0)
    app = create_app(load_registry([str(run)]), api_key=KEY, max_tokens=24)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile")) as web:
        yield web


def api_answer(url: str, messages: list[dict]) -> str:
    body = {"model": "alpha", "messages": messages, "temperature": 0, "max_tokens": 256}
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"})
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"]


def send_and_wait(browser, text: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait = WebDriverWait(browser, 120)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant")) > before)
    bubble = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    wait.until(lambda b: bubble.get_attribute("data-done") == "1")
    return bubble


def test_page_picks_model_streams_answer_and_keeps_history(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    # Without the key the models request is refused and the page says so.
    WebDriverWait(browser, 30).until(lambda b: "API key" in b.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "key").send_keys(KEY + Keys.TAB)
    WebDriverWait(browser, 30).until(
        lambda b: [o.text for o in b.find_elements(By.CSS_SELECTOR, "#model option")] == ["alpha"])

    first = send_and_wait(browser, "Who are you?")
    assert int(first.get_attribute("data-chunks")) > 1  # arrived in several streamed pieces
    history = [{"role": "user", "content": "Who are you?"}]
    assert first.text.strip() == api_answer(server, history).strip() != ""

    second = send_and_wait(browser, "And what can you do?")
    history += [{"role": "assistant", "content": api_answer(server, history)},
                {"role": "user", "content": "And what can you do?"}]
    assert second.text.strip() == api_answer(server, history).strip()
    users = [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg.user")]
    assert users == ["Who are you?", "And what can you do?"]
