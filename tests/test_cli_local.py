"""`cronstack check`, `next`, `exec` and the usage rules, in-process through main([...])."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from engine._cli import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main

WEEKLY = {
    "name": "weekly_report_generation",
    "schedule": "0 9 1-7 * 1",
    "timezone": "America/New_York",
    "stack": [{"function": "return", "value": "{{ 'ok' }}"}],
}
HELLO = {
    "name": "hello",
    "schedule": "*/5 * * * *",
    "stack": [
        {"function": "create_variable", "name": "x", "value": "{{ 1 + 2 }}"},
        {"function": "log", "message": "x is {{ x }}"},
        {"function": "custom_function", "name": "double", "inputs": {"n": "{{ x }}"}, "return_as": "y"},
        {"function": "return", "value": "{{ y }}"},
    ],
}
DOUBLE = {"name": "double", "inputs": {"n": 0}, "stack": [{"function": "return", "value": "{{ inputs.n * 2 }}"}]}
MANUAL = {"name": "manual_only", "stack": []}


def project(tmp_path: Path, *defs: dict, name: str = "proj") -> Path:
    root = tmp_path / name
    (root / "functions").mkdir(parents=True)
    for d in defs:
        folder = root / "functions" if "inputs" in d else root
        (folder / f"{d['name']}.json").write_text(json.dumps(d))
    return root


def test_check_ok_prints_tasks_and_next_fires(tmp_path, capsys):
    root = project(tmp_path, WEEKLY, HELLO, DOUBLE, MANUAL)
    assert main(["check", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "weekly_report_generation" in out and "0 9 1-7 * 1" in out and "America/New_York" in out
    assert "(manual)" in out and "ok: 3 tasks, 1 functions" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("weekly_report_generation"))
    assert line.count("T09:00:00-0") == 3  # three fires at 09:00 New York time


def test_check_json(tmp_path, capsys):
    root = project(tmp_path, WEEKLY, HELLO, DOUBLE)
    assert main(["check", str(root), "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["functions"] == ["double"]
    weekly = next(t for t in data["tasks"] if t["name"] == "weekly_report_generation")
    assert len(weekly["next_fires"]) == 3
    # first Monday of the month only (AND matching of the day fields)
    from datetime import datetime

    for fire in weekly["next_fires"]:
        day = datetime.fromisoformat(fire)
        assert day.weekday() == 0 and day.day <= 7


def test_check_reports_every_error(tmp_path, capsys):
    bad_expr = {"name": "bad_expr", "stack": [{"function": "return", "value": "{{ misspeled }}"}]}
    bad_step = {"name": "bad_step", "stack": [{"function": "create_varible", "name": "x", "value": 1}]}
    bad_cron = {"name": "bad_cron", "schedule": "0 25 * * *", "stack": []}
    bad_call = {"name": "bad_call", "stack": [{"function": "custom_function", "name": "doubel", "inputs": {}}]}
    root = project(tmp_path, bad_expr, bad_step, bad_cron, bad_call, DOUBLE)
    (root / "broken.json").write_text('{"name": "x", ')
    assert main(["check", str(root)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any(ln.startswith("bad_expr.json: stack[0].value") for ln in lines)
    assert any(ln.startswith("bad_step.json: stack[0]") and "create_variable" in ln for ln in lines)
    assert any(ln.startswith("broken.json: ") and "invalid JSON" in ln for ln in lines)
    assert "errors" in captured.err
    # schedules and calls are checked once the definitions compile
    good = project(tmp_path, bad_cron, bad_call, DOUBLE, name="second")
    assert main(["check", str(good), "--json"]) == EXIT_FAILURE
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert {e["file"] for e in errors} == {"bad_cron.json", "bad_call.json"}
    assert any(e["path"] == "schedule" and "hour" in e["message"] for e in errors)
    assert any("did you mean 'double'" in e["message"] for e in errors)


def test_check_dis(tmp_path, capsys):
    root = project(tmp_path, HELLO, DOUBLE)
    assert main(["check", str(root), "--dis", "hello"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("program hello") and "CALL" in out and "RETURN" in out
    assert main(["check", str(root), "--dis", "functions/double.json"]) == EXIT_OK
    assert "program double" in capsys.readouterr().out
    assert main(["check", str(root), "--dis", "helo"]) == EXIT_NOT_FOUND
    assert "did you mean 'hello'" in capsys.readouterr().err


def test_next(tmp_path, capsys):
    root = project(tmp_path, WEEKLY, MANUAL)
    args = ["next", str(root), "weekly_report_generation", "--count", "3", "--after", "2024-01-01T00:00:00Z"]
    assert main(args) == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "2024-01-01T09:00:00-05:00",
        "2024-02-05T09:00:00-05:00",
        "2024-03-04T09:00:00-05:00",
    ]
    one_file = root / "weekly_report_generation.json"
    assert main(["next", str(one_file), "weekly_report_generation", "--after", "2024-01-01T00:00:00"]) == EXIT_OK
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert main(["next", str(root), "weekly_report"]) == EXIT_NOT_FOUND
    assert "did you mean 'weekly_report_generation'" in capsys.readouterr().err
    assert main(["next", str(root), "manual_only"]) == EXIT_FAILURE
    assert "no schedule" in capsys.readouterr().err
    assert main(["next", str(root), "manual_only", "--after", "yesterday"]) == EXIT_USAGE
    assert main(["next", str(tmp_path / "missing.json"), "x"]) == EXIT_NOT_FOUND
    never = project(tmp_path, {"name": "never", "schedule": "0 0 30 2 *", "stack": []}, name="never")
    assert main(["next", str(never), "never", "--after", "2024-01-01T00:00:00Z"]) == EXIT_FAILURE
    out = capsys.readouterr()
    assert out.out == "" and "task 'never' never fires after 2024-01-01T00:00:00+00:00" in out.err
    assert "'0 0 30 2 *' (UTC)" in out.err


def test_exec_task_function_and_steps(tmp_path, capsys):
    task = tmp_path / "task.json"
    task.write_text(json.dumps({**HELLO, "stack": HELLO["stack"][:2] + [{"function": "return", "value": "{{ x }}"}]}))
    assert main(["exec", str(task)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "completed" in out and "result: 3" in out and "create_variable" in out and "x is 3" in out

    fn = tmp_path / "double.json"
    fn.write_text(json.dumps({**DOUBLE, "inputs": {"n": 21}}))
    assert main(["exec", str(fn), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["result"] == 42

    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps([
        {"function": "add_record", "table": "notes", "data": {"text": "hi"}, "return_as": "rec"},
        {"function": "count_records", "table": "notes", "return_as": "n"},
        {"function": "return", "value": "{{ n }}"},
    ]))
    db = tmp_path / "scratch.db"
    for expected in (1, 2):  # the database persists between execs
        assert main(["exec", str(steps), "--database", f"sqlite:///{db}", "--json"]) == EXIT_OK
        assert json.loads(capsys.readouterr().out)["result"] == expected


def test_exec_loads_the_functions_of_the_files_project(tmp_path, capsys):
    root = project(tmp_path, DOUBLE)
    (root / "tasks").mkdir()
    caller = {"name": "caller", "stack": [
        {"function": "custom_function", "name": "double", "inputs": {"n": 4}, "return_as": "y"},
        {"function": "return", "value": "{{ y }}"}]}
    (root / "tasks" / "caller.json").write_text(json.dumps(caller))
    # a tasks/ folder: its parent is the project
    assert main(["exec", str(root / "tasks" / "caller.json"), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["result"] == 8
    # elsewhere: the nearest folder with cronstack.toml, or --project
    loose = tmp_path / "loose" / "deep"
    loose.mkdir(parents=True)
    (loose / "caller.json").write_text(json.dumps(caller))
    assert main(["exec", str(loose / "caller.json")]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "calls the function 'double', which is not defined" in err and "stack[0].name" in err
    assert main(["exec", str(loose / "caller.json"), "--project", str(root), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["result"] == 8
    (tmp_path / "loose" / "cronstack.toml").write_text("")
    (tmp_path / "loose" / "double.json").write_text(json.dumps({**DOUBLE, "stack": [
        {"function": "return", "value": "{{ inputs.n * 3 }}"}]}))
    assert main(["exec", str(loose / "caller.json"), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["result"] == 12
    assert main(["exec", str(loose / "caller.json"), "--project", str(tmp_path / "none")]) == EXIT_NOT_FOUND


def test_exec_applies_the_projects_env_and_keeps_away_from_its_databases(tmp_path, capsys, monkeypatch):
    """exec runs a task as its project's engine would ([env] include and values, [tables]),
    but writes only to --database (memory by default): never the project's own files."""
    root = project(tmp_path)
    (root / "cronstack.toml").write_text(
        '[env]\ninclude = ["N8N_*"]\nvalues = {REPORT_RECIPIENT = "ops@example.com"}\n'
        '[database]\nurl = "sqlite:///main.db"\n[data_sources]\nreporting = "sqlite:///reporting.db"\n'
        '[tables.items]\nindexes = ["status"]\n')
    (root / "tasks").mkdir()
    envt = {"name": "envt", "data_source": "reporting", "stack": [
        {"function": "add_record", "table": "items", "data": {"status": "new"}},
        {"function": "count_records", "table": "items", "filter": {"status": "new"}, "return_as": "n"},
        {"function": "return", "value": {"to": "{{ env.REPORT_RECIPIENT }}", "n8n": "{{ env.N8N_X }}",
                                         "home": "{{ env.HOME }}", "n": "{{ n }}"}}]}
    (root / "tasks" / "envt.json").write_text(json.dumps(envt))
    monkeypatch.setenv("N8N_X", "yes")
    monkeypatch.setenv("HOME", "/home/someone")
    assert main(["exec", str(root / "tasks" / "envt.json"), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["result"] == {"to": "ops@example.com", "n8n": "yes", "home": None, "n": 1}
    assert not (root / "main.db").exists() and not (root / "reporting.db").exists()
    scratch = tmp_path / "scratch.db"
    for n in (1, 2):
        assert main(["exec", str(root / "tasks" / "envt.json"), "--json", "--database", f"sqlite:///{scratch}"]) == EXIT_OK
        assert json.loads(capsys.readouterr().out)["result"]["n"] == n
    assert not (root / "main.db").exists() and not (root / "reporting.db").exists()


def test_numeric_options_out_of_range_are_usage_errors(tmp_path, capsys):
    root = project(tmp_path, HELLO, DOUBLE)
    assert main(["run", str(root), "--port", "99999"]) == EXIT_USAGE
    assert "--port: expected 0 to 65535, got 99999" in capsys.readouterr().err
    assert main(["next", str(root), "hello", "--count", "0"]) == EXIT_USAGE
    assert "--count: expected 1 to 10000" in capsys.readouterr().err


def test_exec_failure_and_compile_errors(tmp_path, capsys):
    boom = tmp_path / "boom.json"
    boom.write_text(json.dumps([{"function": "throw_error", "message": "no luck", "type": "Luck"}]))
    assert main(["exec", str(boom)]) == EXIT_FAILURE
    out = capsys.readouterr().out
    assert "failed" in out and "stack[0]: Luck: no luck" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"function": "return", "value": "{{ nope }}"}]))
    assert main(["exec", str(bad)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: stack[0].value") and "nope" in err
    assert main(["exec", str(tmp_path / "missing.json")]) == EXIT_NOT_FOUND
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"name": "slow", "timeout": 0.2, "stack": [{"function": "wait", "duration": 30}]}))
    assert main(["exec", str(slow)]) == EXIT_FAILURE
    out = capsys.readouterr().out  # a timeout stops the run, not a step: no "-" where a step would be
    assert "\nerror: Timeout: the run exceeded its timeout of 0.2 s\n" in out


def test_usage_and_help(capsys):
    assert main([]) == EXIT_USAGE
    assert main(["frobnicate"]) == EXIT_USAGE
    assert main(["next", "only-one-arg"]) == EXIT_USAGE
    capsys.readouterr()
    for command in ("run", "check", "exec", "next", "tasks", "trigger", "runs", "show", "pause", "resume", "cancel"):
        assert main([command, "--help"]) == EXIT_OK
        out = capsys.readouterr().out
        example = out.split("example:\n", 1)[1].splitlines()[0]
        assert f"cronstack {command} " in example and "exit codes" in out


def test_remote_command_without_engine_exits_3(capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["runs", "--url", f"http://127.0.0.1:{port}"]) == 3
    assert "cannot reach the engine" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["tasks"], ["runs", "hello", "--json"]])
def test_remote_parsers_accept_options(argv):
    from engine._cli import build_parser

    args = build_parser().parse_args([*argv, "--url", "http://h:1", "--token", "t"])
    assert args.url == "http://h:1" and args.token == "t"


@pytest.mark.anyio
async def test_a_reload_that_fails_unexpectedly_keeps_the_engine_running(caplog):
    from engine._cli import _reload

    class Engine:
        async def reload(self):
            raise OSError("disk gone")

    with caplog.at_level(logging.ERROR, logger="cronstack.engine"):
        await _reload(Engine())  # logged, not raised: the signal handler's task must not die
    assert "reload failed, still running the previous definitions: OSError: disk gone" in caplog.text
