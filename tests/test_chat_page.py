"""The chat page at / in a real headless browser (Debian's chromium, driven by selenium).

The page is served by an in-process server on the demo model. The test types a question,
sees the reply stream in (and land in local storage), turns thinking on and sees the reasoning block, reloads the page and
finds the conversation kept in local storage, and stops a reply with the stop button. CI
installs chromium and its driver (.ci/run); without them the test is skipped with the reason.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import chat_model, start_server  # noqa: E402,F401  (the demo model fixture and server)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def page_server(chat_model):  # noqa: F811
    server = start_server(chat_model)
    yield server
    server.shutdown_cleanly()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def assistant_texts(browser):
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")]


def send(browser, text):
    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()


def test_page_streams_a_reply_keeps_it_and_shows_reasoning(browser, page_server):
    browser.get(page_server.url + "/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_element(By.ID, "model").text == "exaone4-demo")
    send(browser, "What is 27 + 45?")  # the page samples at the model card's temperature: any reply will do
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats"))
    reply = assistant_texts(browser)[-1]
    assert reply.strip()
    stored = browser.execute_script("return JSON.parse(localStorage.getItem('tinyexaone.chat')).messages")
    assert [m["role"] for m in stored] == ["user", "assistant"] and stored[1]["content"].strip() == reply.strip()

    browser.refresh()  # the conversation survives in local storage
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg")) == 2)
    assert assistant_texts(browser)[-1] == reply

    browser.find_element(By.ID, "clear").click()
    browser.find_element(By.ID, "thinking").click()
    send(browser, "What is 13 + 6?")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats"))
    reasoning = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant details.reasoning")
    assert reasoning and reasoning[-1].get_attribute("textContent").replace("reasoning", "", 1).strip()


def test_stop_button_ends_the_reply(browser, page_server):
    browser.get(page_server.url + "/")
    browser.find_element(By.ID, "clear").click()
    wait = WebDriverWait(browser, 60)
    browser.find_element(By.ID, "input").send_keys("Hello! Who are you?")
    browser.find_element(By.ID, "send").click()
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda b: b.find_element(By.ID, "send").is_enabled() and not b.find_element(By.ID, "stop").is_enabled())
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg .error")
