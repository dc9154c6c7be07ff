"""The dashboard: one page and its script and style sheet, served from the package's static files.

The page holds no key and no data: it asks for the admin key, keeps it in the tab's
sessionStorage and reads the admin API with it. A strict Content-Security-Policy allows only the
gateway's own script, style and API, so nothing inline runs and nothing leaves for another host.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admin import AdminDisabled
from app.api.schemas import ERRORS
from app.state import Gateway

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The file name in app/static/ and its content type, per served path.
ASSETS = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/charts.js": ("dashboard-charts.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("dashboard.css", "text/css; charset=utf-8"),
}

dashboard_router = APIRouter(tags=["admin"])


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """A static file's bytes and its ETag (the files change only with the package)."""
    body = resources.files("app").joinpath("static", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _serve(request: Request, path: str) -> Response:
    gateway: Gateway = request.app.state.gateway
    if gateway.settings.admin.key is None:
        raise AdminDisabled("the dashboard is off: set MAVERA_GATEWAY_ADMIN_KEY to enable it")
    name, media_type = ASSETS[path]
    body, etag = _asset(name)
    headers = {
        # Revalidate every time (cheap with the ETag): a new release's page never runs old code.
        "Cache-Control": "no-cache",
        "ETag": etag,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@dashboard_router.get(
    "/dashboard",
    summary="Usage dashboard (asks for the admin key itself)",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}, 404: ERRORS[400]},
)
async def dashboard(request: Request) -> Response:
    """GET /dashboard: the page; it asks for the admin key and reads the admin API with it."""
    return _serve(request, "/dashboard")


@dashboard_router.get("/dashboard/app.js", include_in_schema=False)
async def dashboard_script(request: Request) -> Response:
    """GET /dashboard/app.js: the page's script (charts drawn as SVG, no library)."""
    return _serve(request, "/dashboard/app.js")


@dashboard_router.get("/dashboard/charts.js", include_in_schema=False)
async def dashboard_charts(request: Request) -> Response:
    """GET /dashboard/charts.js: the hand-made SVG charts the page draws with."""
    return _serve(request, "/dashboard/charts.js")


@dashboard_router.get("/dashboard/app.css", include_in_schema=False)
async def dashboard_style(request: Request) -> Response:
    """GET /dashboard/app.css: the page's style sheet."""
    return _serve(request, "/dashboard/app.css")
