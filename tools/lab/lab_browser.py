"""Debian's chromium, driven by Playwright, signing in at the edge like a
person: the edge's browser test and the edge benchmark share this.

The browser trusts the lab's web CA through its own NSS database (as a person
would import it), never by ignoring certificate errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# oauth2-proxy's host-only session cookie (roles/oauth2_proxy), split as
# <name>_0, <name>_1, ... when large.
SESSION_COOKIE = "__Host-consul_edge_session"


@contextmanager
def trusted_browser(ca: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="edge-browser-"))
    try:
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "lab-web-ca",
                        "-i", str(ca)], check=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"],
                                                 env={**os.environ, "HOME": str(home)})
            try:
                yield browser
            finally:
                browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def sign_in(browser, base_url: str, user: str, password: str, start: str = "/ui/"):
    """Open `start` in a new browser context and sign in through the IdP's
    form; returns (context, page) once the redirects have settled."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(base_url + start)
    if "/login" not in page.url:
        context.close()
        raise AssertionError(f"expected the IdP's sign-in form, got {page.url}")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#submit")
    page.wait_for_load_state("networkidle")
    return context, page


def session_cookie(context, url: str | None = None) -> str:
    """The edge's session cookie(s) as a Cookie header value: those the
    browser would send to `url` (the UI's origin), or of every site."""
    return "; ".join(f"{c['name']}={c['value']}" for c in context.cookies(*([url] if url else []))
                     if c["name"].startswith(SESSION_COOKIE))
