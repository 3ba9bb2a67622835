"""The traced native variant against the traced VM: the same tracer calls, the same trace, the same outcome.

Every stack here runs twice with a tracer: on the VM (``runtime._vm._run``,
the reference) and on ``program.native.traced`` (what ``execute`` runs when
request history is on). The tracer is a tee: a recorder keeping every
``step``/``log`` call as ``repr`` text taken at the moment of the call (so a
value changed later in place, or 1 against 1.0 against True, still shows),
and a real ``RunTrace`` with secrets, whose export is compared with only
the timing fields (``started``, ``duration``) left out.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_native import cond, loop, ret, throw, try_, uv
from test_native_diff import LOCAL_PRELUDE, PRELUDE, SEEN, compile_stack, cv, local_loop, steps

from benchmarks.bench_runs import STACK10
from compiler import lower_stack
from compiler._load import load_definitions
from compiler._warm import warm_program
from engine._trace import MAX_TRACE_ENTRIES, RunTrace
from runtime import HttpResponse, RunContext, RunError, RunFailed, execute
from runtime._vm import Frame, _new_scope, _run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SECRET = "sk-live-0123456789"
ENV = {"API_KEY": SECRET, "BASE": "https://api.example", "PLAIN": "abc"}


class Recorder:
    """A tracer keeping each call as text made at the moment of the call."""

    def __init__(self, calls: list[Any] | None = None, prefix: str = "") -> None:
        self.calls = [] if calls is None else calls
        self.prefix = prefix

    def step(self, path, kind, started, duration, inputs, output, error):
        assert type(started) is float and type(duration) is float and duration >= 0.0
        self.calls.append(("step", self.prefix + path, kind, repr(inputs), repr(output), repr(error)))

    def log(self, path, level, message):
        self.calls.append(("log", self.prefix + path, level, repr(message)))

    def child(self, prefix):
        return Recorder(self.calls, f"{self.prefix}{prefix} > ")


class Tee:
    def __init__(self, a, b) -> None:
        self.a, self.b = a, b

    def step(self, *args):
        self.a.step(*args)
        self.b.step(*args)

    def log(self, *args):
        self.a.log(*args)
        self.b.log(*args)

    def child(self, prefix):
        return Tee(self.a.child(prefix), self.b.child(prefix))


def exported(trace: RunTrace) -> bytes:
    """The stored form of a trace without its timing fields."""
    entries = [{k: v for k, v in e.items() if k not in ("started", "duration")} for e in trace.export()]
    return msgspec.json.encode(entries)


class Records:
    """Deterministic in-memory records: ids and times count up from the same start every run."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {
            "users": [{"id": 1, "name": "ada", "created_at": 1.0, "updated_at": 1.0}],
            "pending_processing_items": [
                {"id": 1, "status": "pending", "priority": 2, "payload": {"n": 1}, "created_at": 1.0, "updated_at": 1.0},
                {"id": 2, "status": "pending", "priority": 1, "payload": {"n": 2}, "created_at": 1.0, "updated_at": 1.0}],
        }
        self.clock = itertools.count(100)

    def _rows(self, table):
        return self.tables.setdefault(table, [])

    async def query(self, table, *, filter=None, sort=None, limit=None, offset=None):
        rows = [copy.deepcopy(r) for r in self._rows(table) if _matches(r, filter)]
        return rows[offset or 0:][: limit if limit is not None else None]

    async def get(self, table, *, id=None, filter=None):
        for r in self._rows(table):
            if (id is None or r["id"] == id) and _matches(r, filter):
                return copy.deepcopy(r)
        return None

    async def count(self, table, *, filter=None):
        return sum(1 for r in self._rows(table) if _matches(r, filter))

    async def add(self, table, data):
        rows = self._rows(table)
        t = float(next(self.clock))
        row = {**copy.deepcopy(dict(data)), "id": len(rows) + 1, "created_at": t, "updated_at": t}
        rows.append(row)
        return copy.deepcopy(row)

    async def edit(self, table, id, data):
        for r in self._rows(table):
            if r["id"] == id:
                r.update(copy.deepcopy(dict(data)))
                return copy.deepcopy(r)
        raise RunError(f"no record {id!r} in '{table}'", error_type="RecordNotFound")

    async def delete(self, table, id):
        rows = self._rows(table)
        before = len(rows)
        rows[:] = [r for r in rows if r["id"] != id]
        return len(rows) != before

    async def upsert(self, table, data, identifier):
        for r in self._rows(table):
            if r.get(identifier) == data.get(identifier):
                r.update(copy.deepcopy(dict(data)))
                return copy.deepcopy(r)
        return await self.add(table, data)

    async def delete_many(self, table, filter):
        rows = self._rows(table)
        keep = [r for r in rows if not _matches(r, filter)]
        gone = len(rows) - len(keep)
        rows[:] = keep
        return gone

    async def edit_many(self, table, filter, data):
        n = 0
        for r in self._rows(table):
            if _matches(r, filter):
                r.update(copy.deepcopy(dict(data)))
                n += 1
        return n


def _matches(row, filter):
    """Plain equality filters only; any operator object matches everything (enough for these stacks)."""
    if not filter:
        return True
    return all(isinstance(v, dict) or row.get(k) == v for k, v in filter.items() if not k.startswith("$"))


class Http:
    """Answers every request with a fixed body naming the URL; URLs containing 'fail' raise."""

    async def request(self, method, url, **kw):
        if "fail" in url:
            raise RunError(f"request to {url} failed with status 503", error_type="HttpError", status=503,
                           body={"message": "down"})
        return HttpResponse(200, {"content-type": "application/json"},
                            {"url": url, "records": [{"id": "r1", "name": "one"}], "execution_id": "exec-1",
                             "echo": kw.get("headers")})


class Clock:
    def time(self):
        return 1_737_003_600.0

    async def sleep(self, seconds):
        await asyncio.sleep(0)


class Functions:
    """Runs function programs inline through ``execute`` with a child tracer, as the engine does."""

    def __init__(self, programs: dict[str, Any], inputs: dict[str, dict[str, Any]] | None = None) -> None:
        self.programs = programs
        self.inputs = inputs or {}

    async def call(self, name, inputs, ctx):
        if name not in self.programs:
            raise RunError(f"no function named '{name}'", error_type="UnknownFunction")
        child = dataclasses.replace(ctx, tracer=ctx.tracer.child(f"function {name}"), depth=ctx.depth + 1)
        return await execute(self.programs[name], child, inputs={**self.inputs.get(name, {}), **inputs})

    async def start(self, name, inputs, ctx):
        return f"run-of-{name}"


def vm_only(program):
    """The same program without its native form: ``execute`` interprets it."""
    return dataclasses.replace(program, native=None)


async def traced_outcome(program, native: bool, *, variables=None, functions=None, secrets=(), inputs=None):
    """(outcome, tracer calls, exported trace) of one traced run on the VM or on the traced native code."""
    recorder, trace = Recorder(), RunTrace(secrets)
    fns = None
    if functions is not None:
        fns = Functions({k: p if native else vm_only(p) for k, p in functions[0].items()}, functions[1])
    ctx = RunContext(records=Records(), http=Http(), functions=fns, tracer=Tee(recorder, trace), clock=Clock(),
                     env=dict(ENV), task={"name": "t", "run_id": "r1", "attempt": 1})
    frame = Frame(program, _new_scope(ctx, copy.deepcopy(variables), inputs))
    counter = itertools.count()
    real_uuid4 = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=next(counter))  # the expression `uuid`, the same in both runs
    try:
        got = ("ok", repr(await (program.native.traced(frame, ctx) if native else _run(frame, ctx))))
    except RunFailed as exc:
        got = ("failed", repr(exc.error))
    finally:
        uuid.uuid4 = real_uuid4
    return got, recorder.calls, exported(trace)


def same_traced(program, **kw):
    vm = asyncio.run(traced_outcome(program, False, **kw))
    nat = asyncio.run(traced_outcome(program, True, **kw))
    assert nat[0] == vm[0], f"\nVM:     {vm[0]}\nnative: {nat[0]}"
    for i, (a, b) in enumerate(zip(vm[1], nat[1], strict=False)):
        assert a == b, f"tracer call {i}:\nVM:     {a}\nnative: {b}"
    assert len(nat[1]) == len(vm[1])
    assert nat[2] == vm[2]
    assert program.native.traced_fn is not _run, "ran on the VM: the comparison compared the VM with itself"
    return vm


def same(stack, **kw):
    return same_traced(compile_stack(stack), **kw)


# -- random stacks (the untraced differential test's strategies) ------------------------------


@settings(max_examples=300, deadline=None)
@given(steps(max_len=6))
def test_random_stacks_trace_alike(body):
    same([*PRELUDE, *body, {"function": "return", "value": {"a": "{{ a }}", "l": "{{ l }}", "o": "{{ o }}",
                                                          "item": "{{ item }}", "index": "{{ index }}",
                                                          "error": "{{ error }}"}}])


@settings(max_examples=150, deadline=None)
@given(local_loop(), st.booleans(), st.sampled_from([None, {"y": 1}, {"a": 2.5, "b": None}]))
def test_loops_that_keep_locals_untraced_trace_alike(loop, caught, variables):
    """Loops the untraced code keeps in locals: the traced variant reports every iteration's steps."""
    stack = [*LOCAL_PRELUDE, *loop, {"function": "return", "value": SEEN}]
    if caught:
        stack = [*LOCAL_PRELUDE, {"function": "try_catch", "try_block": loop, "catch_block": [
            {"function": "return", "value": {**SEEN, "error": "{{ error }}"}}]}, {"function": "return", "value": SEEN}]
    same(stack, variables=variables)


def test_the_random_stacks_reach_errors_and_traces():
    """Not vacuous: some traces hold an error entry, some a log, some a loop's steps."""
    from hypothesis import find

    def calls(body):
        return same([*PRELUDE, *body])[1]

    find(steps(max_len=6), lambda b: any(c[0] == "step" and c[5] != "None" for c in calls(b)))
    find(steps(max_len=6), lambda b: any(c[0] == "log" for c in calls(b)))
    find(steps(max_len=6), lambda b: any(c[0] == "step" and c[2] == "break_loop" for c in calls(b)))


# -- explicit cases ------------------------------------------------------------------------------


def log(message, level="info"):
    return {"function": "log", "message": message, "level": level}


BREAK, CONTINUE = {"function": "break_loop"}, {"function": "continue_loop"}

CASES = {
    "the benchmark's stack": STACK10,
    "loops with break and continue": [
        cv("i", 0), cv("seen", []),
        loop([uv("i", "increment"), cond("{{ i > 5 }}", [BREAK]), cond("{{ i % 2 == 0 }}", [CONTINUE]),
              uv("seen", "append", "{{ i }}")], condition="true"),
        loop([uv("seen", "append", "{{ index * 10 }}"), cond("{{ index == 1 }}", [CONTINUE])], times=3),
        loop([loop([uv("seen", "append", "{{ item_parent }}{{ item }}")], array="{{ [1, 2] }}")], array=["a", "b"]),
        loop([], array="{{ null }}"), ret("{{ seen }}")],
    "nested try/catch/finally with throws": [
        cv("log", []),
        try_([try_([throw("one")], [throw("two {{ error.message }}")], [uv("log", "append", "inner-finally")])],
             [uv("log", "append", "{{ error.message }}")], [uv("log", "append", "outer-finally")]),
        try_([throw("x", "T")], fin=[uv("log", "append", "{{ error.type }}")])],
    "finally copies on break, continue, return": [
        cv("log", []),
        loop([try_([cond("{{ index == 0 }}", [CONTINUE]), cond("{{ index == 1 }}", [BREAK])],
                   fin=[uv("log", "append", "f{{ index }}")])]),
        try_([try_([ret("{{ log }}")], [uv("log", "append", "inner")], [uv("log", "append", "f")])],
             fin=[uv("log", "append", "last")])],
    "a finally copy that throws, caught outside": [
        cv("log", []),
        try_([loop([try_([BREAK], [uv("log", "append", "wrong catch")], [throw("from finally")])])],
             [uv("log", "append", "{{ error.message }} {{ error.step }}")]),
        try_([try_([ret(1)], [uv("log", "append", "inner")], [throw("f")])],
             [uv("log", "append", "outer {{ error.message }}")], [uv("log", "append", "outer finally")]),
        ret("{{ log }}")],
    "return through finally over the limits": [try_([ret("{{ 'x' * 6000000 }}")], fin=[cv("f", 1)])],
    "errors of every traced kind": [
        cv("a", 1), cv("e", []),
        try_([cv("x", "{{ 1 / 0 }}")], [uv("e", "append", "{{ error }}")]),
        try_([uv("a", "set", "{{ 1 / 0 }}")], [uv("e", "append", "{{ error }}")]),
        try_([cond("{{ a / 0 > 1 }}", [])], [uv("e", "append", "{{ error }}")]),
        try_([{"function": "switch", "value": "{{ 1 / 0 }}", "cases": {}}], [uv("e", "append", "{{ error }}")]),
        try_([loop([], array="abc")], [uv("e", "append", "{{ error }}")]),
        try_([loop([], times=1.5)], [uv("e", "append", "{{ error }}")]),
        try_([loop([], condition="{{ zz < 3 }}")], [uv("e", "append", "{{ error }}")]),
        try_([uv("a", "append", 1)], [uv("e", "append", "{{ error }}")]),
        try_([throw("m {{ a }}", "{{ 1 / 0 }}")], [uv("e", "append", "{{ error }}")]),
        try_([{"function": "wait", "duration": -1}], [uv("e", "append", "{{ error }}")]),
        try_([ret("{{ 'x' * 6000000 }}")], [uv("e", "append", "{{ error }}")]),
        cond("false", [cv("zz", 1)]),
        ret("{{ e }}")],
    "an uncaught error ends the trace": [cv("a", [1, 2]), loop([cond("{{ index == 1 }}", [throw("stop {{ a }}")])])],
    "log steps of every level": [
        cv("a", {"k": [1, 2]}), log("plain"), log("{{ a }}", "warning"), log("{{ a.k }}", "error"),
        loop([log("at {{ index }}", "debug")], times=2), log("{{ 1 / 0 }}")],
    "wait steps": [{"function": "wait", "duration": 0}, {"function": "wait", "duration": "{{ 0.5 }}"}, ret(1)],
    "variables changed in place after they were traced": [
        cv("l", []), loop([uv("l", "append", "{{ index }}")], times=5), cv("o", {}),
        loop([uv("o", "merge", {"last": "{{ index }}", "n": "{{ [index] }}"})], times=3), uv("l", "remove", 2), ret(["{{ l }}", "{{ o }}"])],
    "a value over the summary size": [cv("big", "{{ 'x' * 5000 }}"), cv("l", "{{ [big, big] }}"), ret("{{ l|length }}")],
    "numbers that compare equal": [cv("a", 1), uv("a", "increment", 0.0), cv("b", True), uv("b", "set", 1), ret(["{{ a }}", "{{ b }}"])],
    "more steps than a trace keeps": [cv("n", 0), loop([uv("n", "increment"), cond("{{ n % 7 == 0 }}", [log("{{ n }}")])],
                                                       times=MAX_TRACE_ENTRIES), ret("{{ n }}")],
}


@pytest.mark.parametrize("name", list(CASES))
def test_case_traces_alike(name):
    same(CASES[name])


def test_the_long_loop_is_cut_at_the_trace_limit():
    program = compile_stack(CASES["more steps than a trace keeps"])
    trace = RunTrace()
    assert asyncio.run(execute(program, RunContext(tracer=trace))) == MAX_TRACE_ENTRIES
    logs = MAX_TRACE_ENTRIES // 7  # a log step each 7th iteration: a step entry and a log
    steps = 3 + 2 * MAX_TRACE_ENTRIES + logs
    assert len(trace.entries) == MAX_TRACE_ENTRIES and trace.dropped == steps - MAX_TRACE_ENTRIES
    assert len(trace.logs) == logs
    assert trace.export()[-1]["kind"] == "trace_truncated"


# -- effects, functions, secrets --------------------------------------------------------------

HTTP = {"function": "external_api_request", "url": "{{ env.BASE }}/x?api_key={{ env.API_KEY }}&q=1", "method": "post",
        "headers": {"Authorization": "Bearer {{ env.API_KEY }}", "n": 1}, "query": {"page": "{{ index }}"},
        "body": {"items": "{{ [index] }}", "key": "{{ env.API_KEY }}"}, "return_as": "r"}

EFFECT_CASES = {
    "records": [
        {"function": "add_record", "table": "t", "data": {"a": "{{ 1 }}", "s": "{{ env.API_KEY }}"}, "return_as": "row"},
        {"function": "get_record", "table": "t", "id": "{{ row.id }}", "return_as": "got"},
        {"function": "edit_record", "table": "t", "id": "{{ row.id }}", "data": {"b": 2}, "return_as": "edited"},
        {"function": "query_all_records", "table": "users", "return_as": "users"},
        {"function": "count_records", "table": "t", "return_as": "n"},
        {"function": "delete_record", "table": "t", "id": "{{ row.id }}", "return_as": "gone"},
        ret(["{{ got }}", "{{ edited }}", "{{ users }}", "{{ n }}", "{{ gone }}"])],
    "effects that fail": [
        cv("errors", []),
        try_([{"function": "edit_record", "table": "t", "id": 99, "data": {"b": 2}}], [uv("errors", "append", "{{ error }}")]),
        try_([{"function": "add_record", "table": "t", "data": "{{ 'not an object' }}"}], [uv("errors", "append", "{{ error }}")]),
        try_([{"function": "get_record", "table": "{{ 1 / 0 }}"}], [uv("errors", "append", "{{ error }}")]),
        try_([{**HTTP, "url": "{{ env.BASE }}/fail?token={{ env.API_KEY }}"}], [uv("errors", "append", "{{ error }}")]),
        {"function": "external_api_request", "url": "{{ env.BASE }}/fail"}],
    "http in a loop, secrets in values and errors": [
        cv("key", "{{ env.API_KEY }}"), log("the key is {{ key }}"), cv("out", []),
        loop([HTTP, uv("out", "append", "{{ r }}")], times=2),
        try_([throw("bad key {{ key }}")], [cv("e", "{{ error }}")]),
        ret({"out": "{{ out }}", "e": "{{ e }}", "env": "{{ env }}"})],
    "functions called inline and started": [
        {"function": "custom_function", "name": "double", "inputs": {"x": 21}, "return_as": "r"},
        {"function": "custom_function", "name": "double", "execution_mode": "async", "return_as": "id"},
        try_([{"function": "custom_function", "name": "fails", "inputs": {"x": 1}}], [cv("e", "{{ error }}")]),
        try_([{"function": "custom_function", "name": "missing"}], [cv("e2", "{{ error }}")]),
        {"function": "custom_function", "name": "fails", "inputs": {"x": 2}}],
}
FUNCTIONS = {
    "double": [log("doubling {{ inputs.x }}"), cv("y", "{{ inputs.x * 2 }}"), ret("{{ y }}")],
    "fails": [loop([cond("{{ index == 1 }}", [throw("inner {{ inputs.x }} {{ env.API_KEY }}")])])],
}


@pytest.mark.parametrize("name", list(EFFECT_CASES))
def test_effect_case_traces_alike(name):
    programs = {k: lower_stack(v, k, extra_names=frozenset({"inputs"})).program for k, v in FUNCTIONS.items()}
    got = same(EFFECT_CASES[name], functions=(programs, {}), secrets=[SECRET])
    assert SECRET not in got[2].decode()  # the stored trace never shows the secret


def test_the_seed_examples_trace_alike():
    """Every task and function of examples/ (the seed's stacks), with fake records, HTTP and clock."""
    defs = load_definitions(EXAMPLES)
    functions = ({name: fn.program for name, fn in defs.functions.items()},
                 {name: fn.inputs for name, fn in defs.functions.items()})
    ran = 0
    for name, defn in [*defs.tasks.items(), *defs.functions.items()]:
        inputs = getattr(defn, "inputs", None)
        kinds = {c[2] for c in same_traced(defn.program, functions=functions, secrets=list(ENV.values()),
                                           inputs=dict(inputs) if inputs is not None else None)[1]}
        assert kinds, name
        ran += 1
    assert ran >= 10


# -- dispatch and fallback -----------------------------------------------------------------------


def test_execute_with_a_tracer_runs_the_traced_variant():
    program = compile_stack([cv("a", 1), ret("{{ a }}")])
    recorder = Recorder()
    assert asyncio.run(execute(program, RunContext(tracer=recorder))) == 1
    assert program.native.traced_fn is not None and program.native.fn is None
    assert program.native.traced_fn.__qualname__.endswith(".traced")
    assert [c[:3] for c in recorder.calls] == [("step", "stack[0]", "create_variable"), ("step", "stack[1]", "return")]
    assert asyncio.run(execute(program)) == 1 and program.native.fn is not None


def test_too_deep_for_python_traces_on_the_vm():
    """A stack nesting deeper than one Python function allows: the traced run falls back to the VM, visibly."""
    stack = [cv("n", 0)]
    inner = [uv("n", "increment")]
    for _ in range(12):
        inner = [try_([loop(inner, times=1)])]
    stack += inner + [ret("{{ n }}")]
    program = compile_stack(stack)
    assert program.native.traced_source is None
    recorder = Recorder()
    assert asyncio.run(execute(program, RunContext(tracer=recorder))) == 1
    assert program.native.traced_fn is _run
    assert sum(c[2] == "update_variable" for c in recorder.calls) == 1


def test_warming_compiles_the_traced_variant_when_asked():
    program = compile_stack([cv("a", 1), ret("{{ a }}")])
    warm_program(program)
    assert program.native.fn is not None and program.native.traced_fn is None
    warm_program(program, traced=True)
    assert program.native.traced_fn is not None


def test_the_stack_copy_is_released_once_both_variants_exist():
    program = compile_stack([cv("a", 1), ret("{{ a }}")])
    assert program.native.source is not None and program.native._stack is not None
    assert program.native.traced_source is not None and program.native._stack is None


# -- a run stopped mid-step (timeout, cancel): the step it stopped is traced ---------------------


class ParkingClock(Clock):
    """Sleeps that never end by themselves: the run parks in its wait until cancelled."""

    def __init__(self) -> None:
        self.parked = asyncio.Event()

    async def sleep(self, seconds):
        self.parked.set()
        await asyncio.Event().wait()


class ParkingHttp(Http):
    def __init__(self, clock: ParkingClock) -> None:
        self.clock = clock

    async def request(self, method, url, **kw):
        await self.clock.sleep(30)


async def _cancelled_trace(program, native: bool):
    recorder = Recorder()
    clock = ParkingClock()
    ctx = RunContext(records=Records(), http=ParkingHttp(clock), tracer=recorder, clock=clock, env=dict(ENV),
                     task={"name": "t", "run_id": "r1", "attempt": 1})
    frame = Frame(program, _new_scope(ctx, None, None))
    run = asyncio.ensure_future(program.native.traced(frame, ctx) if native else _run(frame, ctx))
    await clock.parked.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    return recorder.calls


@pytest.mark.parametrize("stopped", [
    {"function": "wait", "duration": 30},
    {"function": "external_api_request", "url": "{{ env.BASE }}/slow", "return_as": "r"},
    try_([{"function": "wait", "duration": 30}], [log("caught")]),
    loop([cv("seen", "{{ index }}"), cond("index == 2", [{"function": "wait", "duration": 30}])], times=5),
])
@pytest.mark.anyio
async def test_the_step_a_cancel_stops_is_traced_as_interrupted(stopped):
    program = compile_stack([log("start"), cv("x", 1), stopped, log("never")])
    vm = await _cancelled_trace(program, native=False)
    nat = await _cancelled_trace(program, native=True)
    assert nat == vm
    last = vm[-1]
    assert last[0] == "step" and last[2] in ("wait", "external_api_request"), vm
    assert "'type': 'Interrupted'" in last[5] and "stopped while this step ran" in last[5]
    assert not any("never" in str(call) for call in vm)


@pytest.mark.anyio
async def test_a_cancel_between_steps_marks_no_step():
    """A cancel at the yield between two loop iterations interrupts no step: nothing extra is traced."""
    program = compile_stack([loop([cv("i", "{{ index }}")], times=10**9)])
    recorder = Recorder()
    ctx = RunContext(tracer=recorder, clock=Clock(), task={"name": "t", "run_id": "r1", "attempt": 1})
    run = asyncio.ensure_future(program.native.traced(Frame(program, _new_scope(ctx, None, None)), ctx))
    while len(recorder.calls) < 50:  # noqa: ASYNC110 - the run yields at its loop budget; no event to wait on
        await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not any("Interrupted" in str(call) for call in recorder.calls)


@pytest.mark.parametrize("stack", [
    [cv("v", "{{ 1/0 }}")],
    [cond("{{ 'a'.b }}", [cv("x", 1)])],
    [loop([cv("a", "{{ 'a' + 1 }}")], times=1)],
    [try_([cv("v", "{{ 1/0 }}")], [ret("{{ error }}")])],
])
def test_a_failing_constant_is_named_alike_with_history_on_and_off(stack):
    program = compile_stack(stack)
    traced = asyncio.run(traced_outcome(program, True))[0]
    for native in (True, False):
        ctx = RunContext(task={"name": "t", "run_id": "r1", "attempt": 1})
        frame = Frame(program, _new_scope(ctx, None, None))
        try:
            got = ("ok", repr(asyncio.run(program.native(frame, ctx) if native else _run(frame, ctx))))
        except RunFailed as exc:
            got = ("failed", repr(exc.error))
        assert got == traced and "(in {{" in got[1], (native, got, traced)
