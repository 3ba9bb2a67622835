"""Values that share parts: ``[s, s]`` forty times over is 41 lists in memory and 2**40 entries written out.

Every place that writes a value out or walks it as a tree measures it first
(``runtime._values.check_limits`` / ``written_size``), in time linear in its
distinct parts, and stops with a clear ``LimitExceeded`` instead of holding
the event loop. Each test here would hang (or exhaust memory) without that.
"""

import msgspec
import pytest
from aiohttp import web

from engine import Engine, EngineConfig, RunFailed
from engine._http import HttpClient
from engine._http.message import BadValue, encode_body
from engine._http.message import to_text as http_text
from engine._store import codec
from engine._trace import RunTrace
from runtime import LimitExceeded, RunContext, execute
from runtime._limits import MAX_LIST_LENGTH, MAX_NESTING_DEPTH, MAX_STRING_LENGTH, MAX_VALUE_CHARS, MAX_VALUE_NODES
from runtime._values import check_limits, eq, to_text, written_size
from runtime.filters import REGISTRY
from tests.test_vm import Quiet, compile_stack, cv, ret, uv

pytestmark = pytest.mark.anyio

EXPANDS = "would expand to more than"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def doubled(n, leaf=None):
    """``[s, s]`` n times over: n + 1 lists in memory, 2**n leaves written out."""
    s = [1] if leaf is None else leaf
    for _ in range(n):
        s = [s, s]
    return s


def loop_stack(n, *tail):
    return [cv("s", [1]), {"function": "loop", "times": n, "operations": [uv("s", "set", "{{ [s, s] }}")]}, *tail]


# -- the measure ------------------------------------------------------------------------------


def test_written_size_counts_shared_parts_each_time_they_appear():
    leaf = {"a": "xyz", "bb": [1, 2]}
    assert written_size([leaf, leaf, "q"]) == (3 + 2 * (2 + 2), 2 * (1 + 3 + 2) + 1)
    assert written_size(doubled(10)) == (2 * (2**10 - 1) + 2**10, 0)
    assert written_size({"k": "v"}) == (1, 2) and written_size("abc") == (0, 3) and written_size(5) == (0, 0)


@pytest.mark.timeout(5)
def test_check_limits_refuses_a_value_that_writes_out_past_the_entry_limit_at_once():
    with pytest.raises(LimitExceeded, match=f"{EXPANDS} {MAX_VALUE_NODES:,} entries when written out"):
        check_limits(doubled(40))  # walking 2**41 entries would run past the timeout by days
    check_limits(doubled(20))  # 2 million entries: a value like any other


@pytest.mark.timeout(5)
def test_a_text_repeated_through_sharing_counts_each_time_flat_or_nested():
    big = "x" * (MAX_STRING_LENGTH // 2)
    n = MAX_VALUE_CHARS // len(big) + 1
    with pytest.raises(LimitExceeded, match=f"{MAX_VALUE_CHARS:,} characters of text"):
        check_limits([big] * n)  # one list holding one text n times
    with pytest.raises(LimitExceeded, match=f"{MAX_VALUE_CHARS:,} characters of text"):
        check_limits(doubled(6, [big]))
    with pytest.raises(LimitExceeded, match="characters of text"):
        check_limits(doubled(30, {big: 1}))  # keys are written out too
    check_limits([big] * (n - 1))


def test_depth_through_a_shared_part_is_the_depth_of_its_deepest_appearance():
    part = [1]
    for _ in range(MAX_NESTING_DEPTH - 2):
        part = [part]
    check_limits([part, part])  # part is 98 deep, here 99
    with pytest.raises(LimitExceeded, match="nests deeper"):
        check_limits([part, [[part]]])  # measured at depth 1, met again at depth 2
    with pytest.raises(LimitExceeded, match="nests deeper"):
        check_limits([[part], part])  # and the other way round


@pytest.mark.timeout(60)
def test_a_list_at_the_list_limit_of_small_objects_passes():
    check_limits([{"id": i, "name": "item", "ok": True, "tags": ["a"]} for i in range(MAX_LIST_LENGTH)])


def test_a_value_that_holds_itself_stops_at_the_depth_limit():
    s = [1]
    s.append(s)
    with pytest.raises(LimitExceeded, match="nests deeper"):
        check_limits(s)


@pytest.mark.timeout(5)
def test_equality_of_shared_values_compares_each_pair_of_parts_once():
    a, b = doubled(60), doubled(60)
    assert eq(a, b) and eq(a, a)
    assert not eq(a, doubled(60, [2])) and not eq(a, doubled(59))
    c = doubled(59)
    assert not eq(a, [c, [c, [1]]]) and eq({"x": a, "y": 1}, {"x": b, "y": 1.0})


@pytest.mark.timeout(5)
def test_text_form_and_filters_refuse_before_writing_out():
    s = doubled(40)
    for call in (lambda: to_text(s), lambda: REGISTRY["json_encode"].fn(s), lambda: REGISTRY["join"].fn([s, s])):
        with pytest.raises(LimitExceeded, match=f"longer than {MAX_STRING_LENGTH:,} characters"):
            call()
    with pytest.raises(LimitExceeded, match=f"filter .join. would build a text of 12,582,900 characters, more than the limit of {MAX_STRING_LENGTH:,}"):
        REGISTRY["join"].fn([doubled(19)] * 100)  # each text fits, together they do not: refused as they add up
    with pytest.raises(LimitExceeded, match="url_encode"):
        REGISTRY["url_encode"].fn({str(i): doubled(19) for i in range(100)})
    for name in ("unique", "group_by"):
        with pytest.raises(LimitExceeded, match=EXPANDS):
            REGISTRY[name].fn([s, s], *(("x",) if name == "group_by" else ()))
    assert REGISTRY["unique"].fn([doubled(5), doubled(5), 1]) == [doubled(5), 1]
    assert REGISTRY["length"].fn(s) == 2 and REGISTRY["contains"].fn([s], doubled(40))


# -- runs -------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("tracer", [None, Quiet()], ids=["native", "vm"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ s }}", EXPANDS),
        ("{{ 'x' ~ s }}", "longer than"),
        ("{{ s|json_encode }}", "longer than"),
        ("{{ [s]|join }}", "longer than"),
        ("{{ [s, s]|unique }}", EXPANDS),
        ("{{ s|length }}", None),
        ("{{ s == s }}", None),
    ],
)
async def test_a_run_that_doubles_a_value_40_times_ends_at_once(tracer, value, expected):
    program = compile_stack(loop_stack(40, ret(value)))
    ctx = RunContext(tracer=tracer) if tracer else RunContext()
    if expected is None:
        assert await execute(program, ctx, {}) in (2, True)
    else:
        with pytest.raises(RunFailed) as info:
            await execute(program, ctx, {})
        assert info.value.error["type"] == "LimitExceeded" and expected in info.value.error["message"]


# -- the engine: traces, storage, HTTP ----------------------------------------------------------


@pytest.fixture(autouse=True)
def quick_shutdown(monkeypatch):
    monkeypatch.setattr("engine._engine.load_config", lambda _dir: EngineConfig(shutdown_grace=0.05))


@pytest.mark.timeout(20)
async def test_a_traced_run_keeps_the_start_of_a_shared_value():
    stack = loop_stack(40, {"function": "log", "message": "{{ s }}"}, ret("{{ s|length }}"))
    async with Engine.open([{"name": "t", "stack": stack}]) as engine:
        run = await engine.run((await engine.trigger("t", wait=True))["id"])
    assert run["status"] == "completed" and run["result"] == 2
    kept = msgspec.json.encode(run["trace"]).decode()
    assert '"$truncated":"[[[[' in kept and len(kept) < 2_000_000


def test_a_trace_summary_of_a_shared_value_is_its_start():
    trace = RunTrace(["secret-value"])
    assert trace.summary(doubled(40))["$truncated"].startswith("[[[[[[[[")
    plain = RunTrace()
    plain.step("stack[0]", "update_variable", 0.0, 0.0, doubled(40), doubled(40), None)
    entry = plain.export()[0]
    assert entry["inputs"]["$truncated"].startswith("[[[[") and entry["output"]["$truncated"].startswith("[[[[")
    plain.step("stack[1]", "update_variable", 0.0, 0.0, None, doubled(3), None)
    assert msgspec.json.decode(plain.export()[1]["output"]) == doubled(3)


@pytest.mark.timeout(5)
def test_a_trace_fast_path_for_flat_values_still_refuses_a_repeated_text():
    """step()/summary() tell a short flat value small in one pass and encode it at once: a flat
    list or object repeating one long text (sharing it) must still be previewed, never written out."""
    big = "x" * MAX_STRING_LENGTH
    for value in ([big] * 64, {f"k{i}": big for i in range(64)}, [big] * 5000, [1, big, None, big]):
        for trace in (RunTrace(), RunTrace(["secret-value"])):
            trace.step("stack[0]", "create_variable", 0.0, 0.0, value, value, None)
            entry = trace.export()[0]
            for kept in (entry["inputs"], entry["output"]):
                assert set(kept) == {"$truncated"} and len(kept["$truncated"]) <= 2048
    # at the budget's edge the fast path agrees with the full measure: texts (keys counted) within
    # 4 * 2048 characters are encoded and cut ($bytes), one more character makes a preview
    for value, full in (({"k": "y" * 8191}, True), ({"k": "y" * 8192}, False), (["y" * 8192], True),
                        (["y" * 8193], False), ({"a" * 8000: "b" * 192}, True), ({"a" * 8000: "b" * 193}, False),
                        ([1.5, True, None, "z" * 100] * 16, True)):
        trace = RunTrace()
        trace.step("stack[0]", "create_variable", 0.0, 0.0, None, value, None)
        out = trace.export()[0]["output"]
        if type(out) is msgspec.Raw:
            assert full and msgspec.json.decode(out) == value
        else:
            assert ("$bytes" in out) is full, value


@pytest.mark.timeout(5)
def test_the_store_codec_measures_before_writing():
    with pytest.raises(codec.TooLarge, match=EXPANDS):
        codec.encode({"v": doubled(40)})
    assert EXPANDS in msgspec.json.decode(codec.encode_lenient({"v": doubled(40)}))
    # a text UTF-8 cannot hold is repaired once per shared part, not once per appearance
    repaired = codec._without_surrogates(doubled(40, ["\ud800"]), {})
    assert repaired[0] is repaired[1]
    while len(repaired) == 2:
        repaired = repaired[1]
    assert repaired == ["\\ud800"]
    assert msgspec.json.decode(codec.encode_lenient(doubled(3, ["\ud800"]))) == doubled(3, ["\\ud800"])


@pytest.mark.timeout(5)
def test_an_http_body_query_or_header_is_measured_before_it_is_written():
    s = doubled(40)
    for fmt in ("json", "text", "form"):
        with pytest.raises(BadValue, match=EXPANDS):
            encode_body("POST", {"v": s} if fmt == "form" else s, fmt)
    with pytest.raises(BadValue, match=EXPANDS):
        http_text(s)
    big = doubled(21)  # fits alone; a list repeating it 100 times does not
    with pytest.raises(BadValue, match=EXPANDS):
        encode_body("POST", {"v": [big] * 100}, "form")
    assert encode_body("POST", doubled(2), "json")[0] == b"[[[1],[1]],[[1],[1]]]"


@pytest.mark.timeout(10)
async def test_an_http_request_with_a_shared_body_fails_before_sending():
    calls = []

    async def echo(request):
        calls.append(await request.read())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/echo"
    try:
        async with HttpClient() as http:
            with pytest.raises(Exception, match=EXPANDS):
                await http.request("POST", url, body=doubled(40))
            assert (await http.request("POST", url, body=doubled(2))).status == 200
    finally:
        await runner.cleanup()
    assert calls == [b"[[[1],[1]],[[1],[1]]]"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("step", [
    {"function": "add_record", "table": "t", "data": {"s": "{{ s }}"}},
    {"function": "add_record", "table": "t", "data": {"s": "{{ s }}"}, "return_as": "r"},
    {"function": "add_or_edit_record", "table": "t", "identifier": "k", "data": {"k": 1, "s": "{{ s }}"}},
    {"function": "edit_records", "table": "t", "filter": {"k": 1}, "data": {"s": "{{ s }}"}},
])
async def test_record_data_sharing_parts_is_refused_before_the_store_encodes_it(tmp_path, step):
    stack = loop_stack(40, step, {"function": "count_records", "table": "t", "return_as": "n"}, ret("{{ n }}"))
    async with Engine.open([{"name": "t", "stack": stack}], database=f"sqlite:///{tmp_path}/v.db") as engine:
        run = await engine.trigger("t", wait=True)
    assert run["status"] == "failed" and run["error"]["type"] == "LimitExceeded", run["error"]
    assert EXPANDS in run["error"]["message"] and run["error"]["step"] == "stack[2]"
