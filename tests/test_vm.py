"""The VM: each step kind's semantics, errors as objects, cooperation with the event loop."""

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler import lower_stack
from runtime import RunContext, RunFailed, execute
from runtime._limits import INSTRUCTIONS_PER_CHECK
from runtime._vm import Frame, _new_scope, _run
from tests.support import assert_cancellable_while_others_run

pytestmark = pytest.mark.anyio


def compile_stack(stack):
    low = lower_stack(stack, "t", extra_names=frozenset({"xs", "n"}))
    assert low.diagnostics == []
    return low.program


class Quiet:
    """A tracer that keeps nothing: with one, execute() interprets the instructions (the VM)."""

    def step(self, *args):
        pass

    def log(self, *args):
        pass


async def run(stack, ctx=None, **variables):
    """Run ``stack``; with no context given, on the VM, the traced native code and the native code,
    which must agree. (A context's fakes record calls, so those runs go through execute() once.)

    With a tracer, execute() runs the native code's traced variant, not the VM: the VM runs here
    through ``_run`` itself.
    """
    program = compile_stack(stack)
    if ctx is not None:
        return await execute(program, ctx, variables)
    outcomes = []
    vm = RunContext()
    runs = (
        lambda: _run(Frame(program, _new_scope(vm, dict(variables), None)), vm),  # the interpreter
        lambda: execute(program, RunContext(tracer=Quiet()), dict(variables)),  # the traced native code
        lambda: execute(program, RunContext(), dict(variables)),  # the native code
    )
    for start in runs:
        try:
            outcomes.append(("result", await start()))
        except RunFailed as exc:
            outcomes.append(("error", exc))
    (vm_kind, vm_value), *others = outcomes
    for kind, value in others:
        assert kind == vm_kind, outcomes
        if vm_kind == "error":
            assert value.error == vm_value.error
        else:
            assert value == vm_value
    if vm_kind == "error":
        raise vm_value
    return vm_value


def cv(name, value):
    return {"function": "create_variable", "name": name, "value": value}


def uv(name, op, value=None):
    return {"function": "update_variable", "name": name, "operation": op, "value": value}


def ret(value):
    return {"function": "return", "value": value}


async def test_create_and_return_typed_values():
    assert await run([cv("a", "{{ 1 + 2 }}"), ret({"a": "{{ a }}", "t": "a={{ a }}"})]) == {"a": 3, "t": "a=3"}


async def test_no_return_gives_none():
    assert await run([cv("a", 1)]) is None


@pytest.mark.parametrize(
    ("op", "start", "value", "expected"),
    [
        ("set", 1, 5, 5),
        ("increment", 1, 5, 6),
        ("increment", 1, None, 2),
        ("decrement", 10, 3, 7),
        ("append", [1], 2, [1, 2]),
        ("append", None, 2, [2]),
        ("merge", {"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ("remove", {"a": 1, "b": 2}, "a", {"b": 2}),
        ("remove", [1, 2, 1], 1, [2]),
    ],
)
async def test_update_operations(op, start, value, expected):
    assert await run([cv("v", start), uv("v", op, value), ret("{{ v }}")]) == expected


async def test_update_does_not_change_aliases():
    stack = [cv("a", [1]), cv("b", "{{ a }}"), uv("a", "append", 2), cv("o", {"x": 1}), cv("p", "{{ o }}"),
             uv("o", "merge", {"y": 2}), ret(["{{ a }}", "{{ b }}", "{{ o }}", "{{ p }}"])]
    assert await run(stack) == [[1, 2], [1], {"x": 1, "y": 2}, {"x": 1}]


async def test_constant_containers_are_fresh_each_run():
    program = compile_stack([cv("a", []), uv("a", "append", 1), ret("{{ a }}")])
    assert await execute(program) == [1]
    assert await execute(program) == [1]


async def test_update_type_errors_are_run_errors():
    with pytest.raises(RunFailed) as info:
        await run([cv("v", "text"), uv("v", "append", 1)])
    assert info.value.error["step"] == "stack[1]" and "not a list" in info.value.error["message"]


async def test_conditional_branches():
    stack = [{"function": "conditional", "condition": "{{ n > 2 }}", "true_branch": [ret("big")],
              "false_branch": [ret("small")]}]
    assert await run(stack, n=3) == "big"
    assert await run(stack, n=1) == "small"


@pytest.mark.parametrize("cond", ["true", True, "{{ true }}", "1 == 1"])
async def test_bare_conditions(cond):
    assert await run([{"function": "conditional", "condition": cond, "true_branch": [ret(1)]}, ret(0)]) == 1


async def test_switch_matches_text_form():
    stack = [{"function": "switch", "value": "{{ n }}", "cases": {"1": [ret("one")], "true": [ret("yes")]},
              "default": [ret("other")]}]
    assert await run(stack, n=1) == "one"
    assert await run(stack, n=True) == "yes"
    assert await run(stack, n=7) == "other"


async def test_loops_item_parent_and_index_restored():
    stack = [
        cv("out", []),
        {"function": "loop", "array": "{{ ['a', 'b'] }}", "operations": [
            {"function": "loop", "array": "{{ [1, 2] }}", "operations": [
                uv("out", "append", "{{ item_parent }}{{ item }}{{ index }}")]},
            uv("out", "append", "{{ item }}{{ index }}"),
        ]},
        ret(["{{ out }}", "{{ item }}", "{{ index }}"]),
    ]
    assert await run(stack) == [["a10", "a21", "a0", "b10", "b21", "b1"], None, None]


async def test_while_and_times_loops_and_break_continue():
    stack = [cv("i", 0), cv("seen", []),
             {"function": "loop", "condition": "true", "operations": [
                 uv("i", "increment"),
                 {"function": "conditional", "condition": "{{ i > 5 }}", "true_branch": [{"function": "break_loop"}]},
                 {"function": "conditional", "condition": "{{ i % 2 == 0 }}", "true_branch": [{"function": "continue_loop"}]},
                 uv("seen", "append", "{{ i }}")]},
             {"function": "loop", "times": 3, "operations": [uv("seen", "append", "{{ index * 10 }}")]},
             ret("{{ seen }}")]
    assert await run(stack) == [1, 3, 5, 0, 10, 20]


async def test_loop_over_null_runs_zero_times_and_over_text_fails():
    assert await run([cv("c", 0), {"function": "loop", "array": "{{ null }}", "operations": [uv("c", "increment")]},
                      ret("{{ c }}")]) == 0
    with pytest.raises(RunFailed, match="needs a list"):
        await run([{"function": "loop", "array": "abc", "operations": []}])


async def test_try_catch_error_object_and_finally_order():
    stack = [cv("log", []),
             {"function": "try_catch",
              "try_block": [uv("log", "append", "try"), {"function": "throw_error", "message": "bad {{ 1 }}", "type": "Custom"}],
              "catch_block": [uv("log", "append", "{{ error.type }}:{{ error.message }}:{{ error.step }}")],
              "finally_block": [uv("log", "append", "finally")]},
             ret("{{ log }}")]
    assert await run(stack) == ["try", "Custom:bad 1:stack[1].try_block[1]", "finally"]


async def test_finally_runs_on_break_continue_return_and_rethrows():
    fin = {"finally_block": [uv("log", "append", "f{{ index }}")]}
    stack = [cv("log", []),
             {"function": "loop", "times": 3, "operations": [
                 {"function": "try_catch", "try_block": [
                     {"function": "conditional", "condition": "{{ index == 0 }}", "true_branch": [{"function": "continue_loop"}]},
                     {"function": "conditional", "condition": "{{ index == 1 }}", "true_branch": [{"function": "break_loop"}]}], **fin}]},
             {"function": "try_catch", "try_block": [ret("{{ log }}")], "finally_block": [uv("log", "append", "last")]}]
    assert await run(stack) == ["f0", "f1"]
    with pytest.raises(RunFailed) as info:
        await run([cv("log", []), {"function": "try_catch",
                                   "try_block": [{"function": "throw_error", "message": "x", "type": "T"}],
                                   "finally_block": [uv("log", "append", 1)]}])
    assert info.value.error["type"] == "T"


async def test_thrown_message_from_an_expression_is_kept_as_written():
    """A rethrow keeps the message: a thrown error is not an expression that failed."""
    rethrow = {"function": "throw_error", "message": "{{ error.message }}", "type": "{{ error.type }}"}
    stack = [{"function": "try_catch",
              "try_block": [{"function": "try_catch",
                             "try_block": [{"function": "throw_error", "message": "disk full", "type": "IOFail"}],
                             "catch_block": [rethrow]}],
              "catch_block": [ret("{{ [error.type, error.message] }}")]}]
    assert await run(stack) == ["IOFail", "disk full"]
    with pytest.raises(RunFailed) as info:
        await run([cv("c", "E42"), {"function": "throw_error", "message": "code {{ c }}"}])
    assert info.value.error["message"] == "code E42"


async def test_error_inside_catch_still_runs_finally():
    stack = [cv("log", []),
             {"function": "try_catch",
              "try_block": [{"function": "try_catch",
                             "try_block": [{"function": "throw_error", "message": "one"}],
                             "catch_block": [{"function": "throw_error", "message": "two"}],
                             "finally_block": [uv("log", "append", "inner-finally")]}],
              "catch_block": [uv("log", "append", "{{ error.message }}")]},
             ret("{{ log }}")]
    assert await run(stack) == ["inner-finally", "two"]


async def test_catch_restores_loop_depth():
    stack = [cv("n", 0),
             {"function": "try_catch", "try_block": [
                 {"function": "loop", "times": 5, "operations": [
                     {"function": "conditional", "condition": "{{ index == 2 }}",
                      "true_branch": [{"function": "throw_error", "message": "stop"}]}]}],
              "catch_block": [uv("n", "set", "{{ index }}")]},
             {"function": "loop", "times": 2, "operations": [uv("n", "increment")]},
             ret("{{ n }}")]
    assert await run(stack) == 2  # index restored to null in the catch, then two increments


def throw(message, etype="E"):
    return {"function": "throw_error", "message": message, "type": etype}


def try_catch(try_block, catch_block=None, finally_block=None):
    step = {"function": "try_catch", "try_block": try_block}
    if catch_block is not None:
        step["catch_block"] = catch_block
    if finally_block is not None:
        step["finally_block"] = finally_block
    return step


SEEN = uv("log", "append", "{{ error.message ?? 'null' }}")


async def test_error_is_the_outer_one_again_after_a_nested_try_catch():
    stack = [cv("log", []),
             try_catch([throw("outer", "A")], [
                 try_catch([throw("inner", "B")], [uv("log", "append", "{{ error.message }}")]),
                 uv("log", "append", "{{ error.message }}")]),
             ret("{{ log }}")]
    assert await run(stack) == ["inner", "outer"]


async def test_error_is_null_outside_a_catch_before_and_after_a_try_catch():
    stack = [cv("log", []), SEEN,
             try_catch([throw("one")], [SEEN]), SEEN,
             try_catch([throw("two")], []), SEEN,  # an empty catch drops the error
             try_catch([cv("x", 1)], [SEEN]), SEEN,
             ret(["{{ log }}", "{{ error }}"])]
    assert await run(stack) == [["null", "one", "null", "null", "null"], None]
    assert await run([try_catch([throw("x")], [cv("seen", "{{ error.message }}")]), ret(["{{ seen }}", "{{ error }}"])]) == ["x", None]


async def test_finally_after_a_catch_sees_the_error_then_it_is_put_back():
    stack = [cv("log", []),
             try_catch([throw("outer")], [
                 try_catch([throw("inner")], [SEEN], [SEEN]), SEEN,
                 try_catch([cv("x", 1)], [SEEN], [SEEN]), SEEN]),  # no error: the finally sees the outer one
             SEEN, ret("{{ log }}")]
    assert await run(stack) == ["inner", "inner", "outer", "outer", "outer", "null"]


async def test_an_error_in_a_catch_is_the_error_of_the_finally_and_of_the_handler_outside():
    stack = [cv("log", []),
             try_catch([throw("outer")], [try_catch([try_catch([throw("one")], [throw("two")], [SEEN])], [SEEN]), SEEN]),
             SEEN, ret("{{ log }}")]
    assert await run(stack) == ["two", "two", "outer", "null"]
    rethrow = [try_catch([try_catch([throw("one")], [throw("{{ error.message }}!")])], [SEEN]), SEEN]
    assert await run([cv("log", []), *rethrow, ret("{{ log }}")]) == ["one!", "null"]


@pytest.mark.parametrize("exit_step", ["continue_loop", "break_loop"])
async def test_continue_or_break_out_of_a_catch_puts_error_back(exit_step):
    stack = [cv("log", []),
             try_catch([throw("outer")], [
                 {"function": "loop", "times": 2, "operations": [
                     SEEN,
                     try_catch([throw("inner{{ index }}")], [SEEN, {"function": exit_step}]),
                     uv("log", "append", "not reached")]},
                 SEEN]),
             SEEN, ret("{{ log }}")]
    if exit_step == "continue_loop":
        assert await run(stack) == ["outer", "inner0", "outer", "inner1", "outer", "null"]
    else:
        assert await run(stack) == ["outer", "inner0", "outer", "null"]


@pytest.mark.parametrize("exit_step", ["continue_loop", "break_loop"])
async def test_continue_or_break_out_of_a_finally_puts_error_back(exit_step):
    """Out of a finally entered by an error (which the jump drops), and out of one after a catch."""
    done = [SEEN, {"function": exit_step}]
    stack = [cv("log", []),
             {"function": "loop", "times": 2, "operations": [
                 SEEN, try_catch([throw("a{{ index }}")], None, done), uv("log", "append", "not reached")]},
             {"function": "loop", "times": 1, "operations": [
                 try_catch([throw("b")], [SEEN], done)]},
             {"function": "loop", "times": 1, "operations": [
                 try_catch([throw("c")], [SEEN, {"function": exit_step}], [SEEN])]},
             SEEN, ret("{{ log }}")]
    first = ["null", "a0", "null", "a1"] if exit_step == "continue_loop" else ["null", "a0"]
    assert await run(stack) == [*first, "b", "b", "c", "c", "null"]


async def test_a_finally_run_by_a_return_from_an_inner_catch_sees_the_error_around_it():
    stack = [try_catch([try_catch([throw("inner")], [ret("{{ error.message }}")])], None,
                       [ret("{{ error.message ?? 'null' }}")])]
    assert await run(stack) == "null"
    stack = [try_catch([throw("outer")], [
        try_catch([try_catch([throw("inner")], [ret("{{ error.message }}")])], None, [ret("{{ error.message }}")])])]
    assert await run(stack) == "outer"
    stack = [try_catch([try_catch([throw("inner")], [ret("{{ error.message }}")])], None, [cv("x", 1)])]
    assert await run(stack) == "inner"  # the return's value is taken before the finally runs


async def test_error_from_the_callers_variables_is_put_back_too():
    assert await run([try_catch([throw("x")], []), ret("{{ error }}")], error={"message": "given"}) == {"message": "given"}


@pytest.mark.parametrize("name", ["error", "item", "index", "env", "task", "now"])
async def test_return_as_a_built_in_name_is_a_compile_error(name):
    """As create_variable refuses them: a stack cannot assign ``error`` (so only try_catch
    sets it, and each puts it back), nor shadow ``item``, ``env``, ``now``..."""
    for step in ({"function": "custom_function", "name": "f", "return_as": name},
                 {"function": "count_records", "table": "t", "return_as": name}):
        low = lower_stack([step], "t")
        assert [(d.path, d.message) for d in low.diagnostics] == [
            ("stack[0].return_as", f"'{name}' is a built-in name; choose another variable name")]


async def test_seed_bug_member_of_text_names_step_and_expression():
    stack = [{"function": "loop", "array": "{{ ['crm'] }}", "operations": [
        {"function": "loop", "array": "{{ [1] }}", "operations": [
            cv("t", "{{ item_parent.name }}_sync")]}]}]
    with pytest.raises(RunFailed) as info:
        await run(stack)
    err = info.value.error
    assert err["step"] == "stack[0].operations[0].operations[0]"
    assert "item_parent.name" in err["message"] and err["type"] == "ExpressionError"


async def test_read_before_set_is_runtime_error():
    stack = [{"function": "conditional", "condition": "false", "true_branch": [cv("x", 1)]}, ret("{{ x }}")]
    with pytest.raises(RunFailed, match="'x' is read before it is set"):
        await run(stack)


async def test_wait_uses_the_context_clock():
    class Clock:
        slept = []

        def time(self):
            return 1000.0

        async def sleep(self, s):
            self.slept.append(s)

    clock = Clock()
    assert await run([{"function": "wait", "duration": 2.5}, ret("{{ now }}")], RunContext(clock=clock)) == 1000.0
    assert clock.slept == [2.5]


async def test_compute_loop_yields_and_can_be_cancelled():
    """On the VM, a `while true` loop lets other tasks run and stops at a timeout (test_native: the same natively)."""
    program = compile_stack([cv("i", 0), {"function": "loop", "condition": "true", "operations": [uv("i", "increment")]}])
    await assert_cancellable_while_others_run(lambda: execute(program, RunContext(tracer=Quiet())))


class _Clock:
    """``perf_counter`` for the VM and the native code: frozen, or a second further at each read."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize(("step", "yields"), [(0.0, False), (1.0, True)])
async def test_a_run_yields_when_its_time_slice_is_used_up(monkeypatch, step, yields):
    """The clock is read every INSTRUCTIONS_PER_CHECK instructions; a turn is given only once the
    slice is used up: never with a frozen clock, at every read with one that races ahead."""
    import asyncio
    import types

    from compiler import _native

    clock = _Clock(step)
    monkeypatch.setattr("runtime._vm.time", types.SimpleNamespace(perf_counter=clock.perf_counter, time=lambda: 0.0))
    monkeypatch.setitem(_native._HELPERS, "_perf", clock.perf_counter)
    count = 0
    real_sleep = asyncio.sleep

    async def counting_sleep(delay, *a, **k):
        nonlocal count
        count += 1
        await real_sleep(0)

    n = 100 * INSTRUCTIONS_PER_CHECK
    program = compile_stack([cv("i", 0), {"function": "loop", "times": n, "operations": [uv("i", "increment")]}])
    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    await execute(program, RunContext(tracer=Quiet()))  # the VM
    vm_count, count = count, 0
    await execute(program)  # the native code
    if not yields:
        assert vm_count == count == 0
    else:
        # two or three instructions per iteration (LOOP_NEXT, UPDATE, JUMP): a read every 8
        assert 2 * n // INSTRUCTIONS_PER_CHECK <= vm_count <= 3 * n // INSTRUCTIONS_PER_CHECK + 2
        assert count > 0


async def test_functions_interface_and_async_mode():
    calls = []

    class Functions:
        async def call(self, name, inputs, ctx):
            calls.append(("call", name, inputs))
            return inputs["x"] * 2

        async def start(self, name, inputs, ctx):
            calls.append(("start", name, inputs))
            return "run-1"

    stack = [{"function": "custom_function", "name": "f", "inputs": {"x": 21}, "return_as": "r"},
             {"function": "custom_function", "name": "g", "inputs": {}, "execution_mode": "async", "return_as": "id"},
             ret(["{{ r }}", "{{ id }}"])]
    assert await run(stack, RunContext(functions=Functions())) == [42, "run-1"]
    assert calls == [("call", "f", {"x": 21}), ("start", "g", {})]


async def test_record_steps_without_database_fail_clearly():
    with pytest.raises(RunFailed) as info:
        await run([{"function": "add_record", "table": "t", "data": {}}])
    assert info.value.error["type"] == "NoDatabase"


async def test_tracer_sees_steps_and_logs():
    class Tracer:
        def __init__(self):
            self.steps, self.logs = [], []

        def step(self, path, kind, started, duration, inputs, output, error):
            self.steps.append((path, kind, output, error and error["type"]))

        def log(self, path, level, message):
            self.logs.append((path, level, message))

    tracer = Tracer()
    stack = [cv("a", 1), {"function": "log", "message": "a is {{ a }}", "level": "warning"},
             {"function": "try_catch", "try_block": [{"function": "throw_error", "message": "x", "type": "E"}]},
             ret("{{ a }}")]
    assert await run(stack, RunContext(tracer=tracer)) == 1
    assert tracer.logs == [("stack[1]", "warning", "a is 1")]
    kinds = [s[1] for s in tracer.steps]
    assert kinds == ["create_variable", "log", "try_catch", "throw_error", "return"]
    assert tracer.steps[3][3] == "E"


@given(st.lists(st.integers(min_value=-1000, max_value=1000), max_size=40), st.integers(min_value=1, max_value=7))
def test_differential_against_python(xs, n):
    """A stack and the same logic in Python agree on generated inputs."""
    stack = [cv("total", 0), cv("evens", []), cv("count", 0),
             {"function": "loop", "array": "{{ xs }}", "operations": [
                 {"function": "conditional", "condition": "{{ item % n == 0 }}",
                  "true_branch": [uv("evens", "append", "{{ item }}"), uv("total", "increment", "{{ item * item }}")],
                  "false_branch": [uv("count", "increment")]},
                 {"function": "conditional", "condition": "{{ total > 100000 }}", "true_branch": [{"function": "break_loop"}]}]},
             ret(["{{ total }}", "{{ evens }}", "{{ count }}"])]
    program = compile_stack(stack)

    def reference():
        total, evens, count = 0, [], 0
        for x in xs:
            if x % n == 0:
                evens.append(x)
                total += x * x
            else:
                count += 1
            if total > 100000:
                break
        return [total, evens, count]

    assert anyio.run(execute, program, None, {"xs": xs, "n": n}) == reference()


async def test_execute_hands_back_the_runs_own_coroutine_and_raises_when_awaited():
    """No coroutine of ``execute``'s between the caller and the run: one frame less per resume."""
    program = compile_stack([ret(1)])
    coro = execute(program)
    assert coro.cr_code.co_name != "execute" and await coro == 1
    deep = RunContext()
    deep.depth = 10_000
    pending = execute(program, deep)  # the refusal comes at the await, as from an async def
    with pytest.raises(RunFailed, match="nested deeper"):
        await pending
