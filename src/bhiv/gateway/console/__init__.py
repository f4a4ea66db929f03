"""The web console, served by the gateway at ``/console``.

Server-rendered page shells (navigation, headings, empty tables with their
captions, the catalog's startup stages) and a little plain JavaScript that fills
them from the gateway's own API, from the browser, with the credential the user
pasted (kept in ``sessionStorage``; the server never sees it on a page load and
never writes one into a page). Roles are therefore enforced by the API exactly
as for any other client. Every asset ships in this package: no CDN, no build
step (docs/console.md says why).

Every URL a page uses is relative (``static/console.js``, ``../services``), so the
console works wherever the gateway is mounted: ``bhiv up`` on 127.0.0.1:8000 or
behind the cluster's Ingress.
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass
from importlib import resources
from string import Template

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from bhiv import catalog
from bhiv.core.errors import Problem
from bhiv.core.routing import service_router

PREFIX = "/console"
# Page slug (its URL under /console/, its fragment in pages/, its script in static/) -> label.
PAGES: dict[str, str] = {
    "platform": "Platform",
    "workflows": "Workflows",
    "integrations": "Integrations",
    "glance": "Logistics & CRM",
    "llm": "LLM",
}
# Same-origin only: scripts, styles and API calls come from the gateway itself,
# nothing inline, no frames, no form posts (sign-in is handled in script, so a
# credential can never end up in a URL).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
# Browsers honour Cross-Origin-Opener-Policy only on a trustworthy origin (HTTPS or
# loopback) and report it as a console error anywhere else, e.g. a plain-HTTP Ingress.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def security_headers(request: Request) -> dict[str, str]:
    """The console's response headers for this request's origin."""
    url = request.url
    if url.scheme == "https" or (url.hostname or "") in LOOPBACK_HOSTS:
        return {**SECURITY_HEADERS, "Cross-Origin-Opener-Policy": "same-origin"}
    return dict(SECURITY_HEADERS)


_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _package_files(folder: str) -> dict[str, bytes]:
    root = resources.files(__name__) / folder
    return {entry.name: entry.read_bytes() for entry in root.iterdir() if entry.is_file()}


def _load_assets() -> dict[str, Asset]:
    # Read once: the set of names is fixed, so a request can only ever name one
    # of these (no path from the URL reaches the file system).
    assets = {}
    for name, body in _package_files("static").items():
        suffix = name[name.rfind(".") :]
        if suffix in _TYPES:
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[name] = Asset(body, _TYPES[suffix], etag)
    return assets


ASSETS = _load_assets()
_FRAGMENTS = {
    name.removesuffix(".html"): body.decode() for name, body in _package_files("pages").items()
}
_SHELL = Template(_FRAGMENTS.pop("shell"))
assert set(_FRAGMENTS) == set(PAGES), "every page has a fragment in console/pages"


def _catalog_json() -> str:
    """The startup stages the platform graph is laid out by; public facts only."""
    entries = [
        {"name": e.name, "prefix": e.prefix, "stage": e.stage, "capabilities": list(e.capabilities)}
        for e in sorted(catalog.SERVICES.values(), key=lambda e: (e.stage, e.name))
    ]
    # "<" escaped so no value can close the <script> data block.
    return json.dumps({"services": entries}).replace("<", "\\u003c")


def render(page: str) -> str:
    current = ' aria-current="page"'
    nav = "\n".join(
        f'<li><a href="{slug}"{current if slug == page else ""}>{html.escape(label)}</a></li>'
        for slug, label in PAGES.items()
    )
    assets = {name: asset.etag.strip('"')[:12] for name, asset in ASSETS.items()}
    return _SHELL.substitute(
        title=html.escape(PAGES[page]),
        page=page,
        nav=nav,
        content=_FRAGMENTS[page],
        catalog=_catalog_json(),
        # Cache busting: a new release changes the query, so browsers never mix versions.
        v_css=assets["console.css"],
        v_js=assets["console.js"],
        v_graph=assets["graph.js"],
        v_page=assets[f"{page}.js"],
    )


# Rendered once: a page depends on nothing but the package's own files and the catalog.
RENDERED = {page: render(page) for page in PAGES}
router = service_router(include_in_schema=False)


def _page_response(page: str, request: Request) -> Response:
    # The shell holds nothing secret, but no-store keeps it simple to reason about:
    # nothing the console shows is ever written to a disk cache.
    return Response(
        RENDERED[page],
        media_type="text/html; charset=utf-8",
        headers={**security_headers(request), "Cache-Control": "no-store"},
    )


@router.get(PREFIX)
async def console_root(request: Request) -> Response:
    # Relative, so it is right behind any proxy: /console -> /console/.
    return RedirectResponse("console/", status_code=308, headers=security_headers(request))


@router.get(PREFIX + "/")
async def console_home(request: Request) -> Response:
    return _page_response("platform", request)


@router.get(PREFIX + "/static/{name}")
async def console_asset(name: str, request: Request) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise Problem(404, f"The console has no asset {name!r}.", kind="not-found")
    # Public code, no data: revalidated on every load (ETag), never stale.
    headers = {**security_headers(request), "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get(PREFIX + "/{page}")
async def console_page(page: str, request: Request) -> Response:
    if page not in PAGES:
        known = ", ".join(PAGES)
        raise Problem(404, f"The console has no page {page!r}; pages: {known}.", kind="not-found")
    return _page_response(page, request)


def mount(app: FastAPI) -> None:
    """Serve the console from ``app``: public pages, every data call authenticated by the API."""
    app.include_router(router)
