"""The OpenAPI document: valid, complete, and true of the live server (every route walked)."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from test_api_http import AUTH, TOKEN, wait_status, write_project

from engine import Engine
from engine._api import ROUTES, build_openapi, create_app

pytestmark = pytest.mark.anyio


def test_document_is_valid_openapi():
    doc = build_openapi()
    validate(doc)
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]


def test_document_lists_exactly_the_served_routes():
    doc = build_openapi()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}
    app = create_app(object(), token=TOKEN)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
    }
    assert served == documented
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert (op.get("security") == []) == (not route.auth), route.path
        for name in re.findall(r"{(\w+)}", route.path):
            assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"])


def _schema(doc, op, status):
    content = op["responses"][str(status)]["content"]
    media = content.get("application/json") or content["text/plain"]
    return Draft202012Validator({**media["schema"], "components": doc["components"]})


def _body_schema(doc, name):
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


CALLS = {
    ("POST", "/api/admin/task-history"): {"json": {"task_name": "hello", "limit": 5, "sort": "executed_at desc"}},
    ("POST", "/api/admin/trigger-task"): {"json": {"task_name": "hello", "trigger_source": "manual_dashboard"}},
    ("POST", "/api/tasks/{name}/trigger"): {"json": {"source": "openapi-walk"}},
}


async def test_every_documented_route_answers_as_documented(tmp_path):
    doc = build_openapi()
    proj = write_project(tmp_path)
    async with Engine.open(proj, database=f"sqlite:///{tmp_path / 'e.db'}") as engine:
        run = await engine.trigger("boom", wait=True)
        slow = await engine.trigger("slow")
        await wait_status(engine, slow, {"running"})
        app = create_app(engine, token=TOKEN)
        async with TestClient(TestServer(app)) as client:
            for path, ops in doc["paths"].items():
                for method, op in ops.items():
                    target = slow if path.endswith("/cancel") else run["id"]
                    url = path.replace("{name}", "hello").replace("{run_id}", target)
                    kwargs = CALLS.get((method.upper(), path), {})
                    if "requestBody" in op and "json" in kwargs:
                        schema_name = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                        _body_schema(doc, schema_name).validate(kwargs["json"])
                    resp = await client.request(method.upper(), url, headers=AUTH, **kwargs)
                    assert str(resp.status) in op["responses"], (method, path, resp.status)
                    assert resp.status < 400, (method, path, await resp.text())
                    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
                    _schema(doc, op, resp.status).validate(body)
                    if "security" not in op:
                        denied = await client.request(method.upper(), url, **kwargs)
                        assert denied.status == 401 and str(denied.status) in op["responses"]
                        _schema(doc, op, 401).validate(await denied.json())
            # the documented error shape for a 404 and a 400
            for url, status in (("/api/tasks/nope", 404), ("/api/tasks/hello/runs?limit=0", 400)):
                resp = await client.get(url, headers=AUTH)
                op = doc["paths"][url.split("?")[0].replace("nope", "{name}").replace("/hello/", "/{name}/")]["get"]
                assert resp.status == status
                _schema(doc, op, status).validate(await resp.json())
            # a run with trace validates as a Run
            full = await (await client.get(f"/api/runs/{run['id']}", headers=AUTH)).json()
            _body_schema(doc, "Run").validate(full)
            waited = await client.post("/api/tasks/hello/trigger?wait=true", headers=AUTH)
            op = doc["paths"]["/api/tasks/{name}/trigger"]["post"]
            _schema(doc, op, waited.status).validate(await waited.json())
