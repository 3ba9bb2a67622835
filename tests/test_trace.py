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
