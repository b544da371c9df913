"""Chromium through Playwright for the browser tests (tests/test_browser.py).

Debian's chromium at CHROMIUM, never a downloaded browser. A missing one
fails the tests with the command that installs it, instead of skipping them.
Each page collects its console messages and uncaught errors, so a test can
assert that none appeared; screenshots go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Yield a Playwright Browser on Debian's chromium, for one test module."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium "
            "(apt-get install -y chromium; .ci/run does it) to run the browser tests"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, so
    # Django takes the test's own database calls (the flush after each
    # test) for async code. Only this process: tests.live.process_env keeps
    # the variable from the web and worker processes.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and what it printed: console messages and uncaught errors."""

    page: object
    messages: list[str] = field(default_factory=list)

    def problems(self, *allowed: str) -> list[str]:
        """Return errors and warnings, except those matching ``allowed``."""
        return [m for m in self.messages if not any(re.search(a, m) for a in allowed)]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def open_page(chromium: object) -> Iterator[object]:
    """Return a function making a watched page in a fresh browser context."""
    contexts = []

    def make(**context_options: object) -> Watched:
        context = chromium.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page)

        def on_console(message: object) -> None:
            if message.type in ("error", "warning"):
                watched.messages.append(f"{message.type}: {message.text}")

        page.on("console", on_console)

        def on_response(response: object) -> None:
            # Chromium's console names no URL for a failed load: record them.
            if response.status >= 400:
                watched.messages.append(f"http {response.status}: {response.url}")

        page.on("response", on_response)
        return watched

    yield make
    for context in contexts:
        context.close()
