"""The dashboard's files over plain HTTP: served only with an admin key configured, no key in
them, a strict Content-Security-Policy, and every admin path the page reads needs the key.
tests/e2e/test_dashboard_browser.py drives the page itself in chromium."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import GatewayFactory

ADMIN_KEY = "dash-admin-key"
FILES = {
    "/dashboard": "text/html",
    "/dashboard/app.js": "text/javascript",
    "/dashboard/charts.js": "text/javascript",
    "/dashboard/app.css": "text/css",
}


@pytest.mark.parametrize("path", FILES)
def test_dashboard_needs_admin_enabled(make_gateway: GatewayFactory, path: str) -> None:
    gateway = make_gateway()
    answer = httpx.get(gateway.url + path)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "admin_disabled"


def test_dashboard_files_hold_no_key_and_allow_only_self(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    for path, media_type in FILES.items():
        answer = httpx.get(gateway.url + path)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(media_type)
        assert ADMIN_KEY not in answer.text
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
        assert answer.headers["cache-control"] == "no-cache"
        again = httpx.get(gateway.url + path, headers={"if-none-match": answer.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    page = httpx.get(gateway.url + "/dashboard").text
    assert "<script>" not in page and "<style>" not in page and " style=" not in page
    assert re.findall(r'<script defer src="([^"]+)"', page) == [
        "/dashboard/charts.js",
        "/dashboard/app.js",
    ]


def test_the_admin_data_the_page_reads_needs_the_key(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    gateway.client().responses.create(model="mavera-1", input="hi")
    gateway.flush()
    script = httpx.get(gateway.url + "/dashboard/app.js").text
    paths = sorted(set(re.findall(r'(?:get|attempt)\([`"](/admin/[a-z/]+)', script)))
    assert paths == ["/admin/clients/", "/admin/keys", "/admin/reconcile", "/admin/usage"]
    for path in ["/admin/keys", "/admin/usage", "/admin/reconcile", "/admin/clients/local/spend"]:
        assert httpx.get(gateway.url + path).status_code == 401
        wrong = httpx.get(gateway.url + path, headers={"authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        answer = httpx.get(gateway.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert answer.status_code == 200
    report = httpx.get(
        gateway.url + "/admin/usage",
        params={"by": "day", "client": "local"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()["data"]
    assert [row["requests"] for row in report] == [1]
    other = httpx.get(
        gateway.url + "/admin/usage",
        params={"by": "day", "client": "someone-else"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()["data"]
    assert other == []
    tagged = httpx.get(
        gateway.url + "/admin/usage",
        params={"by": "tag", "client": "local"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()["data"]
    assert [(row["tag"], row["requests"]) for row in tagged] == [("(none)", 1)]
