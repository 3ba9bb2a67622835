"""The stored form of a trace: ``RunTrace.export_json()`` against the dict entries it replaced.

Until entries became ``msgspec.Struct``s, ``RunTrace`` built a dict per
entry and the store encoded ``export()`` with ``codec.encode_lenient``. The
stored JSON (what ``engine.run`` and ``GET /api/runs/{id}`` decode) must stay
byte for byte what that gave, key order included. ``Reference`` below is that
former tracer (its ``step``/``log``/``export``, summaries from the same
``RunTrace.summary``, which ``test_trace.py`` pins on its own); every test
feeds the same calls to both and compares the bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine._trace as trace_module
from benchmarks.bench_runs import STACK10
from compiler import lower_stack
from engine._store import codec
from engine._trace import MAX_SUMMARY_BYTES, RunTrace
from runtime import RunContext, execute


class Reference:
    """The tracer as it was: a 7-key dict per step, logs and the truncation marker added by ``export``."""

    def __init__(self, secrets: list[str]) -> None:
        self._summaries = RunTrace(secrets)
        self.entries: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self._prefix = ""
        self.dropped = 0

    def child(self, prefix: str) -> Reference:
        view = Reference.__new__(Reference)
        view._summaries, view.entries, view.logs = self._summaries, self.entries, self.logs
        view._prefix = f"{self._prefix}{prefix} > "
        view.dropped = 0
        return view

    def step(self, path, kind, started, duration, inputs, output, error) -> None:
        if len(self.entries) >= trace_module.MAX_TRACE_ENTRIES:
            self.dropped += 1
            return
        if kind == "external_api_request":
            inputs = self._summaries._request_inputs(inputs)
        summary = self._summaries.summary
        self.entries.append({"path": self._prefix + path, "kind": kind, "started": started, "duration": duration,
                             "inputs": summary(inputs), "output": summary(output),
                             "error": summary(error) if error else None})

    def log(self, path, level, message) -> None:
        if len(self.logs) < trace_module.MAX_TRACE_ENTRIES:
            self.logs.append({"path": self._prefix + path, "level": level, "message": self._summaries.summary(message)})

    def export(self) -> list[dict[str, Any]]:
        out = list(self.entries)
        for log in self.logs:
            out.append({"path": log["path"], "kind": "log", "level": log["level"], "output": log["message"],
                        "started": None, "duration": 0.0, "inputs": None, "error": None})
        if self.dropped:
            out.append({"path": "", "kind": "trace_truncated", "started": None, "duration": 0.0,
                        "inputs": None, "output": {"dropped_steps": self.dropped}, "error": None})
        return out


def both(secrets: list[str]) -> tuple[Reference, RunTrace]:
    return Reference(secrets), RunTrace(secrets)


def assert_same(ref: Reference, trace: RunTrace) -> str:
    """The stored text, the store's encoding of ``export()``, and the readers' decoded view all agree."""
    stored = codec.encode_lenient(list(ref.export()))
    text = trace.export_json()
    assert type(text) is str
    assert text == stored
    assert codec.encode_lenient(list(trace.export())) == stored
    assert trace.export() == ref.export()
    assert codec.decode(text) == codec.decode(stored)
    return text


SECRET = "sk-live-0123456789"


def test_the_stored_text_of_a_small_trace_is_pinned():
    """Literal bytes: key order of steps, logs and errors, summaries, redaction and child paths."""
    def feed(tracer):
        tracer.step("stack[0]", "create_variable", 1.5, 0.25, None, [1, "a"], None)
        tracer.step("stack[1]", "external_api_request", 2.0, 0.5,
                    {"url": f"https://h.example/x?api_key={SECRET}&q=1",
                     "headers": {"Authorization": f"Bearer {SECRET}"}},
                    {"status": 200}, None)
        tracer.child("fn").step("stack[0]", "throw", 3.0, 0.0, "boom", None,
                                {"message": f"bad {SECRET}", "type": "E"})
        tracer.log("stack[2]", "info", f"key {SECRET}")

    trace = RunTrace([SECRET])
    feed(trace)
    text = trace.export_json()
    assert text == (
        '[{"path":"stack[0]","kind":"create_variable","started":1.5,"duration":0.25,"inputs":null,'
        '"output":[1,"a"],"error":null},'
        '{"path":"stack[1]","kind":"external_api_request","started":2.0,"duration":0.5,'
        '"inputs":{"url":"https://h.example/x?api_key=***&q=1","headers":{"Authorization":"***"}},'
        '"output":{"status":200},"error":null},'
        '{"path":"fn > stack[0]","kind":"throw","started":3.0,"duration":0.0,"inputs":"boom","output":null,'
        '"error":{"message":"bad ***","type":"E"}},'
        '{"path":"stack[2]","kind":"log","level":"info","output":"key ***","started":null,"duration":0.0,'
        '"inputs":null,"error":null}]'
    )
    ref = Reference([SECRET])
    feed(ref)
    assert assert_same(ref, trace) == text


class Tee:
    def __init__(self, *tracers) -> None:
        self.tracers = tracers

    def step(self, *args):
        for t in self.tracers:
            t.step(*args)

    def log(self, *args):
        for t in self.tracers:
            t.log(*args)


def test_stack10_traced_run_is_stored_as_before():
    """The benchmark's stack, through the traced native code, its calls fed to both tracers."""
    program = lower_stack(STACK10, "t").program
    for secrets in ([], ["run--big"]):
        ref, trace = both(secrets)
        asyncio.run(execute(program, RunContext(tracer=Tee(ref, trace))))
        assert len(trace.entries) == len(ref.entries) == 19
        assert_same(ref, trace)


def test_truncation_at_the_entry_limit_with_logs():
    ref, trace = both([SECRET])
    for i in range(trace_module.MAX_TRACE_ENTRIES + 37):
        for t in (ref, trace):
            t.step(f"stack[{i}]", "update_variable", float(i), 1e-6, i, {"n": [i, SECRET]}, None)
            if i % 500 == 0:
                t.log(f"stack[{i}]", "warning", {"i": i})
    assert trace.dropped == 37
    text = assert_same(ref, trace)
    assert text.endswith('{"path":"","kind":"trace_truncated","started":null,"duration":0.0,"inputs":null,'
                         '"output":{"dropped_steps":37},"error":null}]')


def test_values_over_the_summary_size_and_values_json_cannot_hold():
    ref, trace = both(["hunter2hunter2"])
    values = ["x" * 5000, ["é" * 1500], {"k": "hunter2hunter2", "big": "y" * 3000}, ["x\ud800y", "hunter2hunter2"],
              "x\ud800y", 2**70, float("nan"), -0.0, b"bytes", {1: 2}, (1, 2), {"s": {1, 2}}]
    for i, value in enumerate(values):
        for t in (ref, trace):
            t.step(f"stack[{i}]", "create_variable", 0.5, 0.0, value, value, {"message": value} if i % 2 else None)
            t.log(f"stack[{i}]", "error", value)
    text = assert_same(ref, trace)
    assert "hunter2" not in text and f'"$bytes":{len(msgspec.json.encode("x" * 5000))}' in text
    assert len(msgspec.json.encode("x" * 5000)) > MAX_SUMMARY_BYTES


def test_outputs_without_secrets_short_cut_summary_and_store_the_same():
    """Without secrets, ``step`` keeps short texts and short lists/objects' JSON itself (no
    ``summary`` call): long ones, ones JSON cannot hold and other types still go through it."""
    ref, trace = both([])
    values = ["x" * 1024, "x" * 1025, "x\ud800y", ["é" * 1500], {"big": "y" * 3000}, ["x\ud800y"], {1: 2},
              {"s": {1, 2}}, [2**70], [float("nan")], [], {}, {"a": [1, {"b": None}]}, (1, 2), b"bytes", 2**70]
    for i, value in enumerate(values):
        for t in (ref, trace):
            t.step(f"stack[{i}]", "create_variable", 0.5, 0.0, None, value, None)
    text = assert_same(ref, trace)
    assert '"output":{"a":[1,{"b":null}]}' in text and '"$truncated"' in text


def test_an_entry_keeps_the_value_as_it_was_when_reported():
    """A list changed in place after its step is stored as it was at the step."""
    ref, trace = both([])
    items = [1, 2]
    for t in (ref, trace):
        t.step("stack[0]", "create_variable", 0.0, 0.0, None, items, None)
    items.append(3)
    assert '"output":[1,2],' in assert_same(ref, trace)


pieces = st.sampled_from(["a", "é", '"', "\\", "\n", "😀", "\ud800", SECRET, "key", " "])
texts = st.lists(pieces, max_size=6).map("".join)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
calls = st.lists(
    st.one_of(
        st.tuples(st.just("step"), st.integers(0, 2), texts,
                  st.sampled_from(["create_variable", "update_variable", "external_api_request", "return", "throw"]),
                  st.floats(allow_nan=False) | st.none(), st.floats(0, 10), values, values,
                  st.none() | st.dictionaries(st.sampled_from(["message", "type"]), texts, max_size=2)),
        st.tuples(st.just("log"), st.integers(0, 2), texts, st.sampled_from(["info", "warning"]), values),
    ),
    max_size=12,
)


@given(calls=calls, secrets=st.sampled_from([[], [SECRET], [SECRET, "key "]]))
def test_any_sequence_of_calls_is_stored_as_before(calls, secrets):
    """Random steps and logs, at the root and in child views, past a limit of 5: the same bytes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trace_module, "MAX_TRACE_ENTRIES", 5)
        replay(calls, secrets)


def replay(calls, secrets):
    ref, trace = both(secrets)
    views = [(ref, trace), (ref.child("f"), trace.child("f")), (ref.child("f").child("g"), trace.child("f").child("g"))]
    for call in calls:
        what, depth, path, *args = call
        if what == "step" and args[0] == "external_api_request":
            args[3] = {"url": f"https://h.example/{path}?token={SECRET}", "headers": {"X-Key": SECRET}, "body": args[3]}
        for t in views[depth]:
            getattr(t, what)(path, *args)
    if ref.entries or ref.logs:
        assert_same(ref, trace)
    assert (trace.dropped, len(trace.entries), len(trace.logs)) == (ref.dropped, len(ref.entries), len(ref.logs))
