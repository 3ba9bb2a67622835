"""Bad input: fuzzed definitions, sandbox-escape and injection attempts, hostile files, API auth.

Whatever a definition holds, loading it raises ``CompileError`` or nothing:
never another exception, never a hang. Whatever a stack tries at run time, it
reaches data only: no Python attribute, no SQL outside bound parameters, no
file outside the project.
"""

import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import CompileError, load_definitions
from engine import Engine, EngineConfig

pytestmark = pytest.mark.anyio

VALID = {
    "name": "fuzzed", "schedule": "*/5 * * * *", "timeout": 30,
    "retry_policy": {"max_retries": 1, "retry_delay": 5},
    "stack": [
        {"function": "create_variable", "name": "x", "value": "{{ [1, 2, 3]|length }}"},
        {"function": "loop", "array": "{{ [1, 2] }}", "operations": [
            {"function": "conditional", "condition": "item > 1",
             "true_branch": [{"function": "update_variable", "name": "x", "operation": "increment", "value": 1}]}]},
        {"function": "add_record", "table": "t", "data": {"x": "{{ x }}"}},
        {"function": "return", "value": "{{ x * 2 }}"},
    ],
}
TRIED = {"definitions": 0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
    | st.sampled_from(["{{ x }}", "{{", "}}", "{{ __class__ }}", "{{ 1/0 }}", "* * * * *", "stack",
                       "function", "return", "loop", "wait", "{{ x.__dict__ }}", "\x00", "☃"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["name", "stack", "function", "value", "schedule", "timeout", "retry_policy",
                         "condition", "operations", "array", "table", "data", "url", "x", "overlap"])
        | st.text(max_size=8), inner, max_size=6),
    max_leaves=30,
)


def mutate(draw_path, value, new):
    """Replace the node at ``draw_path`` in a deep copy of ``value`` with ``new``."""
    out = json.loads(json.dumps(value))
    node = out
    for key in draw_path[:-1]:
        node = node[key]
    node[draw_path[-1]] = new
    return out


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


ALL_PATHS = [p for p in paths(VALID) if p]


def load_only_compile_errors(defs):
    TRIED["definitions"] += 1
    try:
        load_definitions(defs)
    except CompileError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=3))
def test_random_json_definitions_raise_only_compile_errors(defs):
    load_only_compile_errors(defs)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_PATHS), json_values)
def test_mutated_valid_definitions_raise_only_compile_errors(path, new):
    load_only_compile_errors([mutate(path, VALID, new)])


def test_valid_definition_still_compiles():
    assert "fuzzed" in load_definitions([VALID]).tasks


ESCAPES = [
    "{{ x.__class__ }}", "{{ x.__class__.__mro__ }}", "{{ ''.__class__.__subclasses__ }}",
    "{{ x.upper }}", "{{ env.__dict__ }}", "{{ task.__globals__ }}", "{{ x['__class__'] }}",
    "{{ (x|keys).__len__ }}", "{{ now.real }}", "{{ uuid.replace }}",
]


@pytest.mark.parametrize("expr", ESCAPES)
async def test_python_attributes_are_unreachable(expr):
    async with Engine.open([]) as engine:
        try:
            result = await engine.run_stack([{"function": "return", "value": expr}], {"x": {"a": 1}})
        except CompileError:
            return
        except Exception as exc:
            assert type(exc).__name__ == "RunFailed", exc
            return
        assert result is None, f"{expr} reached {result!r}"


INJECTIONS = [
    {"function": "query_all_records", "table": "t; DROP TABLE t", "return_as": "r"},
    {"function": "query_all_records", "table": "{{ 't\" ; DROP TABLE t; --' }}", "return_as": "r"},
    {"function": "query_all_records", "table": "t", "sort": "id; DROP TABLE t", "return_as": "r"},
    {"function": "query_all_records", "table": "t", "sort": "{{ 'x) desc; DROP TABLE t --' }}", "return_as": "r"},
    {"function": "query_all_records", "table": "t", "filter": {"a') OR 1=1 --": 1}, "return_as": "r"},
    {"function": "query_all_records", "table": "t", "filter": {"$or": [{"x": "1' OR '1'='1"}]}, "return_as": "r"},
    {"function": "add_record", "table": "sqlite_master", "data": {"x": 1}},
    {"function": "add_record", "table": "cronstack_runs", "data": {"x": 1}},
    {"function": "edit_records", "table": "t", "filter": {"x": {"$like": "%"}}, "data": {"id": "hijack"}},
    {"function": "count_records", "table": "{{ '../t' }}", "return_as": "r"},
]


@pytest.mark.parametrize("step", INJECTIONS)
async def test_sql_through_names_never_runs(step):
    async with Engine.open([]) as engine:
        await engine.store.add("t", {"x": "1"})
        try:
            await engine.run_stack([step])
        except Exception as exc:
            assert type(exc).__name__ in ("RunFailed", "CompileError"), repr(exc)
        assert await engine.store.count("t") == 1, "the table survived"
        assert [r["x"] for r in await engine.store.query("t")] == ["1"]
        assert await engine.store.count_runs() == 0, "engine tables untouched"


@pytest.mark.parametrize("url", ["sqlite:///../outside.db", "sqlite:///../../etc/x.db", "sqlite:///a/../../x.db",
                                 "sqlite:///x.db?mode=ro", "file:///etc/passwd", "sqlite:///x\x00.db"])
async def test_data_source_paths_cannot_leave_the_project(tmp_path, url):
    project = tmp_path / "p"
    project.mkdir()
    (project / "t.json").write_text(json.dumps({"name": "t", "data_source": "s", "stack": []}))
    (project / "cronstack.toml").write_text(f"[data_sources]\ns = {json.dumps(url)}\n")
    with pytest.raises(Exception) as info:
        async with Engine.open(project, database=f"sqlite:///{tmp_path / 'main.db'}"):
            pass
    assert "CompileError" in type(info.value).__name__ or "Store" in type(info.value).__name__ \
        or "UnsupportedDatabase" in type(info.value).__name__, repr(info.value)
    assert not (tmp_path / "outside.db").exists()


@pytest.mark.parametrize("content", [
    b"\xff\xfe{\"name\": \"bad\"}",                            # invalid UTF-8
    pytest.param(b"{\"name\": \"t\", \"stack\": [" + b"[" * 100_000 + b"]" * 100_000 + b"]}",
                 id="deeply-nested"),
    b"{\"name\": \"t\", \"stack\": [{\"function\": \"return\", \"value\": " + b"9" * 100_000 + b"}]}",  # huge number
    b"{\"name\": \"t\", \"stack\": [], \"x\": \"" + b"a" * 5_000_000 + b"\"}",  # oversized
    b"{\"name\": \"t\", \"name\": \"u\", \"stack\": []}",    # duplicate key
    b"",                                                       # empty
])
def test_hostile_definition_files_are_compile_errors(tmp_path, content):
    (tmp_path / "task.json").write_bytes(content)
    try:
        defs = load_definitions(tmp_path)
    except CompileError as exc:
        assert "task.json" in str(exc)
    else:
        assert all(t.name in ("t", "u") for t in defs.tasks.values())


async def test_huge_numbers_at_run_time_are_run_errors():
    async with Engine.open([]) as engine:
        for expr in ("{{ 10 ** 100000 }}", "{{ 9999999999999999999999 * 99999999999999999999 }}",
                     "{{ 1e308 * 10 }}", "{{ '9' * 10 }}"):
            try:
                await engine.run_stack([{"function": "return", "value": expr}])
            except Exception as exc:
                assert type(exc).__name__ in ("RunFailed", "CompileError"), repr(exc)


async def test_admin_api_refuses_missing_and_wrong_tokens(monkeypatch):
    monkeypatch.setattr("engine._engine.load_config", lambda _d: EngineConfig(token="s3cret-token"))
    async with Engine.open([{"name": "t", "stack": []}]) as engine:
        await engine.serve(host="127.0.0.1", port=0)
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                            {"Authorization": "Bearer s3cret-toke"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
                for method, path in (("GET", "/api/admin/active-tasks"), ("POST", "/api/admin/trigger-task"),
                                     ("GET", "/api/tasks"), ("POST", "/api/tasks/t/trigger")):
                    async with http.request(method, engine.api_url + path, headers=headers, json={"task_name": "t"}) as r:
                        assert r.status in (401, 403), (headers, path, r.status)
                        assert "message" in await r.json()
            async with http.get(engine.api_url + "/api/tasks", headers={"Authorization": "Bearer s3cret-token"}) as r:
                assert r.status == 200
        assert await engine.runs("t") == [], "no unauthenticated trigger ran"
