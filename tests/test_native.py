"""Native backend: explicit cases against the VM, cooperation, the seed's stacks, the source dump."""

import asyncio
import copy
import json
import re
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from test_native_diff import PRELUDE, compile_stack, cv, same

from compiler import CompileError, lower_stack
from compiler._native import native_source
from runtime import HttpResponse, RunContext, RunError, RunFailed, execute
from runtime._vm import Frame, _new_scope, _run
from tests.support import assert_cancellable_while_others_run

pytestmark = pytest.mark.anyio

SEED = Path("/work/shared/seed/background-tasks.md")


def uv(name, op, value=None):
    return {"function": "update_variable", "name": name, "operation": op, "value": value}


def ret(value):
    return {"function": "return", "value": value}


def throw(message="boom", type_="T"):
    return {"function": "throw_error", "message": message, "type": type_}


def loop(operations, **source):
    return {"function": "loop", **(source or {"times": 3}), "operations": operations}


def try_(try_block, catch=None, fin=None):
    step = {"function": "try_catch", "try_block": try_block}
    if catch is not None:
        step["catch_block"] = catch
    if fin is not None:
        step["finally_block"] = fin
    return step


def cond(condition, then, other=None):
    return {"function": "conditional", "condition": condition, "true_branch": then, "false_branch": other or []}


BREAK, CONTINUE = {"function": "break_loop"}, {"function": "continue_loop"}

# (stack, expected outcome) -- each also runs on the VM and must agree
CASES = {
    "typed values": ([cv("a", "{{ 1 + 2 }}"), ret({"a": "{{ a }}", "t": "a={{ a }}"})], ("ok", {"a": 3, "t": "a=3"})),
    "no return": ([cv("a", 1)], ("ok", None)),
    "aliases unchanged": (
        [cv("a", [1]), cv("b", "{{ a }}"), uv("a", "append", 2), cv("o", {"x": 1}), cv("p", "{{ o }}"),
         uv("o", "merge", {"y": 2}), ret(["{{ a }}", "{{ b }}", "{{ o }}", "{{ p }}"])],
        ("ok", [[1, 2], [1], {"x": 1, "y": 2}, {"x": 1}]),
    ),
    "item, item_parent, index restored": (
        [cv("out", []),
         loop([loop([uv("out", "append", "{{ item_parent }}{{ item }}{{ index }}")], array="{{ [1, 2] }}"),
               uv("out", "append", "{{ item }}{{ index }}")], array="{{ ['a', 'b'] }}"),
         ret(["{{ out }}", "{{ item }}", "{{ index }}"])],
        ("ok", [["a10", "a21", "a0", "b10", "b21", "b1"], None, None]),
    ),
    "while, times, break, continue": (
        [cv("i", 0), cv("seen", []),
         loop([uv("i", "increment"), cond("{{ i > 5 }}", [BREAK]), cond("{{ i % 2 == 0 }}", [CONTINUE]),
               uv("seen", "append", "{{ i }}")], condition="true"),
         loop([uv("seen", "append", "{{ index * 10 }}")], times=3), ret("{{ seen }}")],
        ("ok", [1, 3, 5, 0, 10, 20]),
    ),
    "catch, then finally": (
        [cv("log", []), try_([uv("log", "append", "try"), throw("bad {{ 1 }}", "Custom")],
                             [uv("log", "append", "{{ error.type }}:{{ error.message }}:{{ error.step }}")],
                             [uv("log", "append", "finally")]), ret("{{ log }}")],
        ("ok", ["try", "Custom:bad 1:stack[1].try_block[1]", "finally"]),
    ),
    "finally on break, continue, return": (
        [cv("log", []),
         loop([try_([cond("{{ index == 0 }}", [CONTINUE]), cond("{{ index == 1 }}", [BREAK])],
                    fin=[uv("log", "append", "f{{ index }}")])]),
         try_([ret("{{ log }}")], fin=[uv("log", "append", "last")])],
        ("ok", ["f0", "f1"]),
    ),
    "error inside catch still runs finally": (
        [cv("log", []),
         try_([try_([throw("one")], [throw("two")], [uv("log", "append", "inner-finally")])],
              [uv("log", "append", "{{ error.message }}")]), ret("{{ log }}")],
        ("ok", ["inner-finally", "two"]),
    ),
    "finally re-raises the first error": (
        [cv("log", []), try_([throw("x", "T")], fin=[uv("log", "append", "{{ error.type }}")])],
        ("failed", {"message": "x", "type": "T", "step": "stack[1].try_block[0]"}),
    ),
    "catch restores loop depth": (
        [cv("n", 0), try_([loop([cond("{{ index == 2 }}", [throw("stop")])], times=5)], [uv("n", "set", "{{ index }}")]),
         loop([uv("n", "increment")], times=2), ret("{{ n }}")],
        ("ok", 2),
    ),
    # an error in a finally copy on the way out of a try is not caught by that try
    "finally copy on break raises past its own try": (
        [cv("log", []),
         try_([loop([try_([BREAK], [uv("log", "append", "wrong catch")], [throw("from finally")])])],
              [uv("log", "append", "{{ error.message }} {{ error.step }}")]),
         ret("{{ log }}")],
        ("ok", ["from finally stack[1].try_block[0].operations[0].finally_block[0]"]),
    ),
    "finally copy on continue raises past two tries": (
        [cv("log", []),
         loop([try_([try_([CONTINUE], [uv("log", "append", "inner")], [throw("f1")])],
                    [uv("log", "append", "outer {{ error.message }} {{ index }}")])], times=2),
         ret("{{ log }}")],
        ("ok", ["outer f1 0", "outer f1 1"]),
    ),
    "finally copy on return raises to the outer try": (
        [cv("log", []),
         try_([try_([ret(1)], [uv("log", "append", "inner")], [throw("f")])],
              [uv("log", "append", "outer {{ error.message }}")], [uv("log", "append", "outer finally")]),
         ret("{{ log }}")],
        ("ok", ["outer f", "outer finally"]),
    ),
    "return inside finally wins": (
        [try_([ret(1)], fin=[ret(2)])], ("ok", 2),
    ),
    "break inside a catch of a finally try": (
        [cv("log", []),
         loop([try_([throw("x")], [BREAK], [uv("log", "append", "f{{ index }}")]), uv("log", "append", "after")]),
         ret("{{ log }}")],
        ("ok", ["f0"]),
    ),
    "read before set": (
        [cond("false", [cv("x", 1)]), ret("{{ x }}")],
        ("failed", {"message": "'x' is read before it is set, in {{ x }}", "type": "ExpressionError",
                    "step": "stack[1]", "expression": "{{ x }}"}),
    ),
    "read before set in a while condition": (
        [cond("false", [cv("x", 1)]), loop([], condition="{{ x < 3 }}")],
        ("failed", {"message": "'x' is read before it is set", "type": "ExpressionError", "step": "stack[1]"}),
    ),
    "constant failing on the hot path": (  # named as through _eval: the same with history on and off
        [cv("a", "{{ 1 / 0 }}")],
        ("failed", {"message": "division by zero (1 / 0) (in {{ 1 / 0 }})", "type": "ExpressionError",
                    "step": "stack[0]", "expression": "{{ 1 / 0 }}"}),
    ),
    "constant condition failing on the hot path": (
        [cond("{{ 'a'.b }}", [cv("x", 1)])],
        ("failed", {"message": "cannot read .b of text 'a': only objects have fields (in {{ 'a'.b }})",
                    "type": "ExpressionError", "step": "stack[0]", "expression": "{{ 'a'.b }}"}),
    ),
    "constant failing through _eval": (
        [cv("a", 0), uv("a", "set", "{{ 1 / 0 }}")],
        ("failed", {"message": "division by zero (1 / 0) (in {{ 1 / 0 }})", "type": "ExpressionError",
                    "step": "stack[1]", "expression": "{{ 1 / 0 }}"}),
    ),
    "constant value, failing update": (
        [cv("a", "text"), uv("a", "append", 5)],
        ("failed", {"message": "cannot append to variable 'a': it is text, not a list", "type": "ExpressionError",
                    "step": "stack[1]"}),
    ),
    "throw type fails": (
        [cv("a", 1), throw("m {{ a }}", "{{ 1 / 0 }}")],
        ("failed", {"message": "division by zero (1 / 0) (in {{ 1 / 0 }})", "type": "ExpressionError",
                    "step": "stack[1]", "expression": "{{ 1 / 0 }}"}),
    ),
    "seed bug: member of text": (
        [loop([loop([cv("t", "{{ item_parent.name }}_sync")], array="{{ [1] }}")], array="{{ ['crm'] }}")],
        None,
    ),
    "for-each over null and over text": (
        [cv("c", 0), loop([uv("c", "increment")], array="{{ null }}"), loop([], array="abc")], None,
    ),
    "times must be whole": ([loop([], times=1.5)], None),
    "switch on text form": (
        [cv("r", []), loop([{"function": "switch", "value": "{{ item }}", "cases": {"1": [uv("r", "append", "one")],
                                                                                   "true": [uv("r", "append", "yes")]},
                             "default": [uv("r", "append", "other")]}], array=[1, True, 7, "1"]),
         ret("{{ r }}")],
        ("ok", ["one", "yes", "other", "one"]),
    ),
    "increment of floats, null and text": (
        [cv("f", 1.5), uv("f", "increment"), uv("f", "decrement", 0.25), cv("z", None), uv("z", "increment", 2),
         cv("t", "x"), try_([uv("t", "increment")], [ret(["{{ f }}", "{{ z }}", "{{ error.message }}"])])],
        ("ok", [2.25, 2, "variable 't' must be a number, got text"]),
    ),
    "return value over the limits": ([ret("{{ 'x' * 3 }}")], None),
    "disabled steps are skipped": (
        [cv("a", 1), {"function": "update_variable", "name": "a", "operation": "set", "value": 9, "disabled": True},
         ret("{{ a }}")],
        ("ok", 1),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_case_agrees_with_the_vm(name):
    stack, expected = CASES[name]
    got = same(stack)
    if expected is not None:
        assert got == expected
    else:
        assert got[0] == "failed"


def test_random_prelude_compiles_natively():
    assert compile_stack([*PRELUDE, ret(1)]).native is not None


async def test_variables_and_inputs_reach_the_scope():
    program = compile_stack([ret(["{{ a }}", "{{ inputs.q }}", "{{ task.name }}", "{{ env.E }}"])])
    ctx = RunContext(env={"E": "e"}, task={"name": "job"})
    assert await execute(program, ctx, {"a": 1}, inputs={"q": 2}) == [1, 2, "job", "e"]


async def test_wait_uses_the_context_clock():
    class Clock:
        slept: list[float] = []

        def time(self):
            return 1000.0

        async def sleep(self, s):
            self.slept.append(s)

    clock = Clock()
    program = compile_stack([{"function": "wait", "duration": 2.5}, ret("{{ now }}")])
    assert await execute(program, RunContext(clock=clock)) == 1000.0
    assert clock.slept == [2.5]


async def test_functions_sync_and_async():
    class Functions:
        async def call(self, name, inputs, ctx):
            if name == "bad":
                raise RunFailed({"message": "inner", "type": "E", "step": "stack[0]"})
            return inputs["x"] * 2

        async def start(self, name, inputs, ctx):
            return "run-1"

    ctx = RunContext(functions=Functions())
    program = compile_stack([
        {"function": "custom_function", "name": "f", "inputs": {"x": 21}, "return_as": "r"},
        {"function": "custom_function", "name": "g", "execution_mode": "async", "return_as": "id"},
        try_([{"function": "custom_function", "name": "bad"}], [cv("e", "{{ error }}")]),
        ret(["{{ r }}", "{{ id }}", "{{ e }}"])])
    assert await execute(program, ctx) == [42, "run-1", {"message": "inner", "type": "E", "step": "stack[2].try_block[0] > stack[0]"}]


async def test_record_steps_without_database_fail_like_the_vm():
    program = compile_stack([{"function": "add_record", "table": "t", "data": {"a": "{{ 1 }}"}}])
    with pytest.raises(RunFailed) as info:
        await execute(program)
    assert info.value.error == {"message": "this run has no database; open the engine with a data source to use record steps",
                                "type": "NoDatabase", "step": "stack[0]"}


async def test_while_true_is_cancelled_and_lets_others_run():
    program = compile_stack([cv("i", 0), loop([uv("i", "increment")], condition="true")])
    assert program.native is not None
    await assert_cancellable_while_others_run(lambda: execute(program))


async def test_cancellation_never_runs_finally_or_catch():
    """A cancelled run stops where it is: no catch, no finally (as on the VM)."""
    seen = []

    class Functions:
        async def call(self, name, inputs, ctx):
            seen.append(name)
            return None

    program = compile_stack([try_([loop([uv("i", "increment")], condition="true")],
                                  [{"function": "custom_function", "name": "catch"}],
                                  [{"function": "custom_function", "name": "finally"}]), cv("i", 0)])
    with anyio.move_on_after(0.05):
        await execute(program, RunContext(functions=Functions()), {"i": 0})
    assert seen == []


def seed_stacks():
    text = SEED.read_text()
    out = []
    for block in re.findall(r"```javascript\n(.*?)```", text, re.S):
        cleaned = re.sub(r"(?m)^\s*//.*$|(?<=[,\[{\s])//[^\n\"]*$", "", block)
        try:
            data = json.loads(cleaned)
        except json.JSONDecodeError:
            continue
        if isinstance(data, list):
            out.append(data)
    return out


def test_every_seed_stack_gets_a_native_function():
    stacks = seed_stacks()
    assert len(stacks) >= 5
    for i, stack in enumerate(stacks):
        low = lower_stack(stack, f"seed{i}", extra_names=frozenset({"inputs"}))
        assert low.diagnostics == [], (i, low.diagnostics)
        assert low.program.native is not None, i
        assert native_source(stack).startswith("async def native(frame, ctx):")


def test_native_source_is_readable_and_safe():
    name = "we'ird\"\\name"
    src = native_source([cv("a", 0), {"function": "switch", "value": "{{ a }}", "cases": {name: [ret(1)]}}])
    compile(src, "<test>", "exec")
    assert repr(name) in src and "async def native(frame, ctx):" in src
    with pytest.raises(CompileError):
        native_source([{"function": "nope"}])


def test_too_deep_for_python_stays_on_the_vm():
    stack = [ret(1)]
    for _ in range(12):
        stack = [loop(stack, times=1)]
    low = lower_stack(stack, "deep")
    assert low.diagnostics == [] and low.program.native.source is None
    assert anyio.run(execute, low.program) == 1
    assert low.program.native.fn is _run  # the VM ran it
    with pytest.raises(CompileError, match="nests deeper"):
        native_source(stack)


async def test_source_is_compiled_at_the_first_run_only():
    program = compile_stack([cv("a", 1), ret("{{ a }}")])
    assert program.native.fn is None and program.native._made is None  # nothing generated at load
    assert await execute(program) == 1
    fn = program.native.fn
    assert fn is not None and await execute(program) == 1 and program.native.fn is fn


# -- loops whose variables live in Python locals ----------------------------------------------
BENCH = [cv("total", 0), cv("count", 0), loop([cond("index % 2 == 0", [uv("total", "increment", "{{ index * index }}"),
                                                                       uv("count", "increment", 1)])], times=50),
         ret({"total": "{{ total }}", "count": "{{ count }}"})]


def test_a_pure_loop_reads_and_writes_locals():
    src = native_source(BENCH)
    body = [line for line in src.splitlines() if "% 2" in line or "_x2 = _x2" in line]
    assert body and all("scope[" not in line for line in body), src
    # written back three times: before the yield, when an error leaves, when the loop ends
    assert src.count("scope['total'] = _x") == 3 + 1, src  # + the slow path of a non-number
    assert same(BENCH) == ("ok", {"total": sum(i * i for i in range(0, 50, 2)), "count": 25})


def test_a_loop_with_an_effect_keeps_the_scope():
    src = native_source([cv("a", 0), loop([uv("a", "increment"), {"function": "log", "message": "{{ a }}"}])])
    assert "_x" not in src


def test_string_literals_that_look_like_the_scope_are_not_rewritten():
    stack = [cv("a", 1), cv("t", ""), loop([uv("t", "set", "{{ \"scope['a']\" ~ a }}"), uv("a", "increment")]),
             ret(["{{ t }}", "{{ a }}"])]
    assert "_x" in native_source(stack)
    assert same(stack) == ("ok", ["scope['a']3", 4])


def test_localize_rewrites_only_reads_of_the_scope():
    from compiler._native import _localize, _NoLocals

    def local(name):
        return {"a": "_x1"}.get(name)

    assert _localize("\"scope['a']\" + scope['a'] + scope['b']", local) == "\"scope['a']\" + _x1 + scope['b']"
    assert _localize("(_t1 if (_t1 := scope['a']) else 0)", local) == "(_t1 if (_t1 := _x1) else 0)"
    assert _localize("scope['a'].x == scope['a']", local) == "_x1.x == _x1"
    for code in ("f(scope)", "x.scope['a']", "scope['a'] = 1", "scope['a'] += 1", "del scope['a']", "scope.get('a')"):
        with pytest.raises(_NoLocals):
            _localize(code, local)


def _racing_clock(monkeypatch):
    """Native code's clock a second further at each read: every clock check yields."""
    from compiler import _native

    ticks = iter(range(1, 10**9))
    monkeypatch.setitem(_native._HELPERS, "_perf", lambda: float(next(ticks)))


def _count_yields(monkeypatch):
    import asyncio

    calls = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay, *args):
        calls.append(delay)
        await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    return calls


def test_a_counted_loop_reads_the_clock_as_often_as_the_countdown(monkeypatch):
    """A for loop with locals counts to its next clock check: the same checks as ``_b -= weight``."""
    import asyncio

    from runtime._limits import NATIVE_INSTRUCTIONS_PER_CHECK as PER_CHECK

    _racing_clock(monkeypatch)
    n, weight = 20_000, 5  # 2 + conditional(1) + its branch(1) + one update(1)
    program = compile_stack([cv("t", 0), loop([cond("index > 1", [uv("t", "increment")])], times=n), ret("{{ t }}")])
    expected, budget = 0, PER_CHECK
    for _ in range(n):
        budget -= weight
        if budget <= 0:
            budget, expected = PER_CHECK, expected + 1
    calls = _count_yields(monkeypatch)
    assert asyncio.run(execute(program)) == n - 2
    assert len(calls) == expected > 0


def test_a_loop_body_with_a_filter_reads_the_clock_at_every_iteration(monkeypatch):
    """A filter may walk a whole list: such an iteration alone can use up a time slice."""
    import asyncio

    _racing_clock(monkeypatch)
    n = 50
    program = compile_stack([cv("l", [3, 1, 2]), cv("t", 0),
                             loop([uv("t", "set", "{{ t + (l|sort|length) }}")], times=n), ret("{{ t }}")])
    calls = _count_yields(monkeypatch)
    assert asyncio.run(execute(program)) == 3 * n
    assert len(calls) >= n - 1


def test_a_run_shorter_than_its_slice_never_yields(monkeypatch):
    import asyncio

    from compiler import _native

    monkeypatch.setitem(_native._HELPERS, "_perf", lambda: 0.0)  # a frozen clock: the slice never ends
    program = compile_stack([cv("t", 0), loop([uv("t", "increment")], times=100_000), ret("{{ t }}")])
    calls = _count_yields(monkeypatch)
    assert asyncio.run(execute(program)) == 100_000 and calls == []


async def test_a_long_times_loop_with_locals_is_cancelled():
    program = compile_stack([cv("i", 0), loop([uv("i", "increment")], times=10**12), ret("{{ i }}")])
    assert "_x" in program.native.source
    await assert_cancellable_while_others_run(lambda: execute(program))


# -- effects: fields evaluated inline, the EFFECTS handler awaited directly ---------------------
class RecordingHttp:
    """An ``Http`` that records what each request was given and answers with the URL."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    async def request(self, method, url, **kw):
        self.calls.append((method, url, copy.deepcopy(kw)))
        if self.fail:
            raise RunError(self.fail, error_type="HttpError")
        if isinstance(kw.get("headers"), dict):
            kw["headers"]["mutated"] = "by the handler"  # must not leak into the next call
        return HttpResponse(200, {}, {"url": url})


async def _both(stack, make_ctx):
    """(outcome, ctx) on the VM, then on the native code, each with a fresh context."""
    program = compile_stack(stack)
    results = []
    for native in (False, True):
        ctx = make_ctx()
        frame = Frame(program, _new_scope(ctx, None, None))
        try:
            got = ("ok", await (program.native(frame, ctx) if native else _run(frame, ctx)))
        except RunFailed as exc:
            got = ("failed", exc.error)
        results.append((got, ctx))
    (vm, vm_ctx), (nat, nat_ctx) = results
    assert nat == vm, f"\nVM:     {vm}\nnative: {nat}"
    return vm, vm_ctx, nat_ctx


HTTP_STEP = {"function": "external_api_request", "url": "{{ base }}/x", "method": "post",
             "headers": {"Authorization": "Bearer {{ base }}", "n": 1}, "query": {"page": "{{ index }}"},
             "body": {"items": "{{ [index] }}"}, "body_format": "form", "timeout": "{{ 5 }}", "retries": 2,
             "return_as": "r"}


async def test_effect_fields_reach_the_handler_as_on_the_vm():
    stack = [cv("base", "http://h"), cv("out", []),
             loop([HTTP_STEP, uv("out", "append", "{{ r }}")], times=2), ret("{{ out }}")]
    src = native_source(stack)
    assert "_EFFECTS['external_api_request'](ctx, {" in src and "_effect(" not in src, src
    outcome, vm_ctx, nat_ctx = await _both(stack, lambda: RunContext(http=RecordingHttp()))
    assert outcome == ("ok", [{"url": "http://h/x"}, {"url": "http://h/x"}])
    assert nat_ctx.http.calls == vm_ctx.http.calls
    method, url, kw = nat_ctx.http.calls[1]
    assert kw["headers"] == {"Authorization": "Bearer http://h", "n": 1}  # a fresh object per call
    assert kw["query"] == {"page": 1} and kw["body"] == {"items": [1]} and kw["body_format"] == "form"
    assert (kw["timeout"], kw["retries"]) == (5.0, 2)


async def test_effect_defaults_and_missing_fields_as_on_the_vm():
    stack = [{"function": "external_api_request", "url": "http://h/only"}]
    outcome, vm_ctx, nat_ctx = await _both(stack, lambda: RunContext(http=RecordingHttp()))
    assert outcome == ("ok", None)
    assert nat_ctx.http.calls == vm_ctx.http.calls
    assert nat_ctx.http.calls[0][2]["timeout"] == 30.0


@pytest.mark.parametrize("bad", [
    {"url": "{{ a }}"},  # read before it is set: named like _eval names it
    {"headers": "{{ base.x.y }}"},  # an expression error in a later field
    {"timeout": "{{ 'ten' }}"},  # a value the handler refuses
    {"url": "{{ 1 / 0 }}"},
])
async def test_effect_errors_are_the_vms(bad):
    stack = [cv("base", "http://h"), {**HTTP_STEP, **bad}]
    outcome, _, _ = await _both(stack, lambda: RunContext(http=RecordingHttp()))
    assert outcome[0] == "failed" and outcome[1]["step"] == "stack[1]"


async def test_effect_handler_errors_are_caught_as_on_the_vm():
    stack = [cv("base", "http://h"),
             try_([cv("x", 1), HTTP_STEP], [cv("e", "{{ error }}")]),
             {"function": "add_record", "table": "t", "data": {"a": 1}, "return_as": "never"},
             ret("{{ e }}")]
    outcome, _, _ = await _both(stack, lambda: RunContext(http=RecordingHttp(fail="down")))
    assert outcome[0] == "failed" and outcome[1]["type"] == "NoDatabase"
    stack[-2:] = [ret("{{ e }}")]
    outcome, _, _ = await _both(stack, lambda: RunContext(http=RecordingHttp(fail="down")))
    assert outcome == ("ok", {"message": "down", "type": "HttpError", "step": "stack[1].try_block[1]"})
    outcome, _, _ = await _both(stack, lambda: RunContext())
    assert outcome[1]["type"] == "NoHttp"


async def test_effect_handlers_are_looked_up_at_each_call(monkeypatch):
    from runtime import _effects

    seen = []

    async def fake(ctx, fields):
        seen.append(fields)
        return "patched"

    program = compile_stack([{"function": "count_records", "table": "t", "return_as": "n"}, ret("{{ n }}")])
    monkeypatch.setitem(_effects.EFFECTS, "count_records", fake)
    assert await execute(program) == "patched" and seen == [{"table": "t"}]


class RecordingRecords:
    """A store with ``queue_add`` that records what each add was given, ``keep`` included."""

    def __init__(self):
        self.adds = []

    def queue_add(self, table, data, keep=True):
        self.adds.append((table, data, keep))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result({"id": len(self.adds), **data} if keep else None)
        return fut


async def test_add_record_without_return_as_asks_for_no_record():
    add = {"function": "add_record", "table": "t", "data": "{{ item }}"}
    stack = [cv("out", []), loop([add, {**add, "return_as": "r"}, uv("out", "append", "{{ r }}")],
                                 array=[{"a": 1}, {"a": 2}]), ret("{{ out }}")]
    src = native_source(stack)
    assert "_EFFECTS['add_record'](ctx, {'table': _A0, 'data': _e2}, False)" in src, src
    outcome, vm_ctx, nat_ctx = await _both(stack, lambda: RunContext(records=RecordingRecords()))
    assert outcome == ("ok", [{"id": 2, "a": 1}, {"id": 4, "a": 2}])
    assert [keep for _, _, keep in nat_ctx.records.adds] == [False, True, False, True]
    assert [add[:2] for add in nat_ctx.records.adds] == [add[:2] for add in vm_ctx.records.adds]


@pytest.mark.parametrize(("data", "inlined"), [
    ("{{ item }}", True),
    ("{{item}}", True),
    ("{{ later }}", True),  # set only after the loop: the same error as on the VM
    ("{{ item | keys }}", False),
    ("{{ item.a }}", False),
    ("{{ true }}", False),
    ("item", False),
])
async def test_an_effect_field_that_reads_one_variable_is_inlined(data, inlined):
    stack = [loop([{"function": "add_record", "table": "t", "data": data, "return_as": "r"}],
                  array=[{"a": 1}]), cv("later", {}), ret("{{ r }}")]
    src = native_source(stack)
    name = data.strip("{} ")
    assert (f"_e2 = scope[{name!r}]" in src) is inlined, src
    outcome, _, _ = await _both(stack, lambda: RunContext(records=RecordingRecords()))
    if name == "later":
        assert outcome[0] == "failed" and "later" in outcome[1]["message"], outcome
    elif inlined:
        assert outcome == ("ok", {"id": 1, "a": 1})


@pytest.mark.parametrize(("fields", "message"), [
    ({"url": ""}, "'url' must be text"),
    ({"method": 3}, "'method' must be text"),
    ({"timeout": True}, "'timeout' must be a positive number"),
    ({"timeout": 0}, "'timeout' must be a positive number"),
    ({"headers": ["a"]}, "'headers' must be an object"),
    ({"query": "a=1"}, "'query' must be an object"),
    ({"retries": -1}, "'retries' must be a whole number"),
    ({"retries": 1.5}, "'retries' must be a whole number"),
])
async def test_http_step_checks_its_fields(fields, message):
    from runtime._effects import EFFECTS

    http = RecordingHttp()
    with pytest.raises(RunError, match=message):
        await EFFECTS["external_api_request"](RunContext(http=http), {"url": "http://h/x", **fields})
    assert http.calls == []


async def test_http_step_passes_empty_objects_and_absent_fields_as_none():
    from runtime._effects import EFFECTS

    http = RecordingHttp()
    fields = {"url": "http://h/x", "method": "patch", "headers": {}, "query": {}, "retries": 2.0, "timeout": 3}
    assert await EFFECTS["external_api_request"](RunContext(http=http), fields) == {"url": "http://h/x"}
    assert http.calls == [("PATCH", "http://h/x", {
        "headers": None, "query": None, "body": None, "body_format": "json", "timeout": 3.0, "retries": 2,
        "follow_redirects": True})]


def test_a_value_list_that_starts_with_an_object_compiles():
    """The yield countdown's weight walks lists of objects; a value such as [{}, null] is one (found by fuzzing)."""
    stack = [cv("a", 1), loop([{"function": "conditional", "condition": "true",
                                "true_branch": [cv("x", [{}, None, 3])]}]), ret("{{ x }}")]
    assert same(stack) == ("ok", [{}, None, 3])


def _localize_by_tokens(code, local_of):
    """The tokenize-based rewrite ``localize`` replaced, kept as its reference."""
    import io
    import re
    import tokenize

    from compiler._native import _NoLocals

    if "scope" not in code:
        return code
    toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    starts = [0]
    for text in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(text))
    out, pos = [], 0
    for k, tok in enumerate(toks):
        if tok.type != tokenize.NAME or tok.string != "scope":
            continue
        nxt = toks[k + 1 : k + 5]
        if (
            len(nxt) < 4
            or (k and toks[k - 1].string in (".", "del"))
            or nxt[0].string != "["
            or nxt[1].type != tokenize.STRING
            or nxt[2].string != "]"
            or (nxt[3].string.endswith("=") and nxt[3].string not in ("==", "!=", "<=", ">="))
        ):
            raise _NoLocals(code)
        quoted = nxt[1].string
        name = quoted[1:-1] if re.match(r"""(['"])[A-Za-z_][A-Za-z0-9_]*\1\Z""", quoted) else None
        var = local_of(name) if name is not None else None
        if var is None:
            continue
        out.append(code[pos : starts[tok.start[0] - 1] + tok.start[1]])
        out.append(var)
        pos = starts[nxt[2].end[0] - 1] + nxt[2].end[1]
    out.append(code[pos:])
    return "".join(out)


@pytest.mark.parametrize(
    "text",
    [
        "{{ a + b * 2 }}", "{{ 'scope[\\'a\\']' ~ a }}", "{{ o.scope }}", "{{ o['a'] ~ \"it's\" }}",
        "x{{ a }}-{{ item.id }}", {"k": "{{ a }}", "l": ["{{ b }}", "{{ a|length }}"]}, "{{ a > 1 ? a : b }}",
        "{{ l|first ?? a }}", "{{ o|merge({a: a}) }}", "{{ '#' ~ a ~ \"#\" }}", "{{ [a, b, scope] }}",
        "{{ now - a > b }}", "{{ a == 1 and b != 2 or a <= b }}", "{{ o['x y'] ~ a }}",
    ],
)
def test_localize_agrees_with_the_tokenize_rewrite(text):
    """On the expression compiler's own code the regex scan rewrites and refuses exactly as tokenize did."""
    from compiler._expr import field_code
    from compiler._native import _localize, _NoLocals

    def local(name):
        return {"a": "_x1", "b": "_x2", "item": "_x3"}.get(name)

    stmts, result = field_code(text, "t")
    for code in (*stmts, result, f"{result} = 1", f"del {result}", f"{result} += 1"):
        try:
            want = _localize_by_tokens(code, local)
        except _NoLocals:
            want = _NoLocals
        try:
            got = _localize(code, local)
        except _NoLocals:
            got = _NoLocals
        assert got == want, code


# -- update_variable keeps the limits of + and - and the equality of == ---------------------------


@pytest.mark.parametrize("local", [False, True])
async def test_increment_refuses_a_number_past_the_limits(local):
    """Doubling by increment passes 256 bits; a float incremented past the largest one is refused."""
    body = [uv("x", "increment", "{{ x }}")] if local else [uv("x", "increment", "{{ x }}"), cv("seen", "{{ x }}")]
    outcome, _, _ = await _both([cv("x", 1), loop(body, times=300), ret("{{ x }}")], RunContext)
    assert outcome[0] == "failed" and outcome[1]["type"] == "LimitExceeded" and "256 bits" in outcome[1]["message"]
    outcome, _, _ = await _both([cv("x", 1e308), loop([uv("x", "increment", 1e308)], times=2), ret("{{ x }}")],
                                RunContext)
    assert outcome[0] == "failed" and "too large" in outcome[1]["message"], outcome
    outcome, _, _ = await _both([cv("x", 2**255), uv("x", "decrement", -(2**255)), ret("{{ x }}")], RunContext)
    assert outcome[0] == "failed" and outcome[1]["type"] == "LimitExceeded"
    ok, _, _ = await _both([cv("x", 1.5), loop([uv("x", "increment")], times=3), ret("{{ x }}")], RunContext)
    assert ok == ("ok", 4.5)


async def test_remove_uses_the_equality_of_eq():
    stack = [cv("l", [1, 0, True, False, 1.0, "1", [1], {"a": 1}]),
             uv("l", "remove", True), uv("l", "remove", 0), uv("l", "remove", [1.0]), ret("{{ l }}")]
    outcome, _, _ = await _both(stack, RunContext)
    assert outcome == ("ok", [1, False, 1.0, "1", {"a": 1}])
