"""The console page in headless Chromium (Debian's ``chromium``, driven by Playwright).

Two clients connect and their rows appear; a fan-out shows both results; one
client leaves and its row goes. ``BRPC_CONSOLE_SCREENSHOT=path`` saves a
screenshot of the page (docs/gateway-console.png is made that way).
"""

from __future__ import annotations

import os
import shutil

from conftest import DialFactory, ServerFactory
from playwright.async_api import async_playwright

from brpc.gateway import HttpGateway
from brpc.testing import EchoService

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def test_console_shows_clients_and_fan_out_results(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    assert shutil.which("chromium") == CHROMIUM, "chromium is missing: ./scripts/test installs it"
    server = await make_server()
    gateway = HttpGateway(server)
    url = f"http://127.0.0.1:{await gateway.start('127.0.0.1', 0)}/"
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 720})
                page.set_default_timeout(20_000)
                await page.goto(url)
                await page.wait_for_selector("#live.on")
                await connect(
                    server, name="alpha", labels={"role": "web"}, services=[EchoService()]
                )
                beta = await connect(
                    server, name="beta", labels={"role": "db"}, services=[EchoService()]
                )
                await page.wait_for_selector('#clients tr[data-name="alpha"]')
                await page.wait_for_selector('#clients tr[data-name="beta"]')
                assert await page.locator("#clients tr").count() == 2

                await page.fill("#body", '{"text": "from the console"}')
                await page.fill("#selector", "*")
                await page.click("#fanout")
                for name in ("alpha", "beta"):
                    result = page.locator(f'.result.ok[data-client="{name}"]')
                    await result.wait_for()
                    assert "from the console" in await result.inner_text()
                await page.wait_for_selector(".result[data-summary]")
                assert "2 ok, 0 failed" in await page.inner_text(".result[data-summary]")

                await page.click('#clients tr[data-name="beta"]')
                await page.fill("#body", '{"text": "just beta"}')
                await page.click("#call")
                one = page.locator('.result.ok[data-client="beta"]', has_text="just beta")
                await one.wait_for()

                screenshot = os.environ.get("BRPC_CONSOLE_SCREENSHOT")
                if screenshot:
                    await page.screenshot(path=screenshot, full_page=True)

                await beta.close()
                await page.wait_for_selector('#clients tr[data-name="beta"]', state="detached")
                assert await page.locator("#clients tr").count() == 1
            finally:
                await browser.close()
    finally:
        await gateway.close()
