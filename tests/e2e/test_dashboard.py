"""The dashboard page: served only with an admin key configured; its data needs the key."""

from __future__ import annotations

import re

import httpx

from tests.conftest import GatewayFactory


def test_dashboard_needs_admin_enabled(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    answer = httpx.get(gateway.url + "/dashboard")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "admin_disabled"


def test_dashboard_page_and_the_data_it_reads(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": "dash-admin-key"})
    gateway.client().responses.create(model="mavera-1", input="hi")
    page = httpx.get(gateway.url + "/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "dash-admin-key" not in page.text
    paths = re.findall(r"get\(`(/admin/[^?`]+)", page.text)
    assert paths == ["/admin/usage", "/admin/usage/records"]
    gateway.flush()
    for path in paths:
        assert httpx.get(gateway.url + path).status_code == 401
        data = httpx.get(
            gateway.url + path, headers={"authorization": "Bearer dash-admin-key"}
        ).json()["data"]
        assert len(data) == 1
