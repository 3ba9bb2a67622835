"""`cronstack run` as a real process, driven by the remote commands over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine._cli import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, main

pytestmark = pytest.mark.slow

TOKEN = "cli-test-token"
DEFS = {
    "hello": {"name": "hello", "schedule": "0 6 * * *", "stack": [
        {"function": "log", "message": "hello from the engine"},
        {"function": "return", "value": "{{ 6 * 7 }}"},
    ]},
    "slow": {"name": "slow", "stack": [{"function": "wait", "duration": 60}]},
    "boom": {"name": "boom", "stack": [{"function": "throw_error", "message": "no luck"}]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def engine_proc(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    for name, d in DEFS.items():
        (proj / f"{name}.json").write_text(json.dumps(d))
    port = free_port()
    env = {**os.environ, "CRONSTACK_TOKEN": TOKEN}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine._cli", "run", str(proj), "--port", str(port),
         "--database", f"sqlite:///{tmp_path / 'engine.db'}"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"cronstack run did not come up (exit {proc.returncode}):\n{err}")
        time.sleep(0.05)
    monkeypatch.setenv("CRONSTACK_TOKEN", TOKEN)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_remote_commands_against_a_live_engine(engine_proc, capsys):
    url, proc = engine_proc
    code, out, _ = cli(capsys, "tasks", "--url", url)
    assert code == EXIT_OK and "hello" in out and "0 6 * * *" in out and "(manual)" in out

    code, out, _ = cli(capsys, "trigger", "hello", "--wait", "--url", url)
    assert code == EXIT_OK and "completed" in out and "result: 42" in out

    code, out, _ = cli(capsys, "trigger", "boom", "--wait", "--json", "--url", url)
    assert code == EXIT_FAILURE and json.loads(out)["error"]["message"] == "no luck"

    code, out, _ = cli(capsys, "trigger", "hello", "--source", "tests", "--url", url)
    run_id = out.strip()
    assert code == EXIT_OK and len(run_id) >= 8

    code, out, _ = cli(capsys, "runs", "--url", url, "--json")
    runs = json.loads(out)
    assert code == EXIT_OK and run_id in [r["id"] for r in runs] and len(runs) == 3
    code, out, _ = cli(capsys, "runs", "boom", "--url", url)
    assert code == EXIT_OK and "failed" in out and "no luck" in out and "hello" not in out

    code, out, _ = cli(capsys, "show", run_id, "--url", url)
    assert code == EXIT_OK and run_id in out and "hello from the engine" in out
    code, out, _ = cli(capsys, "show", run_id, "--no-trace", "--json", "--url", url)
    assert "trace" not in json.loads(out)

    code, out, _ = cli(capsys, "pause", "hello", "--url", url)
    assert code == EXIT_OK and "paused" in out
    code, out, _ = cli(capsys, "tasks", "--json", "--url", url)
    assert next(t for t in json.loads(out) if t["name"] == "hello")["status"] == "paused"
    assert cli(capsys, "resume", "hello", "--url", url)[0] == EXIT_OK

    code, out, _ = cli(capsys, "trigger", "slow", "--url", url)
    slow_id = out.strip()
    code, out, _ = cli(capsys, "cancel", slow_id, "--url", url)
    assert code == EXIT_OK and "cancel" in out
    code, _, err = cli(capsys, "cancel", slow_id, "--url", url)
    assert code == EXIT_FAILURE and "only queued or running" in err

    code, _, err = cli(capsys, "show", "nope", "--url", url)
    assert code == EXIT_NOT_FOUND and "nope" in err
    code, _, err = cli(capsys, "trigger", "helo", "--url", url)
    assert code == EXIT_NOT_FOUND and "did you mean 'hello'" in err
    code, _, err = cli(capsys, "tasks", "--url", url, "--token", "wrong")
    assert code == EXIT_FAILURE and "CRONSTACK_TOKEN" in err

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped" in stderr and "admin API on http://127.0.0.1:" in stderr


def test_run_refuses_compile_errors(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "bad.json").write_text(json.dumps({"name": "bad", "stack": [{"function": "nope"}]}))
    (proj / "worse.json").write_text(json.dumps({"name": "worse", "schedule": "61 * * * *", "stack": []}))
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "engine._cli", "run", str(proj), "--port", str(free_port())],
        cwd=root, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "bad.json: stack[0]" in done.stderr


def test_run_refuses_public_host_without_token(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "hello.json").write_text(json.dumps(DEFS["hello"]))
    env = {k: v for k, v in os.environ.items() if k != "CRONSTACK_TOKEN"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "engine._cli", "run", str(proj), "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=root, capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 1
    assert "without a token" in done.stderr and "CRONSTACK_TOKEN" in done.stderr


def test_sighup_reloads_definitions(engine_proc, tmp_path, capsys):
    """SIGHUP recompiles the folder: a new task appears, a broken edit is refused and logged."""
    url, proc = engine_proc
    proj = tmp_path / "proj"
    (proj / "added.json").write_text(json.dumps({"name": "added", "stack": [{"function": "return", "value": 1}]}))
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        code, out, _err = cli(capsys, "tasks", "--url", url, "--json")
        if code == EXIT_OK and "added" in out:
            break
        assert time.monotonic() < deadline, "the new task never appeared after SIGHUP"
        time.sleep(0.1)
    (proj / "broken.json").write_text('{"name": "broken", "stack": [{"function": "nope"}]}')
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    code, out, _err = cli(capsys, "tasks", "--url", url, "--json")
    assert code == EXIT_OK and "added" in out and "broken" not in out
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert "reloaded: 4 tasks" in err and "reload refused" in err and "unknown step kind" in err
