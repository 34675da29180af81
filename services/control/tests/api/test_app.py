"""The app's frame: health, metrics, OpenAPI, tokens and roles, problems, the admin log."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

Auth = Callable[..., dict[str, str]]


def test_health_ready_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "zgate_control_up 1.0" in client.get("/metrics").text
    document = client.get("/api/v1/openapi.json").json()
    assert document["info"]["title"] == "zgate control plane"
    assert "/api/v1/tokens" in document["paths"]


def test_requests_without_or_with_a_bad_token_get_a_401_problem(client: TestClient) -> None:
    unknown = "zgt_" + "0" * 12 + "_" + "x" * 43
    for value in (None, "Bearer nope", f"Bearer {unknown}"):
        headers = {"Authorization": value} if value else {}
        request = client.build_request("GET", "/api/v1/tokens", headers=headers)
        if value is None:
            del request.headers["Authorization"]
        response = client.send(request)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == 401 and body["instance"] == "/api/v1/tokens"
        assert response.headers["www-authenticate"] == "Bearer"


def test_roles_are_enforced(client: TestClient, auth: Auth) -> None:
    for role in ("operator", "viewer", "relay"):
        response = client.get("/api/v1/tokens", headers=auth(role))
        assert response.status_code == 403, role
        assert response.json()["type"] == "urn:zgate:problem:forbidden"
    assert client.get("/api/v1/admin-log", headers=auth("viewer")).status_code == 200
    assert client.get("/api/v1/admin-log", headers=auth("relay")).status_code == 403


def test_token_lifecycle_and_admin_log(client: TestClient, auth: Auth) -> None:
    created = client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"})
    assert created.status_code == 201
    body = created.json()
    token = body["token"]
    assert token.startswith(f"zgt_{body['id']}_")
    viewer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/admin-log", headers=viewer).status_code == 200
    listed = client.get("/api/v1/tokens").json()["items"]
    assert any(t["id"] == body["id"] for t in listed)
    assert all("token" not in t and "secret_hash" not in t for t in listed)
    assert client.delete(f"/api/v1/tokens/{body['id']}").status_code == 204
    assert client.get("/api/v1/admin-log", headers=viewer).status_code == 401
    log = client.get("/api/v1/admin-log").json()["items"]
    actions = [(e["action"], e["target"], e["status"]) for e in log]
    assert ("token.revoke", body["id"], 204) in actions
    assert ("token.create", body["id"], 201) in actions
    # a refused mutating call is recorded too, with its status
    refused = client.post(
        "/api/v1/tokens", headers=auth("viewer"), json={"name": "x", "role": "admin"}
    )
    assert refused.status_code == 403
    entries = client.get("/api/v1/admin-log", params={"actor": "test-viewer"}).json()["items"]
    assert entries and entries[0]["status"] == 403


def test_validation_errors_are_problems_naming_the_field(client: TestClient) -> None:
    response = client.post("/api/v1/tokens", json={"name": "", "role": "king"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert {"name", "role"} <= {e["field"] for e in response.json()["errors"]}


def test_token_pages_follow_the_cursor(client: TestClient) -> None:
    for i in range(5):
        assert (
            client.post("/api/v1/tokens", json={"name": f"t{i}", "role": "viewer"}).status_code
            == 201
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/tokens", params=params).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6  # five plus the fixture's admin token
    assert client.get("/api/v1/tokens", params={"cursor": "garbage!"}).status_code == 400
