"""The web chat page at `/`, in headless Chromium against the real server (embedded model, loopback).

Needs Debian's chromium + chromedriver and selenium (scripts/install-browser.sh); skipped without them.
The screenshot of a streamed answer is saved to tests/artifacts/web_chat.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_fixture import API_KEY, RunningServer, smol_server

INSTALL = "run scripts/install-browser.sh"
webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed: {INSTALL}")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if os.environ.get("CI") and not (CHROMIUM and CHROMEDRIVER):  # CI installs them: missing is a failure
    pytest.fail(f"chromium and chromedriver are missing in CI: {INSTALL}", pytrace=False)
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason=f"chromium and chromedriver are not installed: {INSTALL}"
)
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,820",
]
QUESTION = "What is the capital of France?"
RUNNING = "mistral_nemo:num_requests_running"  # metrics.py
__all__ = ["smol_server"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def server(smol_server: RunningServer) -> str:
    return smol_server.base_url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(server: str, browser: Any) -> Any:
    """The page with the API key entered and temperature 0, starting from an empty browser store."""
    browser.get(server)
    browser.execute_script("localStorage.clear()")
    browser.get(server)
    _wait(browser, lambda: not _find(browser, "#error").get_attribute("hidden"))  # 401: no key yet
    assert "401" in _find(browser, "#error-text").text
    assert _find(browser, "#settings").is_displayed()  # opened on the key field
    key = _find(browser, "#api-key")
    key.send_keys(API_KEY, Keys.TAB)  # `change`: stored, and the models listed again
    _wait(browser, lambda: browser.execute_script("return document.querySelectorAll('#model option').length"))
    assert _find(browser, "#error").get_attribute("hidden")
    _set(browser, "#temperature", 0)
    _find(browser, "#settings-toggle").click()
    return browser


def test_answers_a_question_streaming_and_keeps_it(page: Any) -> None:
    _count_paints_while_streaming(page)
    _ask(page, QUESTION)
    _wait(page, lambda: _state(page) == "idle" and len(_messages(page)) == 2, timeout=120)
    answer = _messages(page)[-1]
    assert answer["role"] == "assistant" and "Paris" in answer["text"], _messages(page)
    assert page.execute_script("return window.__paints") >= 2, "the answer did not arrive in pieces"
    stored = json.loads(page.execute_script("return localStorage.getItem('mistral-nemo.conversation')"))
    assert [m["role"] for m in stored] == ["user", "assistant"] and "Paris" in stored[1]["content"]
    assert (
        json.loads(page.execute_script("return localStorage.getItem('mistral-nemo.settings')"))["temperature"]
        == 0
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.save_screenshot(str(ARTIFACTS / "web_chat.png"))

    page.refresh()  # the conversation, key and settings survive a reload
    _wait(page, lambda: len(_messages(page)) == 2)
    assert _messages(page)[0] == {"role": "user", "text": QUESTION}
    assert "Paris" in _messages(page)[1]["text"]
    assert _find(page, "#api-key").get_attribute("value") == API_KEY
    assert _find(page, "#temperature").get_attribute("value") == "0"

    _find(page, "#new-chat").click()
    assert _messages(page) == []
    page.refresh()
    assert _messages(page) == [] and _find(page, "#empty").is_displayed()
    assert not _browser_errors(page)


def test_renders_markdown_and_escapes_html(page: Any) -> None:
    answer = (
        "Here is **bold** and `x < y`.\n\n- one\n- two\n  1. nested\n\n"
        "```python\n<script>alert(1)</script>\n```\n"
        "[safe](https://example.com) [unsafe](javascript:alert(1)) <img src=x onerror=alert(1)>"
    )
    conversation = [{"role": "user", "content": "show me"}, {"role": "assistant", "content": answer}]
    store = "localStorage.setItem('mistral-nemo.conversation', arguments[0])"
    page.execute_script(store, json.dumps(conversation))
    page.refresh()
    body = _wait(page, lambda: page.find_elements(By.CSS_SELECTOR, ".message.assistant .body"))[0]
    assert body.find_element(By.TAG_NAME, "strong").text == "bold"
    assert body.find_element(By.CSS_SELECTOR, "p code").text == "x < y"
    assert [li.text.split("\n")[0] for li in body.find_elements(By.CSS_SELECTOR, "ul > li")] == ["one", "two"]
    assert body.find_element(By.CSS_SELECTOR, "ul ol li").text == "nested"
    code = body.find_element(By.CSS_SELECTOR, "pre code.language-python")
    assert code.get_attribute("textContent") == "<script>alert(1)</script>"
    links = [a.get_attribute("href") for a in body.find_elements(By.TAG_NAME, "a")]
    assert links == ["https://example.com/"]
    assert not body.find_elements(By.CSS_SELECTOR, "script, img") and "<img src=x" in body.text
    rendered = page.execute_script("return renderMarkdown(arguments[0])", "# Title\n\n1. a\n2. **b**")
    assert rendered == "<h1>Title</h1>\n<ol><li>a</li><li><strong>b</strong></li></ol>"


def test_stop_button_aborts_the_request_on_the_server(page: Any, smol_server: RunningServer) -> None:
    _set(page, "#max-tokens", 1500)
    page.execute_script("mistralChat.state.extraBody = {ignore_eos: true}")  # an answer that runs on
    _ask(page, "Tell me a very long story.")
    _wait(page, lambda: len(_messages(page)[-1]["text"]) > 20, timeout=60)
    assert smol_server.metric(RUNNING) == 1
    stopped = time.monotonic()
    _find(page, "#stop").click()
    _wait(page, lambda: _state(page) == "idle")
    _wait(page, lambda: smol_server.metric(RUNNING) == 0, timeout=10)
    print(f"running requests back to 0 in {time.monotonic() - stopped:.2f}s after Stop")
    assert _find(page, ".message.assistant .note").text == "Stopped."
    assert _find(page, "#send").is_displayed() and not _find(page, "#stop").is_displayed()
    assert smol_server.metric("mistral_nemo:request_aborted_total") >= 1
    assert smol_server.metric("mistral_nemo:kv_cache_usage_perc") == 0  # its KV blocks are free


def test_shows_the_server_error(page: Any) -> None:
    page.execute_script("mistralChat.state.settings.model = 'no-such-model'")
    _ask(page, QUESTION)
    error = _wait(page, lambda: _find(page, "#error").is_displayed() and _find(page, "#error-text").text)
    assert error.startswith("404: the model 'no-such-model' does not exist"), error
    assert _messages(page) == []  # the turn is taken back ...
    assert _find(page, "#prompt").get_attribute("value") == QUESTION  # ... into the message box
    _find(page, "#error-close").click()
    assert not _find(page, "#error").is_displayed()


def test_page_and_files_are_served_locally(server: str) -> None:
    page = httpx.get(server)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith(("/static/", "#")) for s in sources), sources  # no CDN
    for path in (s for s in sources if s.startswith("/static/")):
        assert httpx.get(server + path).status_code == 200, path
    assert httpx.get(server + "/static/nothing-here.js").status_code == 404  # public, and simply absent


# ---- helpers ------------------------------------------------------------------------------------


def _find(driver: Any, css: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, css)


def _wait(driver: Any, condition: Callable[[], Any], timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda _: condition())


def _set(driver: Any, css: str, value: object) -> None:
    """Set an input's value as a user would (an `input` event)."""
    driver.execute_script(
        "const el = document.querySelector(arguments[0]); el.value = arguments[1];"
        "el.dispatchEvent(new Event('input', {bubbles: true}))",
        css,
        str(value),
    )


def _ask(driver: Any, text: str) -> None:
    _find(driver, "#prompt").send_keys(text, Keys.ENTER)


def _state(driver: Any) -> str:
    return driver.execute_script("return document.body.dataset.state")


def _messages(driver: Any) -> list[dict[str, str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.message')].map(m => ({"
        "  role: m.classList.contains('user') ? 'user' : 'assistant',"
        "  text: m.querySelector('.body').innerText}))"
    )


def _count_paints_while_streaming(driver: Any) -> None:
    driver.execute_script(
        "window.__paints = 0; new MutationObserver(() => {"
        "  if (document.body.dataset.state === 'streaming') window.__paints++;"
        "}).observe(document.getElementById('conversation'),"
        "  {childList: true, subtree: true, characterData: true})"
    )


def _browser_errors(driver: Any) -> list[str]:
    logs = driver.get_log("browser")
    return [e["message"] for e in logs if e["level"] == "SEVERE" and "401" not in e["message"]]
