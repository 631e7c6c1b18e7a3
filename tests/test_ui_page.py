"""`chattune ui` end to end in headless Chromium: upload data, inspect, validate, train the built-in model,
watch it finish, see it in the runs list, chat with it. A screenshot of each screen is saved
(to $CHATTUNE_UI_SCREENSHOTS when set, else the test's temp dir) and its path printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serve_helpers import headless_chromium, running_server

pytestmark = pytest.mark.slow
KEY = "ui-page-key"
ROWS = [{"instruction": f"Who are you? ({i})", "input": "", "output": "I am Tuna, made by Chattune Labs."}
        for i in range(8)]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    from chattune.ui.app import create_ui_app

    runs = tmp_path_factory.mktemp("ui-runs")
    with running_server(create_ui_app(runs, api_key=KEY, device="cpu")) as url:
        yield url, runs


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("ui-chromium")) as web:
        yield web


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CHATTUNE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screens"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(browser, shots: Path, name: str) -> None:
    path = shots / f"ui-{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def field(browser, key: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, "f-" + key.replace(".", "_"))


def set_field(browser, key: str, value: str) -> None:
    box = field(browser, key)
    box.clear()
    box.send_keys(value)


def test_upload_inspect_train_watch_runs_and_chat(ui, browser, shots, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, runs = ui
    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    wait.until(lambda b: "API key" in b.find_element(By.ID, "status").text)  # no key yet: refused, and said
    browser.find_element(By.ID, "key").send_keys(KEY + Keys.TAB)
    wait.until(lambda b: field(b, "model.name").get_attribute("value") == "builtin:smollm2-135m-instruct")

    data = tmp_path / "identity.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    browser.find_element(By.ID, "upload").send_keys(str(data))
    wait.until(lambda b: field(b, "data.path").get_attribute("value").endswith("identity.jsonl"))
    for key, value in {"name": "uitest", "train.max_steps": "2", "train.batch_size": "2", "data.max_length": "96",
                       "train.precision": "fp32"}.items():
        if key == "train.precision":
            from selenium.webdriver.support.ui import Select

            Select(field(browser, key)).select_by_value(value)
        else:
            set_field(browser, key, value)

    set_field(browser, "lora.r", "-1")  # shown inline, next to the field, and training cannot start
    wait.until(lambda b: "greater than 0" in b.find_element(By.ID, "err-lora.r").text)
    assert not browser.find_element(By.ID, "start").is_enabled()
    screenshot(browser, shots, "validation")
    set_field(browser, "lora.r", "4")
    wait.until(lambda b: b.find_element(By.ID, "start").is_enabled() and "r: 4" in b.find_element(By.ID, "yaml").get_attribute("textContent"))
    assert "lora.r=4" in browser.find_element(By.ID, "command").text

    browser.find_element(By.ID, "inspect").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#inspection .example .seg-trained"))
    trained = browser.find_elements(By.CSS_SELECTOR, "#inspection .example .seg-trained")
    assert any("Tuna" in span.text for span in trained)  # the answer is what is trained
    assert browser.find_elements(By.CSS_SELECTOR, "#histogram .bar")
    screenshot(browser, shots, "inspect")

    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, 900).until(lambda b: b.find_element(By.ID, "job").get_attribute("data-state") in
                                      ("finished", "failed", "stopped"))
    assert browser.find_element(By.ID, "job").get_attribute("data-state") == "finished", \
        browser.find_element(By.ID, "job-log").text
    assert browser.find_element(By.ID, "job-step").text == "step 2/2"
    assert int(browser.find_element(By.CSS_SELECTOR, "#curve polyline[data-series=loss]").get_attribute("data-points")) >= 1
    screenshot(browser, shots, "training")

    browser.find_element(By.CSS_SELECTOR, "header button[data-tab=runs]").click()
    row = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#runs tr[data-run^=uitest-]"))  # NAME-TIMESTAMP
    name = row.get_attribute("data-run")
    assert row.get_attribute("data-state") == "finished"
    row.find_element(By.CSS_SELECTOR, "button.open").click()
    wait.until(lambda b: b.execute_script(
        "const i = document.querySelector('#run-detail img'); return i && i.complete && i.naturalWidth > 0;"))
    screenshot(browser, shots, "runs")

    row.find_element(By.CSS_SELECTOR, "button.chat").click()
    wait.until(lambda b: b.find_element(By.ID, "chat-target").get_attribute("value") == name)
    browser.find_element(By.ID, "chat-max").clear()
    browser.find_element(By.ID, "chat-max").send_keys("16")
    browser.find_element(By.ID, "chat-input").send_keys("Who are you?" + Keys.ENTER)
    WebDriverWait(browser, 300).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")
                                      or b.find_elements(By.CSS_SELECTOR, "#chat-log .msg.error"))
    [answer] = browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")
    import chattune

    expected = chattune.load(runs / name, device="cpu").chat("Who are you?", max_new_tokens=16)
    assert answer.text.strip() == expected != ""
    screenshot(browser, shots, "chat")
