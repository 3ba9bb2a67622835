"""`cronstack run` and signals, `trigger --wait` past its timeout, `exec` and retries."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine._cli import EXIT_FAILURE, EXIT_NO_OUTCOME, EXIT_OK, EXIT_UNREACHABLE, main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "signals-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lines:
    """The stderr lines of a process, read by a thread; ``wait_for`` polls them."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, proc: subprocess.Popen, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while not any(text in line for line in self.lines):
            if proc.poll() is not None:
                self._thread.join(5)
                if any(text in line for line in self.lines):
                    return
                pytest.fail(f"the process ended (exit {proc.returncode}) before {text!r}:\n{self.text()}")
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text()}"
            time.sleep(0.02)

    def text(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        self._thread.join(10)
        self._stream.close()


def project(tmp_path: Path, defs: dict[str, dict], toml: str = "") -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    for name, d in defs.items():
        (proj / f"{name}.json").write_text(json.dumps(d))
    (proj / "cronstack.toml").write_text(toml)
    return proj


@contextlib.contextmanager
def run_engine(proj: Path, db: Path, port: int, *, script: str | None = None, env: dict[str, str] | None = None):
    """`cronstack run` in a process with its stderr lines; killed (if still alive) and reaped at the end."""
    argv = ["run", str(proj), "--port", str(port), "--database", f"sqlite:///{db}"]
    cmd = [sys.executable, "-c", script, *argv] if script else [sys.executable, "-m", "engine._cli", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "CRONSTACK_TOKEN": TOKEN, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = Lines(proc.stderr)
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        lines.close()


def runs_in(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute("SELECT id, task, status, started_at FROM cronstack_runs")}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- signals of `cronstack run` ----------------------------------------------------------------

#: `cronstack run` whose Engine.open waits for a file: a signal can be sent while it opens
SLOW_OPEN = textwrap.dedent("""
    import asyncio, contextlib, os, sys
    from pathlib import Path
    from engine import Engine
    from engine._cli import main

    real_open = Engine.open.__func__

    @contextlib.asynccontextmanager
    async def slow_open(cls, *args, **kwargs):
        gate = Path(os.environ["OPEN_GATE"])
        print("opening the engine", file=sys.stderr, flush=True)
        while not gate.exists():
            await asyncio.sleep(0.02)
        async with real_open(cls, *args, **kwargs) as engine:
            yield engine

    Engine.open = classmethod(slow_open)
    sys.exit(main(sys.argv[1:]))
""")


def test_a_sighup_while_the_engine_opens_is_a_reload_once_it_is_open(tmp_path):
    proj = project(tmp_path, {"hello": {"name": "hello", "stack": [{"function": "return", "value": 1}]}})
    gate = tmp_path / "open-now"
    with run_engine(proj, tmp_path / "x.db", free_port(), script=SLOW_OPEN, env={"OPEN_GATE": str(gate)}) as (
        proc, lines,
    ):
        lines.wait_for("opening the engine", proc)
        (proj / "added.json").write_text(json.dumps({"name": "added", "stack": []}))
        proc.send_signal(signal.SIGHUP)  # before the engine is open: the default action would end it
        time.sleep(0.2)
        assert proc.poll() is None, lines.text()
        gate.touch()
        lines.wait_for("admin API on", proc)
        assert "reloaded: 2 tasks" in lines.text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, lines.text()


def test_a_sigterm_while_the_engine_opens_stops_it_without_serving(tmp_path):
    proj = project(tmp_path, {"hello": {"name": "hello", "stack": []}})
    gate = tmp_path / "open-now"
    with run_engine(proj, tmp_path / "x.db", free_port(), script=SLOW_OPEN, env={"OPEN_GATE": str(gate)}) as (
        proc, lines,
    ):
        lines.wait_for("opening the engine", proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        gate.touch()
        assert proc.wait(60) == 0, lines.text()
        lines.close()
        assert "stopped" in lines.text() and "admin API on" not in lines.text()


def test_a_second_sigterm_cancels_the_running_runs_at_once_and_keeps_the_queued_ones(tmp_path, capsys):
    defs = {"slow": {"name": "slow", "stack": [{"function": "wait", "duration": 600}]}}
    # a grace no test waits for: only the second signal can end the shutdown in time
    proj = project(tmp_path, defs, "[engine]\nshutdown_grace = 3600\nmax_running = 1\n")
    db, port = tmp_path / "x.db", free_port()
    with run_engine(proj, db, port) as (proc, lines):
        lines.wait_for("admin API on", proc)
        url = f"http://127.0.0.1:{port}"
        ids = [cli(capsys, "trigger", "slow", "--url", url, "--token", TOKEN)[1].strip() for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        lines.wait_for("Ctrl-C again cancels them now", proc)
        time.sleep(0.2)
        assert proc.poll() is None  # the grace: the running run may still finish
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, lines.text()
        lines.close()
        assert "stopping now" in lines.text()
    runs = runs_in(db)
    assert runs[ids[0]]["status"] == "cancelled"
    assert (runs[ids[1]]["status"], runs[ids[1]]["started_at"]) == ("queued", None)  # the next start runs it


# -- trigger --wait ------------------------------------------------------------------------------


def test_trigger_wait_past_its_timeout_names_the_run_still_running(tmp_path, capsys):
    defs = {"slow": {"name": "slow", "stack": [{"function": "wait", "duration": 600}]},
            "quick": {"name": "quick", "stack": [{"function": "wait", "duration": 0.3},
                                                 {"function": "return", "value": 7}]}}
    proj = project(tmp_path, defs, "[engine]\nshutdown_grace = 0.1\n")
    port = free_port()
    with run_engine(proj, tmp_path / "x.db", port) as (proc, lines):
        lines.wait_for("admin API on", proc)
        url = f"http://127.0.0.1:{port}"
        code, out, err = cli(capsys, "trigger", "slow", "--wait", "--timeout", "0.5", "--url", url, "--token", TOKEN)
        run_id = out.strip()
        assert code == EXIT_NO_OUTCOME, err
        assert f"run {run_id} of task 'slow' is still running" in err and f"cronstack show {run_id}" in err
        code, out, _ = cli(capsys, "runs", "slow", "--json", "--url", url, "--token", TOKEN)
        assert [(r["id"], r["status"]) for r in json.loads(out)] == [(run_id, "running")]  # one run, going on
        code, out, err = cli(capsys, "trigger", "slow", "--wait", "--timeout", "0.5", "--json", "--url", url,
                             "--token", TOKEN)
        assert code == EXIT_NO_OUTCOME and json.loads(out)["status"] == "running"
        # without --timeout, --wait waits for the run however long it takes
        code, out, err = cli(capsys, "trigger", "quick", "--wait", "--url", url, "--token", TOKEN)
        assert code == EXIT_OK and "completed" in out and "result: 7" in out, err
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


@pytest.fixture
def silent_server():
    """A server that accepts connections and reads requests but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held, stop = [], threading.Event()

    def serve():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    sock.close()


def test_a_request_sent_but_not_answered_is_not_called_unreachable(silent_server, capsys):
    code, _, err = cli(capsys, "trigger", "slow", "--timeout", "0.3", "--url", silent_server)
    assert code == EXIT_NO_OUTCOME and "no answer within 0.3 s" in err and "may have taken effect" in err
    code, _, err = cli(capsys, "runs", "--timeout", "0.3", "--url", silent_server)  # a read: safe to repeat
    assert code == EXIT_UNREACHABLE and "no answer within 0.3 s" in err


def test_an_engine_that_cannot_be_reached_is_named_with_the_reason(capsys):
    code, _, err = cli(capsys, "trigger", "slow", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == EXIT_UNREACHABLE
    reason = err.split("cannot reach the engine at ")[1].split(";")[0].split(": ", 1)[1]
    assert reason.strip(), err


# -- exec ------------------------------------------------------------------------------------------


def test_exec_runs_a_task_with_a_retry_policy_once_and_leaves_no_retry(tmp_path, capsys):
    file = tmp_path / "flaky.json"
    file.write_text(json.dumps({"name": "flaky", "retry_policy": {"max_retries": 2, "retry_delay": 0},
                                "stack": [{"function": "throw_error", "message": "nope"}]}))
    db = tmp_path / "scratch.db"
    code, out, err = cli(capsys, "exec", str(file), "--database", f"sqlite:///{db}")
    assert code == EXIT_FAILURE and "failed" in out
    assert "not retried" in err and "2 retries" in err
    assert [r["status"] for r in runs_in(db).values()] == ["failed"]
    # a bad policy is still refused: it is compiled with the file
    file.write_text(json.dumps({"name": "flaky", "retry_policy": {"max_retries": -1}, "stack": []}))
    code, _, err = cli(capsys, "exec", str(file))
    assert code == EXIT_FAILURE and "retry_policy" in err
