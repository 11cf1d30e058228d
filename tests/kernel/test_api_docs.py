"""/docs works with no internet access: Swagger UI 5 from the app itself, under a CSP.

The browser test drives Debian's headless Chromium (through its matching chromedriver)
against a real `userapi serve`: register through the API, open /docs, log in with the
Authorize dialog's OAuth2 password flow, run GET /users/me with "Try it out", and read
the user's email on the page. Every file the page loaded came from the server itself,
and the browser reported no error (a CSP refusal or a failed load is one).
"""

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as shown
from selenium.webdriver.support.ui import WebDriverWait

from kernel.settings import Settings
from tests.conftest import make_settings
from tests.factories import register, serving
from tests.servers import running_server

# Bounds each wait for the page (loading a 1.5 MB script, a login that runs argon2).
BROWSER_WAIT_SECONDS = 60.0
ME = "#operations-users-get_me"


@dataclass(frozen=True)
class Browser:
    chromium: str
    chromedriver: str


@pytest.fixture(scope="module")
def browser() -> Browser:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and chromedriver:
        return Browser(chromium, chromedriver)
    message = "the /docs test needs Debian's chromium and chromium-driver (apt-get install)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)  # under CI a missing browser fails the run
    pytest.skip(message)


@pytest.fixture
def driver(browser: Browser, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = browser.chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(browser.chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    chrome = webdriver.Chrome(service=service, options=options)
    chrome.set_page_load_timeout(BROWSER_WAIT_SECONDS)
    try:
        yield chrome
    finally:
        chrome.quit()


@dataclass(frozen=True)
class DocsVisit:
    swagger_ui_version: str
    response_shown: str
    loaded_from: set[str]
    browser_errors: list[str]


def use_docs(driver: webdriver.Chrome, base_url: str, email: str, password: str) -> DocsVisit:
    """What a person does on /docs: authorize with the password flow, then call GET /users/me."""
    wait = WebDriverWait(driver, BROWSER_WAIT_SECONDS, poll_frequency=0.05)

    def click(selector: str) -> None:
        wait.until(shown.element_to_be_clickable((By.CSS_SELECTOR, selector))).click()

    driver.get(f"{base_url}/docs")
    click("button.authorize")
    username = wait.until(shown.visibility_of_element_located((By.ID, "oauth_username")))
    username.send_keys(email)
    driver.find_element(By.ID, "oauth_password").send_keys(password)
    click(".auth-btn-wrapper button.authorize")
    # The dialog offers "Logout" once the token endpoint has answered with a token.
    wait.until(shown.text_to_be_present_in_element((By.CSS_SELECTOR, ".modal-ux"), "Logout"))
    click(".auth-btn-wrapper button.btn-done")
    click(f"{ME} .opblock-summary-control")
    click(f"{ME} button.try-out__btn")
    click(f"{ME} button.execute")
    live = f"{ME} .live-responses-table"
    wait.until(shown.text_to_be_present_in_element((By.CSS_SELECTOR, live), email))
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    # Selenium leaves get_log unannotated: a list of {"level", "message", ...} entries.
    log: list[dict[str, str]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return DocsVisit(
        swagger_ui_version=driver.execute_script("return window.versions.swaggerUI.version"),
        response_shown=driver.find_element(By.CSS_SELECTOR, live).text,
        loaded_from={str(httpx.URL(url).copy_with(path="/", query=None)) for url in resources},
        browser_errors=[entry["message"] for entry in log if entry["level"] == "SEVERE"],
    )


async def test_docs_authorizes_with_the_password_flow_and_calls_the_api(
    database_url: str, tmp_path: Path, driver: webdriver.Chrome
) -> None:
    async with (
        running_server(database_url, tmp_path, env={"DATA_DIR": str(tmp_path)}) as server,
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        account = await register(client)

        visit = await asyncio.to_thread(
            use_docs, driver, server.base_url, account.email, account.password
        )

    assert visit.swagger_ui_version.startswith("5.")  # the line that renders OpenAPI 3.1
    assert "200" in visit.response_shown
    assert f'"email": "{account.email}"' in visit.response_shown
    assert visit.loaded_from == {f"{server.base_url}/"}
    assert visit.browser_errors == []


@pytest.fixture
def docs_off(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, docs_enabled=False)


async def test_the_docs_page_allows_scripts_from_this_origin_only(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")

    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assert "'unsafe-inline'" not in policy
    assert "<script>" not in page.text  # no inline script for the policy to refuse
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "docs.js", "favicon.png"):
        assert f'"/docs/assets/{asset}"' in page.text
        served = await client.get(f"/docs/assets/{asset}")
        assert served.status_code == 200, asset
        assert served.content


async def test_only_the_pages_files_are_served_from_the_assets_path(
    client: httpx.AsyncClient,
) -> None:
    for name in ("redoc.standalone.js", "..%2F__init__.py", "docs.html"):
        response = await client.get(f"/docs/assets/{name}")

        assert response.status_code == 404, name
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["code"] == "not_found"


async def test_docs_disabled_serves_neither_the_page_nor_its_files(docs_off: Settings) -> None:
    async with serving(docs_off) as (_, client):
        for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"):
            response = await client.get(path)

            assert response.status_code == 404, path
