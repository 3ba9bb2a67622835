"""Deterministic simulation: the engine on a FakeClock over a store that fails, lags and crashes.

Each seed draws a fault plan (store errors on chosen operations, added
latency, a crash at a chosen store call), runs the engine through two minutes
of virtual time, "crashes" (the committed state at the crash point replaces
the database file, see ``reliability.faultstore``), reopens the same file with
a fresh engine, runs on, stops cleanly and checks the invariants. A failing
seed is printed and replays the same schedule of faults:
``CRONSTACK_SIM_SEED=<seed> pytest tests/test_reliability_sim.py``.
"""

import os
import random
import shutil
from pathlib import Path

import anyio
import pytest

from engine import Engine, EngineConfig, FakeClock
from tests.reliability import invariants
from tests.reliability.faultstore import (
    RECORD_WRITES,
    STATE_WRITES,
    FaultPlan,
    install,
)

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
SOAK = bool(os.environ.get("CRONSTACK_SOAK"))
N_SEEDS = 3000 if SOAK else 150
ONE_SEED = os.environ.get("CRONSTACK_SIM_SEED")
SEEDS = [int(ONE_SEED)] if ONE_SEED else list(range(N_SEEDS))
BATCH = 25
MAX_RETRIES = {"writer": 2, "flaky": 1, "slow": 1, "every": 0}
STATS = {"seeds": 0, "crashes": 0, "failures": 0, "delays": 0, "records": 0, "runs": 0}


def definitions():
    add = {"function": "add_record", "table": "events",
           "data": {"run": "{{ task.run_id }}", "attempt": "{{ task.attempt }}"}, "return_as": "rec"}
    return [
        {"name": "writer", "schedule": "*/10 * * * * *", "overlap": "allow", "max_concurrency": 3,
         "retry_policy": {"max_retries": 2, "retry_delay": 3},
         "stack": [add, {"function": "wait", "duration": 4}, {"function": "return", "value": "{{ rec.id }}"}]},
        {"name": "flaky", "schedule": "*/15 * * * * *",
         "retry_policy": {"max_retries": 1, "retry_delay": 2},
         "stack": [add, {"function": "conditional", "condition": "{{ task.attempt == 1 }}",
                         "true_branch": [{"function": "throw_error", "message": "first try fails", "type": "Flaky"}]}]},
        {"name": "slow", "schedule": "*/20 * * * * *", "timeout": 12, "misfire": "run_all",
         "retry_policy": {"max_retries": 1, "retry_delay": 1},
         "stack": [{"function": "wait", "duration": 15}]},
        {"name": "every", "schedule": "*/5 * * * * *", "misfire": "run_all", "overlap": "allow",
         "max_concurrency": 5, "stack": [add]},
    ]


@pytest.fixture(autouse=True)
def quick_shutdown(monkeypatch):
    monkeypatch.setattr("engine._engine.load_config", lambda _dir: EngineConfig(shutdown_grace=0.05))
    monkeypatch.setattr("engine._runs.FINAL_WRITE_BACKOFF", (0.0,))


async def drive(clock, seconds, step):
    t = 0.0
    while t < seconds:
        await clock.advance(step)
        for _ in range(2):  # let the store's thread commit what the woken runs wrote
            await clock.run_until_idle()
            await anyio.sleep(0.002)
        t += step


def draw_plan(seed):
    rng = random.Random(seed * 7919 + 1)
    mode = rng.choice(["crash", "crash", "faults", "crash+faults"])
    fail_rate = rng.choice([0.02, 0.05, 0.15]) if "faults" in mode else 0.0
    ops = rng.choice([RECORD_WRITES, STATE_WRITES, RECORD_WRITES | STATE_WRITES])
    return FaultPlan(
        seed=seed, fail_rate=fail_rate, fail_ops=frozenset(ops),
        delay_rate=rng.choice([0.0, 0.1, 0.3]), max_delay=0.002,
        crash_at=rng.randint(20, 400) if "crash" in mode else None,
    )


def replace_with_snapshot(db_path: Path, snapshot: str) -> None:
    """Put what was committed at the crash back where the engine keeps its database."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(snapshot, db_path)


async def simulate(seed, tmp: Path):
    """One seed; returns the list of violated invariants (empty when all hold)."""
    db_path = tmp / f"sim{seed}.db"
    url = f"sqlite:///{db_path}"
    plan = draw_plan(seed)
    rng = random.Random(seed)
    with pytest.MonkeyPatch.context() as mp:
        install(mp, plan)
        clock = FakeClock(T0)
        async with Engine.open(definitions(), database=url, clock=clock) as engine:
            await engine.serve(api=False)
            await drive(clock, rng.choice([40, 80, 120]), rng.choice([2.5, 5.0]))
        phase1_end = clock.time()
    if plan.crashed:
        replace_with_snapshot(db_path, plan.snapshot)
        acked = plan.acked_at_crash
    else:
        acked = list(plan.acked_records)
    problems = invariants.check_all(str(db_path), max_retries=MAX_RETRIES, clean_stop=False, acked=acked)
    # restart on the same file, no faults: recovery, catch-up, then a clean stop
    clock = FakeClock(phase1_end + rng.choice([0.0, 7.0, 33.0]))
    after = FaultPlan(seed=seed)
    with pytest.MonkeyPatch.context() as mp:
        install(mp, after)
        async with Engine.open(definitions(), database=url, clock=clock) as engine:
            await engine.serve(api=False)
            await drive(clock, 60, 5.0)
            await engine.stop(grace=0)
        end = clock.time()
    problems += invariants.check_all(str(db_path), max_retries=MAX_RETRIES, clean_stop=True,
                                     acked=acked + after.acked_records)
    with invariants.Db(str(db_path)) as db:
        runs = db.runs()
        if plan.fail_rate == 0.0:  # only the crash: every fire of a run_all task has its run
            fired = {r["scheduled_at"] for r in runs if r["task"] == "every" and r["trigger"] in ("schedule", "catchup")}
            due = [T0 + 5 * k for k in range(1, int((end - T0) // 5) + 1)]
            lost = [t - T0 for t in due if t not in fired and t < end - 1]
            if lost:
                problems.append(f"fires of 'every' with no run (seconds after T0): {lost}")
    STATS["seeds"] += 1
    STATS["crashes"] += plan.crashed
    STATS["failures"] += plan.failures
    STATS["delays"] += plan.delays
    STATS["records"] += len(acked) + len(after.acked_records)
    STATS["runs"] += len(runs)
    if problems:
        problems.insert(0, f"seed {seed}: plan {plan.fail_rate=} {sorted(plan.fail_ops)} "
                           f"crash_at={plan.crash_at} events={plan.events[-8:]}")
    return problems


@pytest.mark.parametrize("batch", range(0, len(SEEDS), BATCH))
async def test_simulated_faults_and_crashes_lose_nothing(batch, tmp_path):
    failures = []
    for seed in SEEDS[batch:batch + BATCH]:
        problems = await simulate(seed, tmp_path)
        if problems:
            failures.append("\n  ".join(problems))
    print(f"sim totals so far: {STATS}")
    assert not failures, "replay with CRONSTACK_SIM_SEED=<seed>:\n" + "\n".join(failures)
