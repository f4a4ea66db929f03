"""The console's pages and assets over real HTTP: public, same-origin only, nothing secret.

The gateway here (tests/service/gateway/conftest.py) has API keys, a JWT secret
and routes configured; none of that may reach a page, and no page may load or
call anything from another origin.
"""

from __future__ import annotations

import re

import httpx
import pytest

from bhiv.gateway.console import ASSETS, PAGES
from tests.service.gateway.conftest import EDITOR_KEY, VIEWER_KEY
from tests.support.servers import TEST_JWT_SECRET, ServiceProcess

PAGE_PATHS = ["/console/", *(f"/console/{page}" for page in PAGES)]
ASSET_PATHS = [f"/console/static/{name}" for name in ASSETS]


def _csp(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in policy.split(";")) if d}


@pytest.mark.parametrize("path", PAGE_PATHS + ASSET_PATHS)
def test_served_without_a_credential_with_security_headers(
    gateway: ServiceProcess, path: str
) -> None:
    r = httpx.get(gateway.url + path)
    assert r.status_code == 200, r.text
    csp = _csp(r)
    assert csp["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "connect-src"):
        assert csp[directive] == ["'self'"], directive  # no other origin, nothing inline
    assert csp["frame-ancestors"] == ["'none'"] and csp["form-action"] == ["'none'"]
    assert "http" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    if path in PAGE_PATHS:
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-store"
    else:
        assert r.headers["content-type"].startswith(("text/javascript", "text/css"))
        assert r.headers["cache-control"] == "no-cache"  # revalidated, never stale
        again = httpx.get(gateway.url + path, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


def test_opener_policy_only_where_a_browser_honours_it(gateway: ServiceProcess) -> None:
    """COOP on a trustworthy origin (loopback, HTTPS); not on a plain-HTTP host name,
    where browsers ignore it and log an error in the console instead."""
    local = httpx.get(gateway.url + "/console/")
    assert local.headers["cross-origin-opener-policy"] == "same-origin"
    plain = httpx.get(gateway.url + "/console/", headers={"Host": "bhiv.example"})
    assert plain.status_code == 200 and "cross-origin-opener-policy" not in plain.headers
    assert plain.headers["content-security-policy"] == local.headers["content-security-policy"]


def test_no_page_or_asset_holds_a_secret_or_an_outside_url(gateway: ServiceProcess) -> None:
    # Signed in or not, a page is the same: the server never writes a credential into one.
    token = gateway.token("admin")
    secrets = [TEST_JWT_SECRET, VIEWER_KEY, EDITOR_KEY, token]
    for path in PAGE_PATHS + ASSET_PATHS:
        anonymous = httpx.get(gateway.url + path)
        signed = httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {token}"})
        assert anonymous.content == signed.content, path
        for secret in secrets:
            assert secret not in anonymous.text, path
        # Every URL is relative (it works behind an Ingress); nothing from a CDN.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", anonymous.text), path
        assert 'fetch("http' not in anonymous.text and "://" not in anonymous.text.replace(
            "http://www.w3.org/2000/svg", ""
        ), path


def test_console_paths_are_exact(gateway: ServiceProcess) -> None:
    # /console redirects to /console/ with a relative Location, right behind any proxy.
    r = httpx.get(gateway.url + "/console")
    assert r.status_code == 308 and r.headers["location"] == "console/"
    assert httpx.get(gateway.url + "/console", follow_redirects=True).url.path == "/console/"
    for path in (
        "/console/nope",
        "/console/static/nope.js",
        "/console/static/..%2F__init__.py",
        "/console/static/%2e%2e%2fpages%2fshell.html",
    ):
        r = httpx.get(gateway.url + path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/problem+json"


def test_the_api_the_console_calls_still_needs_a_credential(gateway: ServiceProcess) -> None:
    # The console's pages are public; the data they show is not.
    assert httpx.get(gateway.url + "/services").status_code == 401
    assert httpx.get(gateway.url + "/auth/verify").status_code == 401
    r = httpx.get(gateway.url + "/auth/verify", headers={"X-API-Key": VIEWER_KEY})
    assert r.status_code == 200 and r.json()["roles"] == ["viewer"]
