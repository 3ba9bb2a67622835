"""Run traces: secrets masked in one pass, summaries bounded."""

import msgspec

from engine._trace import MAX_SUMMARY_BYTES, RunTrace, Secrets


def test_secrets_are_masked_longest_first_and_inside_json_strings():
    secrets = Secrets(["abcd", "abcdefgh", 'quo"te-secret', "no"])  # "no" is too short to mask
    assert secrets.scrub("x abcdefgh y abcd z") == "x *** y *** z"
    encoded = msgspec.json.encode({"v": 'quo"te-secret'}).decode()
    assert "quo" not in secrets.scrub(encoded)
    assert secrets.scrub("no news") == "no news"
    assert Secrets([]).scrub("anything") == "anything"


def test_summaries_are_bounded_and_scrubbed():
    trace = RunTrace(["hunter2hunter2"])
    trace.step("stack[0]", "create_variable", 0.0, 0.0, None, {"k": "hunter2hunter2", "big": "x" * 5000}, None)
    (entry,) = trace.export()
    out = entry["output"]
    assert out["$bytes"] > MAX_SUMMARY_BYTES and len(out["$truncated"]) == MAX_SUMMARY_BYTES
    assert "hunter2" not in out["$truncated"]


def test_request_headers_and_urls_are_redacted():
    trace = RunTrace(["tok-123456"])
    inputs = {"url": "https://h.example/x?api_key=k1&q=1", "headers": {"Authorization": "Bearer tok-123456", "X": "tok-123456"}}
    trace.step("stack[0]", "external_api_request", 0.0, 0.0, inputs, None, None)
    text = msgspec.json.encode(trace.export()).decode()
    assert "tok-123456" not in text and "k1" not in text and "q=1" in text


def _reference_summary(trace, value):
    """The summary as computed before the encoded fast path: decode, scrub, cut, encode again."""
    kind = type(value)
    if kind in (type(None), int, float, bool):
        return value
    if kind is str and len(value) <= MAX_SUMMARY_BYTES // 2:
        return trace._secrets.scrub(value)
    data = msgspec.json.encode(value)
    text = trace._secrets.scrub(data.decode("utf-8", "replace"))
    if len(text) > MAX_SUMMARY_BYTES:
        return {"$truncated": text[:MAX_SUMMARY_BYTES], "$bytes": len(data)}
    return msgspec.Raw(text.encode())


def _plain(summary):
    return bytes(summary) if isinstance(summary, msgspec.Raw) else summary


def test_encoded_summaries_are_kept_as_encoded_only_when_nothing_changes():
    """The fast path (short JSON without a secret, kept as msgspec wrote it) gives the bytes the slow path gave."""
    values = [[1, 2.5, None, True], {"k": "v", "n": [1, {"x": "y"}]}, {"é": "ü ✓ 😀"}, ["hunter2hunter2"],
              {"token": "pré-secret-ü"}, ["x" * 3000], ["é" * 1500], ["é" * 700], "y" * 1500, "pré-secret-ü",
              {"a": 'quo"te-secret'}, [], {}]
    for secrets in ([], ["hunter2hunter2", "pré-secret-ü", 'quo"te-secret'], ["abcd"]):
        trace = RunTrace(secrets)
        for value in values:
            assert _plain(trace.summary(value)) == _plain(_reference_summary(trace, value)), (secrets, value)


def test_a_value_json_cannot_hold_is_summarised_not_raised():
    """A text with a lone surrogate (an expression can build one) fails msgspec's encoder: the summary is its repr."""
    trace = RunTrace(["secret-1234"])
    value = ["x\ud800y", "secret-1234"]
    assert trace.summary(value) == repr(["x\ud800y", "***"])
    trace.step("stack[0]", "create_variable", 0.0, 0.0, None, value, None)
    assert trace.export()[0]["output"] == repr(["x\ud800y", "***"])


def test_a_run_with_history_on_builds_such_a_value_as_without():
    import asyncio
    import dataclasses

    from compiler import lower_stack
    from runtime import RunContext, execute

    stack = [{"function": "create_variable", "name": "a", "value": "{{ 'x\ud800y' }}"},
             {"function": "return", "value": "{{ [a] }}"}]
    program = lower_stack(stack, "t").program
    for backend in (program, dataclasses.replace(program, native=None)):  # traced native code, the VM
        trace = RunTrace()
        assert asyncio.run(execute(backend, RunContext(tracer=trace))) == ["x\ud800y"]
        assert [e["error"] for e in trace.export()] == [None, None]


def test_a_large_value_is_summarised_from_its_start_without_writing_it_all_out(monkeypatch):
    """A step returning 100,000 records keeps its first 2 KB; encoding all of it only to cut it
    held the event loop (tens of milliseconds per step, seconds for a value sharing parts)."""
    import engine._trace as trace_module

    sizes = []
    real = trace_module._encode

    def counting(value):
        data = real(value)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(trace_module, "_encode", counting)
    records = [{"id": i, "name": f"user {i}", "tags": ["a", "b"]} for i in range(100_000)]
    for secrets in ([], ["hunter2hunter2"]):
        trace = RunTrace(secrets)
        trace.step("stack[0]", "query_all_records", 0.0, 0.0, {"rows": records}, records, None)
        trace.log("stack[1]", "info", records)
        for kept in (trace.entries[0].inputs, trace.entries[0].output, trace.logs[0].output):
            assert kept["$truncated"].startswith('[{"id":0,"name":"user 0","tags":["a","b"]},{"id":1,') or \
                kept["$truncated"].startswith('{"rows":[{"id":0,')
            assert len(kept["$truncated"]) == MAX_SUMMARY_BYTES and "$bytes" not in kept
    assert max(sizes) < 20_000, max(sizes)
    long_text = "x" * 100_000
    assert RunTrace().summary(long_text)["$truncated"] == '"' + "x" * (MAX_SUMMARY_BYTES - 1)


def test_a_secret_across_the_cut_of_a_large_value_is_masked_whole():
    secret = "hunter2-" * 8
    for at in [*range(1990, 2060, 3), *range(8000, 8300, 7)]:  # the cuts fall before, inside and after it
        value = ["x" * at + secret + "y" * 20_000]
        out = RunTrace([secret]).summary(value)["$truncated"]
        assert "hunter2" not in out and "hunter" not in out.replace("***", ""), at
    from engine._trace import _first_part

    for room in range(10, 10 + len(secret) + 2):  # the cut inside a text scrubs before it cuts
        kept = _first_part("x" * 10 + secret + "tail", [room + 2], 0, RunTrace([secret])._secrets)
        assert kept == ("x" * 10 + "***tail")[: room + 2] and "hu" not in kept, (room, kept)
