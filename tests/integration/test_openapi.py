"""The OpenAPI document lists every admin route, and nothing that is not a route."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from gateway.keys import ROUTE_SPECS


async def test_every_admin_route_is_documented(app_client: TestClient) -> None:
    resp = await app_client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app = app_client.server.app
    assert app is not None
    routed = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if info.startswith("/api/v1") and route.method not in ("HEAD", "OPTIONS"):
            routed.add((route.method, info))
    missing = routed - documented
    assert not missing, f"routes missing from openapi.json: {sorted(missing)}"
    assert documented == routed
    assert len(app[ROUTE_SPECS]) == len(routed)


async def test_protected_routes_declare_security(app_client: TestClient) -> None:
    doc = await (await app_client.get("/api/v1/openapi.json")).json()
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    assert "security" not in login
    assert login["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("LoginIn")
    me = doc["paths"]["/api/v1/auth/me"]["get"]
    assert me["security"] == [{"bearer": []}]
    assert "Error" in doc["components"]["schemas"]


async def test_a_file_upload_documents_its_types(app_client: TestClient) -> None:
    doc = await (await app_client.get("/api/v1/openapi.json")).json()
    upload = doc["paths"]["/api/v1/customers/{msisdn}/kyc-documents"]["post"]
    content = upload["requestBody"]["content"]
    assert sorted(content) == ["application/pdf", "image/jpeg", "image/png"]
    assert content["image/png"]["schema"] == {"type": "string", "format": "binary"}
    assert upload["x-permission"] == "customers:write"
