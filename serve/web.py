"""``GET /``: the browser page for the loaded bundles, shipped as static files in the package.

The page (``serve/static``: HTML, CSS, JavaScript; no build step, nothing fetched from elsewhere)
reads ``/models`` and ``/openapi.json`` to see what this server offers, then calls the same JSON
endpoints a script would. LitServe answers ``GET /`` with a plain "litserve running"; that route
is replaced by the page.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

STATIC_PACKAGE = ("serve", "static")
STATIC_PATH = "/static"


def add_web_page(app: FastAPI) -> None:
    """Serve the page at ``GET /`` and its assets under ``/static``."""
    page = resources.files(STATIC_PACKAGE[0]).joinpath(STATIC_PACKAGE[1], "index.html")
    html = page.read_text(encoding="utf-8")

    async def index() -> HTMLResponse:
        """The web page: translate, classify a drawn digit, continue text."""
        return HTMLResponse(html)

    app.router.routes[:] = [
        route for route in app.router.routes if not (isinstance(route, Route) and route.path == "/")
    ]
    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse)
    app.mount(STATIC_PATH, StaticFiles(packages=[STATIC_PACKAGE]), name="static")
