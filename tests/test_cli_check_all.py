"""`cronstack check` prints every error at once: the schedules and calls of the files
that compile are checked even when other files do not (SPEC: "print every error")."""

from __future__ import annotations

import json
from pathlib import Path

from engine._cli import EXIT_FAILURE, EXIT_OK, main


def write(root: Path, files: dict[str, object]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body if isinstance(body, str) else json.dumps(body))
    return root


# the review's project: 3 files that do not compile, 4 whose schedules are wrong
SEVEN = {
    "a.json": {"name": "a", "schedule": 5, "stack": []},
    "b.json": {"name": "b", "schedule": "0 0 * * *", "cron_day_match": "xor", "stack": []},
    "c.json": {"name": "c", "schedule": "*/0 * * * *", "stack": []},
    "d.json": {"name": "d", "schedule": "0 0 L * L", "stack": []},
    "e.json": {"name": "e", "schedule": "@every 5m", "stack": []},
    "g.json": {"name": "g", "schedule": "0 0 * * *", "timezone": "", "stack": []},
    "h.json": {"name": "h", "stack": [{"function": "nope"}]},
}


def test_schedules_are_checked_when_other_files_do_not_compile(tmp_path, capsys):
    root = write(tmp_path / "p", SEVEN)
    assert main(["check", str(root)]) == EXIT_FAILURE
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["a.json", "b.json", "c.json", "d.json", "e.json", "g.json", "h.json"]
    assert lines[2].startswith("c.json: schedule: cron field 'minute'")
    assert lines[3].startswith("d.json: schedule: cron field 'day-of-week'")
    assert lines[4].startswith("e.json: schedule: unknown cron shorthand '@every 5m'")
    assert lines[5].startswith("g.json: timezone: timezone must be an IANA zone name")
    assert "7 errors" in err


def test_json_lists_every_error_sorted_by_file(tmp_path, capsys):
    root = write(tmp_path / "p", {**SEVEN, "sub/z.json": "{", "0.json": {"name": "zero", "schedule": "0 25 * * *", "stack": []}})
    assert main(["check", str(root), "--json"]) == EXIT_FAILURE
    errors = json.loads(capsys.readouterr().out)["errors"]
    files = [e["file"] for e in errors]
    assert files == sorted(files) and len(files) == 9
    assert {"0.json", "sub/z.json"} <= set(files)
    assert next(e for e in errors if e["file"] == "0.json")["path"] == "schedule"


def test_bad_cron_and_bad_zone_of_one_task_are_both_reported(tmp_path, capsys):
    root = write(tmp_path / "p", {"t.json": {"name": "t", "schedule": "0 25 * * *", "timezone": "Europe/Berln", "stack": []}})
    assert main(["check", str(root)]) == EXIT_FAILURE
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("t.json: schedule: cron field 'hour'")
    assert lines[1].startswith("t.json: timezone: timezone 'Europe/Berln' is not a known") and "Europe/Berlin" in lines[1]


def test_calls_are_checked_when_other_files_do_not_compile(tmp_path, capsys):
    root = write(tmp_path / "p", {
        "broken.json": '{"name": "x", ',
        "caller.json": {"name": "caller", "stack": [
            {"function": "custom_function", "name": "doubel", "inputs": {}},
            {"function": "custom_function", "name": "half", "inputs": {}},
        ]},
        "functions/double.json": {"name": "double", "inputs": {}, "stack": []},
        # defined, but does not compile: its own error is reported, a call of it is not
        "functions/half.json": {"name": "half", "inputs": {}, "stack": [{"function": "retrun"}]},
    })
    assert main(["check", str(root)]) == EXIT_FAILURE
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("broken.json: ") and "invalid JSON" in lines[0]
    assert lines[1].startswith("caller.json: stack[0]") and "did you mean 'double'" in lines[1]
    assert lines[2].startswith("functions/half.json: stack[0].function")


def test_duplicate_names_and_missing_folder(tmp_path, capsys):
    root = write(tmp_path / "p", {"one.json": {"name": "t", "stack": []}, "two.json": {"name": "t", "stack": []}})
    assert main(["check", str(root)]) == EXIT_FAILURE
    assert capsys.readouterr().out.startswith("two.json: name: the name 't' is already used by one.json")
    assert main(["check", str(tmp_path / "nowhere")]) == EXIT_FAILURE
    assert "is not a folder of definitions" in capsys.readouterr().out


def test_a_good_project_still_passes(tmp_path, capsys):
    root = write(tmp_path / "p", {"t.json": {"name": "t", "schedule": "0 6 * * *", "timezone": "Europe/Berlin", "stack": []}})
    assert main(["check", str(root)]) == EXIT_OK
    assert "ok: 1 tasks, 0 functions" in capsys.readouterr().out
