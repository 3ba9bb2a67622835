"""Crash-restart loop: a real ``cronstack run`` SIGKILLed at random moments, restarted, checked.

Four tasks fire every second (6-field cron): database writes keyed by the run
id, waits, HTTP calls to a local server, async function calls. The writer
acknowledges each record id to the local server only after ``add_record``
returned, so every id the server saw must be in the database. After each round
the invariants are printed; after a final clean stop (SIGTERM) the strict ones
too. Seeded; the seed is printed (``CRONSTACK_CRASH_SEED`` replays its kill
times). ``CRONSTACK_SOAK=1`` runs more rounds.
"""

import json
import os
import random
import signal
import sys
from pathlib import Path

import anyio
import pytest

from tests.reliability import invariants
from tests.reliability.faultserver import fault_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SOAK = bool(os.environ.get("CRONSTACK_SOAK"))
ROUNDS = 25 if SOAK else 5
SEED = int(os.environ.get("CRONSTACK_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
MAX_RETRIES = {"writer": 2, "waiter": 1, "caller": 0, "pinger": 1}
CRONSTACK = str(Path(sys.executable).parent / "cronstack")


def write_project(root: Path) -> None:
    every = {"schedule": "* * * * * *", "misfire": "run_all", "misfire_grace": 3600,
             "overlap": "allow", "max_concurrency": 5}
    tasks = {
        "writer": {**every, "retry_policy": {"max_retries": 2, "retry_delay": 1}, "stack": [
            {"function": "add_record", "table": "events",
             "data": {"run": "{{ task.run_id }}", "at": "{{ task.scheduled_at }}"}, "return_as": "rec"},
            {"function": "external_api_request", "url": "{{ env.FAULT_URL }}/ack",
             "query": {"id": "{{ rec.id }}"}, "timeout": 5}]},
        "waiter": {**every, "retry_policy": {"max_retries": 1, "retry_delay": 1},
                   "stack": [{"function": "wait", "duration": 0.7}]},
        "caller": {**every, "stack": [{"function": "custom_function", "name": "child",
                                       "inputs": {"parent": "{{ task.run_id }}"}, "execution_mode": "async"}]},
        "pinger": {**every, "retry_policy": {"max_retries": 1, "retry_delay": 1},
                   "stack": [{"function": "external_api_request", "url": "{{ env.FAULT_URL }}/ok", "timeout": 5}]},
    }
    for name, body in tasks.items():
        (root / f"{name}.json").write_text(json.dumps({"name": name, **body}))
    (root / "child.json").write_text(json.dumps({
        "name": "child", "inputs": {"parent": None},
        "stack": [{"function": "add_record", "table": "children", "data": {"parent": "{{ inputs.parent }}"}}]}))


def open_log(path: Path):
    return open(path, "wb")  # noqa: SIM115 - the engine's output, kept for a failure message


async def start(project: Path, db: Path, log, env):
    return await anyio.open_process(
        [CRONSTACK, "run", str(project), "--database", f"sqlite:///{db}", "--port", "0"],
        stdout=log, stderr=log, env=env)


def report(round_no: int, db: Path, acked, *, clean: bool) -> list[str]:
    problems = invariants.check_all(str(db), max_retries=MAX_RETRIES, clean_stop=clean,
                                    acked=[("events", int(i)) for i in acked])
    with invariants.Db(str(db)) as d:
        runs = d.runs()
    by = {}
    for r in runs:
        by[r["status"]] = by.get(r["status"], 0) + 1
    print(f"round {round_no}: {len(runs)} runs {by}; {len(acked)} acked ids; "
          f"{'OK' if not problems else problems}")
    return problems


def lost_fires(db: Path) -> list[float]:
    """Seconds between the writer's first and last fire that have no schedule/catchup run."""
    with invariants.Db(str(db)) as d:
        fires = sorted({r["scheduled_at"] for r in d.runs()
                        if r["task"] == "writer" and r["trigger"] in ("schedule", "catchup")})
    if not fires:
        return []
    have = set(fires)
    return [t for t in range(int(fires[0]), int(fires[-1]) + 1) if float(t) not in have]


async def test_sigkill_restart_loop_loses_and_doubles_nothing(tmp_path):
    print(f"crash loop seed {SEED} (replay with CRONSTACK_CRASH_SEED={SEED}), {ROUNDS} rounds")
    rng = random.Random(SEED)
    project = tmp_path / "project"
    project.mkdir()
    write_project(project)
    db = tmp_path / "crash.db"
    problems: list[str] = []
    async with fault_server() as srv:
        env = {**os.environ, "FAULT_URL": srv.url}
        with open_log(tmp_path / "engine.log") as log:
            for n in range(1, ROUNDS + 1):
                proc = await start(project, db, log, env)
                await anyio.sleep(rng.uniform(1.2, 3.5))
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                acked = list(srv.acked)
                problems += await anyio.to_thread.run_sync(lambda n=n, a=acked: report(n, db, a, clean=False))
            proc = await start(project, db, log, env)
            await anyio.sleep(3.0)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                code = await proc.wait()
        assert code == 0, (tmp_path / "engine.log").read_text()[-3000:]
        acked = list(srv.acked)
    problems += report(ROUNDS + 1, db, acked, clean=True)
    lost = lost_fires(db)
    print(f"writer fires without a run: {lost}")
    with invariants.Db(str(db)) as d:
        records = len(d.records("events"))
    print(f"crash loop seed {SEED}: {ROUNDS} SIGKILLs survived, {records} records, {len(acked)} acknowledged")
    assert not lost, f"seed {SEED}: fires lost: {lost}"
    assert not problems, f"seed {SEED}: " + "\n".join(problems)
