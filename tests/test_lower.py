"""Lowering: every step kind compiles, every mistake is reported with its JSON path and a hint."""

import json
from pathlib import Path

import pytest

from compiler import CompileError, compile_definition, load_definitions, lower_stack
from compiler._steps import STEPS
from runtime import Op, dis

GOLDEN = Path(__file__).parent / "golden"


def diags(stack):
    return lower_stack(stack, "t").diagnostics


def messages(stack):
    return [(d.path, d.message, d.hint) for d in diags(stack)]


def test_unknown_kind_has_path_and_hint():
    [(path, msg, hint)] = messages([{"function": "create_variable", "name": "a", "value": 1}, {"function": "lop"}])
    assert path == "stack[1].function"
    assert "unknown step kind 'lop'" in msg
    assert hint == "did you mean 'loop'?"


def test_unknown_field_deep_path():
    stack = [
        {"function": "conditional", "condition": "true", "true_branch": [
            {"function": "external_api_request", "url": "http://x", "ulr": "y"}]}
    ]
    [(path, msg, hint)] = messages(stack)
    assert path == "stack[0].true_branch[0].ulr"
    assert "unknown field 'ulr'" in msg and hint == "did you mean 'url'?"


def test_all_errors_of_a_stack_are_reported_together():
    stack = [{"function": "nope"}, {"function": "wait"}, {"function": "create_variable", "name": "1bad"}]
    paths = [p for p, _m, _h in messages(stack)]
    assert paths == ["stack[0].function", "stack[1].duration", "stack[2].name"]


def test_unknown_name_is_compile_error_with_hint_and_column():
    [d] = diags([{"function": "create_variable", "name": "counter", "value": 0},
                 {"function": "return", "value": "{{ countr + 1 }}"}])
    assert d.path == "stack[1].value" and d.column == 4 and d.hint == "did you mean 'counter'?"


def test_names_defined_later_or_by_return_as_are_known():
    assert diags([
        {"function": "conditional", "condition": "{{ x == null }}", "true_branch": []},
        {"function": "query_all_records", "table": "t", "return_as": "x"},
    ]) == []


def test_builtin_names_cannot_be_variables():
    [(path, msg, _h)] = messages([{"function": "create_variable", "name": "item", "value": 1}])
    assert path == "stack[0].name" and "built-in" in msg


def test_update_of_undefined_variable():
    [(path, msg, hint)] = messages([{"function": "create_variable", "name": "total", "value": 0},
                                     {"function": "update_variable", "name": "totl", "value": 1}])
    assert path == "stack[1].name" and hint == "did you mean 'total'?"


def test_break_outside_loop():
    [(path, msg, _h)] = messages([{"function": "break_loop"}])
    assert path == "stack[0]" and "outside of any loop" in msg


def test_loop_needs_exactly_one_source():
    [(_p, msg, _h)] = messages([{"function": "loop", "array": [], "times": 3, "operations": []}])
    assert "exactly one" in msg


def test_choice_fields_are_checked():
    [(path, msg, hint)] = messages([{"function": "create_variable", "name": "a", "value": 1},
                                     {"function": "update_variable", "name": "a", "operation": "apend", "value": 1}])
    assert path == "stack[1].operation" and hint == "did you mean 'append'?"


def test_every_step_kind_lowers():
    for kind, spec in STEPS.items():
        step = {"function": kind}
        for field in spec.required:
            step[field] = {"name": "v", "table": "t", "identifier": "k"}.get(field, "{{ 1 }}" if field != "try_block" else [])
            if field in ("name",):
                step[field] = "v" if kind != "custom_function" else "f"
        if kind == "update_variable":
            stack = [{"function": "create_variable", "name": "v", "value": 0}, step]
        elif kind in ("break_loop", "continue_loop"):
            stack = [{"function": "loop", "times": 1, "operations": [step]}]
        elif kind == "loop":
            stack = [{**step, "times": 2}]
        else:
            stack = [step]
        assert diags(stack) == [], kind


def test_task_settings_are_validated_together():
    with pytest.raises(CompileError) as info:
        compile_definition({"name": "Bad Name", "timout": 3, "retry_policy": {"max_retries": "x"}, "stack": []}, "t.json")
    text = str(info.value)
    assert "t.json: name:" in text
    assert "t.json: timout: unknown field 'timout'; did you mean 'timeout'?" in text
    assert "retry_policy.max_retries" in text


def test_load_reports_invalid_json_with_line_and_column(tmp_path):
    (tmp_path / "a.json").write_text('{"name": "a",\n "stack": [,]}')
    (tmp_path / "b.json").write_text('{"name": "b", "stack": [{"function": "nope"}]}')
    with pytest.raises(CompileError) as info:
        load_definitions(tmp_path)
    lines = str(info.value).splitlines()
    assert any(line.startswith("a.json: line 2, column") and "invalid JSON" in line for line in lines)
    assert any(line.startswith("b.json: stack[0].function: unknown step kind") for line in lines)


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"name": "u",\n "stack": [{"function": "log", "message": "\xff\xfe"}]}',
     "u.json: line 2, column 44: the file is not valid UTF-8"),
    (b'{"name": "u", "stack": [\n', "u.json: line 2, column 1 (the end of the file): invalid JSON: the file ends"),
    (b'{"name": "u",\n "stack": [],\n "stack": [{"function": "return"}]}',
     "u.json: lines 2, 3: the key 'stack' is given twice in one JSON object"),
    (b'{"name": "u", "stack": [{"function": "return", "value": 1, "value": 2}]}',
     "u.json: line 1: the key 'value' is given twice"),
    ('{"name": "u",\n "stack": [{"function": "return", "value": {"caf\u00e9": 1,\n "caf\u00e9": 2}}]}'.encode(),
     "u.json: lines 2, 3: the key 'caf\u00e9' is given twice"),
    (b'{"name": "u", "stack": [{"function": "return", "value": ' + b"[" * 990 + b"]" * 990 + b"}]}",
     "u.json: the JSON nests too deeply to be a definition"),
    (b'{"name": "u", "description": "1e999",\n "stack": [{"function": "return", "value": [1, -1e999]}]}',
     "u.json: line 2, column 48: the number -1e999 is too large"),
    (b'{"name": "u",\n "stack": [{"function": "return", "value": ' + b"7" * 5000 + b"}]}",
     "u.json: line 2, column 44: the number 77777777777777777777... (5000 characters) is too large"),
    (b'{"name": "u", "timeout": "300", "stack": []}', "u.json: timeout: 'timeout' must be a number, got a text ('300'); write the number without quotes"),
    (b'{"name": "u", "request_history": {"retention_days": -1}, "stack": []}',
     "u.json: request_history.retention_days: 'retention_days' must be 0 or more days"),
])
def test_malformed_files_say_where_and_what(tmp_path, content, expected):
    (tmp_path / "u.json").write_bytes(content)
    with pytest.raises(CompileError) as info:
        load_definitions(tmp_path)
    assert str(info.value).startswith(expected), str(info.value)


def test_a_byte_order_mark_is_ignored(tmp_path):
    (tmp_path / "u.json").write_bytes(b'\xef\xbb\xbf{"name": "u", "stack": []}')
    assert list(load_definitions(tmp_path).tasks) == ["u"]


def test_duplicate_names_across_files(tmp_path):
    for f in ("a.json", "b.json"):
        (tmp_path / f).write_text('{"name": "same", "stack": []}')
    with pytest.raises(CompileError, match="already used"):
        load_definitions(tmp_path)


def test_functions_folder_and_inputs_make_functions(tmp_path):
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "f.json").write_text('{"name": "f", "stack": []}')
    (tmp_path / "g.json").write_text('{"name": "g", "inputs": {"x": 1}, "stack": []}')
    (tmp_path / "t.json").write_text('{"name": "t", "stack": [{"function": "custom_function", "name": "f"}]}')
    defs = load_definitions(tmp_path)
    assert set(defs.functions) == {"f", "g"} and set(defs.tasks) == {"t"}


GOLDEN_STACKS = {
    "loop_try_finally": [
        {"function": "create_variable", "name": "n", "value": 0},
        {"function": "loop", "array": "{{ [1, 2, 3] }}", "operations": [
            {"function": "try_catch",
             "try_block": [{"function": "conditional", "condition": "{{ item == 2 }}",
                            "true_branch": [{"function": "break_loop"}]}],
             "catch_block": [{"function": "log", "message": "{{ error.message }}"}],
             "finally_block": [{"function": "update_variable", "name": "n", "operation": "increment"}]},
        ]},
        {"function": "return", "value": "{{ n }}"},
    ],
    "switch": [
        {"function": "switch", "value": "{{ 1 + 1 }}",
         "cases": {"2": [{"function": "return", "value": "two"}]},
         "default": [{"function": "throw_error", "message": "no", "type": "Bad"}]},
    ],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_STACKS))
def test_golden_programs(name):
    text = dis(lower_stack(GOLDEN_STACKS[name], name).program) + "\n"
    path = GOLDEN / f"{name}.dis"
    if not path.exists():  # first run writes the pin; review it in the diff
        path.write_text(text)
    assert text == path.read_text()


def test_instructions_remember_their_step():
    program = lower_stack([{"function": "wait", "duration": 1}], "t").program
    assert program.instrs[0].op is Op.WAIT and program.instrs[0].path == "stack[0]" and program.instrs[0].kind == "wait"


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("overlap", "sometimes", "overlap: 'overlap' must be one of skip, queue, allow, cancel_previous; got 'sometimes'"),
    ("misfire", "runonce", "misfire: 'misfire' must be one of run_once, skip, run_all; got 'runonce'; did you mean 'run_once'?"),
    ("cron_day_match", 3, "cron_day_match: 'cron_day_match' must be one of and, or; got 3"),
    ("retry_policy", {"max_retrys": 1},
     "retry_policy.max_retrys: unknown field 'max_retrys' in 'retry_policy'; did you mean 'max_retries'?"),
    ("request_history", {"enabled": "yes"}, "request_history.enabled: 'enabled' must be true or false, got a text"),
    ("tags", ["a", 1], "tags[1]: 'tags[1]' must be a text, got a whole number"),
    ("max_concurrency", 1.5, "max_concurrency: 'max_concurrency' must be a whole number, got a number (1.5)"),
])
def test_task_settings_errors_name_the_allowed_values(tmp_path, field, value, expected):
    """A setting of the wrong kind says what it may be, in JSON's words, not msgspec's type names."""
    (tmp_path / "u.json").write_text(json.dumps({"name": "u", field: value, "stack": []}))
    with pytest.raises(CompileError) as info:
        load_definitions(tmp_path)
    assert str(info.value) == f"u.json: {expected}"
