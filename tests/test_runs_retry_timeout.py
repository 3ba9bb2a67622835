"""Retries past where backoff overflows a float, defects while scheduling a retry, and the
trace of timed-out and cancelled runs (virtual time)."""

import math

import anyio
import pytest

from compiler import CompileError
from compiler._definitions import RetryPolicy, compile_task
from engine import Engine, EngineConfig, FakeClock

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
FAIL = {"function": "throw_error", "message": "nope", "type": "Boom"}
WAIT = lambda s: {"function": "wait", "duration": s}  # noqa: E731


@pytest.fixture(autouse=True)
def quick_shutdown(monkeypatch):
    """Runs still waiting on a virtual clock at the end of a test are cancelled at once."""
    monkeypatch.setattr("engine._engine.load_config", lambda _dir: EngineConfig(shutdown_grace=0.05))


async def settle(clock):
    for _ in range(3):
        await clock.run_until_idle()
        await anyio.sleep(0.003)


async def advance(clock, seconds):
    for _ in range(int(seconds)):
        await clock.advance(1)
        await settle(clock)


def task(name, stack, **settings):
    return {"name": name, "stack": stack, **settings}


# -- the retry delay --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "overflows_at"),
    [(2.0, 1025), (10.0, 310), (1e300, 3)],
)
def test_the_delay_is_the_cap_where_the_power_overflows_a_float(backoff, overflows_at):
    with pytest.raises(OverflowError):
        backoff ** (overflows_at - 1)  # what the formula meets at that attempt
    policy = RetryPolicy(max_retries=10**6, retry_delay=0.5, backoff=backoff, max_delay=7.0)
    for attempt in (overflows_at - 1, overflows_at, overflows_at + 1, 10**6, 10**18):
        assert policy.delay(attempt) == 7.0
    assert RetryPolicy(max_retries=10**6, retry_delay=0.0, backoff=backoff, max_delay=1.0).delay(overflows_at) == 0.0
    uncapped = RetryPolicy(max_retries=10**6, retry_delay=1.0, backoff=backoff, max_delay=math.inf)
    assert uncapped.delay(overflows_at) == math.inf


def test_the_delay_below_the_cap_is_unchanged():
    policy = RetryPolicy(max_retries=9, retry_delay=60.0, backoff=2.0, max_delay=3600.0)
    assert [policy.delay(a) for a in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    # a policy made in code with ints: floats, and a huge attempt does not build a huge int
    ints = RetryPolicy(max_retries=9, retry_delay=3, backoff=3, max_delay=100)
    assert [ints.delay(a) for a in (1, 2, 3, 4, 10**9)] == [3.0, 9.0, 27.0, 81.0, 100.0]


@pytest.mark.parametrize("field", ["retry_delay", "backoff", "max_delay"])
def test_a_retry_policy_with_nan_is_refused(field):
    with pytest.raises(CompileError, match="retry_policy"):
        compile_task(task("t", [FAIL], retry_policy={"max_retries": 3, field: math.nan}))


# -- retries in the engine ----------------------------------------------------------------------

#: past attempt 1024, 0.5 * 2.0 ** (attempt - 1) overflows a float
POLICY = {"max_retries": 5000, "retry_delay": 0.5, "backoff": 2, "max_delay": 1}


def _row(run_id, attempt, status, **extra):
    return {"id": run_id, "task": "f", "kind": "task", "trigger": "retry", "status": status,
            "attempt": attempt, "scheduled_at": T0, **extra}


async def test_an_attempt_past_the_overflow_records_its_outcome_and_its_retry():
    """Attempt 1100 of a backoff-2 policy: the attempt is `failed` (it stayed `running` when the
    delay overflowed) and its retry is stored max_delay later."""
    clock = FakeClock(T0)
    async with Engine.open([task("f", [FAIL], retry_policy=POLICY)], clock=clock) as engine:
        await engine.store.insert_run(_row("late1", 1100, "queued", not_before=T0))
        await engine.serve(api=False)
        await settle(clock)  # late1 is due now
        assert (await engine.run("late1", trace=False))["status"] == "failed"
        retries = [r for r in await engine.runs("f") if r["parent_id"] == "late1"]
        assert [(r["attempt"], r["status"]) for r in retries] == [(1101, "queued")]
        await clock.advance(0.9)
        await settle(clock)
        assert (await engine.run(retries[0]["id"], trace=False))["status"] == "queued"
        await clock.advance(0.1)  # max_delay (1 s) after late1 failed
        await settle(clock)
        assert (await engine.run(retries[0]["id"], trace=False))["status"] == "failed"


async def test_the_engine_opens_over_a_crashed_attempt_past_the_overflow(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    defs = [task("f", [FAIL], retry_policy=POLICY)]
    async with Engine.open(defs, database=db) as engine:
        await engine.store.insert_run(_row("dead1", 2000, "running", started_at=1.0, engine_id="gone"))
    async with Engine.open(defs, database=db) as engine:
        assert (await engine.run("dead1", trace=False))["status"] == "crashed"
        retries = [r for r in await engine.runs("f") if r["parent_id"] == "dead1"]
        assert [(r["attempt"], r["status"]) for r in retries] == [(2001, "queued")]


@pytest.fixture
def broken_delay(monkeypatch):
    """A defect while making a retry (not a database error)."""

    def delay(self, attempt):
        raise ZeroDivisionError("a defect")

    monkeypatch.setattr(RetryPolicy, "delay", delay)


async def test_a_defect_making_the_retry_still_records_the_outcome(broken_delay, caplog):
    clock = FakeClock(T0)
    async with Engine.open([task("f", [FAIL], retry_policy={"max_retries": 3})], clock=clock) as engine:
        run_id = await engine.trigger("f")
        await settle(clock)
        run = await engine.run(run_id, trace=False)
        assert run["status"] == "failed" and run["error"]["type"] == "Boom"
        assert [r["id"] for r in await engine.runs("f")] == [run_id]  # no retry, logged
        assert run_id not in engine._active and engine._gate.holders == 0
    assert any("ZeroDivisionError" in r.getMessage() and run_id in r.getMessage() for r in caplog.records)


async def test_a_defect_making_a_retry_at_recovery_does_not_stop_the_engine_opening(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'd.db'}"
    defs = [task("f", [FAIL], retry_policy={"max_retries": 3})]
    async with Engine.open(defs, database=db) as engine:
        await engine.store.insert_run(_row("dead2", 1, "running", started_at=1.0, engine_id="gone"))

    def delay(self, attempt):
        raise ZeroDivisionError("a defect")

    monkeypatch.setattr(RetryPolicy, "delay", delay)
    async with Engine.open(defs, database=db) as engine:
        assert (await engine.run("dead2", trace=False))["status"] == "crashed"


# -- the trace of a timed-out or cancelled run ------------------------------------------------------

SECRET = "hunter2hunter2"
STEPS = [
    {"function": "log", "message": "key={{ env.SECRET_KEY_X }}", "level": "info"},
    {"function": "create_variable", "name": "x", "value": "key={{ env.SECRET_KEY_X }}"},
    {"function": "custom_function", "name": "inner"},
    WAIT(100),
]
INNER = {"name": "inner", "type": "function", "stack": [{"function": "create_variable", "name": "y", "value": 7}]}


def _assert_partial_trace(run):
    assert [(e["path"], e["kind"]) for e in run["trace"]] == [
        ("stack[0]", "log"),
        ("stack[1]", "create_variable"),
        ("function inner > stack[0]", "create_variable"),
        ("stack[2]", "custom_function"),
        ("stack[3]", "wait"),  # the step the stop interrupted
    ]
    stopped = run["trace"][-1]
    assert stopped["error"]["type"] == "Interrupted" and stopped["error"]["step"] == "stack[3]"
    assert all(e.get("error") is None for e in run["trace"][:-1])
    assert run["trace"][1]["output"] == "key=***"
    assert [(e["path"], e["output"]) for e in run["logs"]] == [("stack[0]", "key=***")]
    assert SECRET not in str(run)


async def test_a_timed_out_run_keeps_the_trace_and_logs_of_the_steps_before_the_timeout():
    clock = FakeClock(T0)
    defs = [task("t", STEPS, timeout=5), INNER]
    async with Engine.open(defs, clock=clock, env={"SECRET_KEY_X": SECRET}) as engine:
        run_id = await engine.trigger("t")
        await settle(clock)
        await advance(clock, 6)
        run = await engine.run(run_id)
        assert run["status"] == "timed_out" and run["error"]["type"] == "Timeout"
        _assert_partial_trace(run)


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
async def test_a_cancelled_run_keeps_its_trace(how):
    clock = FakeClock(T0)
    defs = [task("t", STEPS), INNER]
    async with Engine.open(defs, clock=clock, env={"SECRET_KEY_X": SECRET}) as engine:
        run_id = await engine.trigger("t")
        await settle(clock)
        if how == "cancel":
            assert await engine.cancel(run_id) is True
        else:
            await engine.stop(grace=0.05)
        run = await engine.run(run_id)
        assert run["status"] == "cancelled"
        _assert_partial_trace(run)


async def test_a_timed_out_run_without_history_keeps_no_trace():
    clock = FakeClock(T0)
    defs = [task("t", STEPS, timeout=5, request_history={"enabled": False}), INNER]
    async with Engine.open(defs, clock=clock, env={"SECRET_KEY_X": SECRET}) as engine:
        run_id = await engine.trigger("t")
        await settle(clock)
        await advance(clock, 6)
        run = await engine.run(run_id)
        assert run["status"] == "timed_out" and run["trace"] == [] and run["logs"] == []
