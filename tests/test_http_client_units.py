"""Pure parts of the HTTP client: redaction, retry policy, request encoding, body decoding."""

from __future__ import annotations

import random
import re
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine._http as http_pkg
from engine._http import ERROR_TYPES, redact_headers, redact_text, redact_url
from engine._http.message import (
    BadJson,
    BadUrl,
    BadValue,
    build_headers,
    build_url,
    decode_body,
    encode_body,
    to_text,
)
from engine._http.redact import MIN_SECRET_LENGTH
from engine._http.retry import backoff_delay, may_retry_method, parse_retry_after

# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://bob:pw@api.example.com/x?api_key=abc&page=2",
            "https://bob:***@api.example.com/x?api_key=***&page=2",
        ),
        (
            "https://api.example.com/x?token=t&sig=s#frag",
            "https://api.example.com/x?token=***&sig=***#frag",
        ),
        (
            "https://s3.example.com/o?X-Amz-Signature=abc&X-Amz-Date=1",
            "https://s3.example.com/o?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        (
            "http://h/?apiKey=1&access_token=2&author=me",
            "http://h/?apiKey=***&access_token=***&author=me",
        ),
        ("http://h/?keyword=x&monkey=y", "http://h/?keyword=x&monkey=y"),
        ("http://h/p%20q?a=%20b", "http://h/p%20q?a=%20b"),
        ("http://bob@h/", "http://bob@h/"),
        ("http://h/?password", "http://h/?password"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_url_masks_given_secrets_anywhere():
    hook = "https://hooks.example.com/services/T000/B000/XXXXSECRETXXXX"
    assert (
        redact_url(hook, secrets=["XXXXSECRETXXXX"])
        == "https://hooks.example.com/services/T000/B000/***"
    )


def test_redact_headers():
    headers = {
        "Authorization": "Bearer abc",
        "proxy-authorization": "Basic x",
        "Cookie": "a=b",
        "Set-Cookie": "s=1",
        "X-Api-Key": "k",
        "X-Auth-Token": "t",
        "X-Client-Secret": "s",
        "Accept": "application/json",
        "X-Trace": "id-LONGSECRET-1",
        "X-Count": 3,
    }
    out = redact_headers(headers, secrets=["LONGSECRET", "on"])
    for name in (
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "Set-Cookie",
        "X-Api-Key",
        "X-Auth-Token",
        "X-Client-Secret",
    ):
        assert out[name] == "***", name
    assert out["Accept"] == "application/json"
    assert out["X-Trace"] == "id-***-1"
    assert out["X-Count"] == 3
    assert headers["Authorization"] == "Bearer abc"  # the input is not changed
    assert redact_headers(None) == {}


def test_redact_text_longest_secret_first_and_short_ignored():
    assert redact_text("key=abcdef and abc", ["abc", "abcdef"]) == "key=*** and abc"
    assert len("abc") < MIN_SECRET_LENGTH
    assert redact_text("abcd abcdef", ["abcd", "abcdef"]) == "*** ***"


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="*"), min_size=MIN_SECRET_LENGTH, max_size=30
    ),
    st.text(max_size=30),
    st.text(max_size=30),
)
def test_redact_text_never_leaks_a_secret(secret, before, after):
    assert secret not in redact_text(before + secret + after + secret, [secret])


# --- retry policy ----------------------------------------------------------------------------


def test_methods_that_may_retry():
    for method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"):
        assert may_retry_method(method, False)
    for method in ("POST", "PATCH"):
        assert not may_retry_method(method, False)
        assert may_retry_method(method, True)


def test_backoff_is_exponential_with_equal_jitter_and_capped():
    rng = random.Random(7)
    for n in range(1, 12):
        step = min(30.0, 0.5 * 2 ** (n - 1))
        delays = [backoff_delay(n, rng=rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_delay(20, rng=rng) <= 30.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_dates():
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0


# --- request encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a", "a"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (3.0, "3"),
        (2.5, "2.5"),
        ([1, "a"], '[1,"a"]'),
        ({"k": None}, '{"k":null}'),
    ],
)
def test_to_text(value, text):
    assert to_text(value) == text


def test_to_text_refuses_non_data():
    with pytest.raises(BadValue, match="object"):
        to_text(object())


def test_build_url_appends_query():
    url = build_url("https://h/p?x=1", {"y": [1, 2], "z": None, "w": "a b"})
    assert str(url) == "https://h/p?x=1&y=1&y=2&w=a+b"
    with pytest.raises(BadValue, match="object"):
        build_url("https://h/", ["not", "a", "mapping"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "said"), [
    ("/xano-data-sync", "'/xano-data-sync' has no scheme (a relative URL); when the URL is built from an "
                        "environment variable, that variable is probably not set"),
    ("", "the URL must be non-empty text, got ''; when the URL is built from an environment variable"),
    (None, "got None; when the URL is built from an environment variable"),
])
def test_an_empty_or_relative_url_points_at_an_unset_environment_variable(url, said):
    with pytest.raises(BadUrl, match=re.escape(said)):
        build_url(url, None)
    with pytest.raises(BadUrl) as info:
        build_url("ftp://h/x", None)
    assert "the scheme is 'ftp:'" in str(info.value) and "environment" not in str(info.value)


def test_build_headers_refuses_bad_names():
    with pytest.raises(BadValue, match="header name"):
        build_headers({"Bad:Name": "1"})
    assert build_headers({"A": 1, "B": None}) == {"A": "1"}


def test_encode_body_formats():
    assert encode_body("POST", {"a": 1}, "json") == (b'{"a":1}', "application/json")
    assert encode_body("POST", "a=1&b=2", "form") == (
        b"a=1&b=2",
        "application/x-www-form-urlencoded",
    )
    assert encode_body("POST", 12, "text") == (b"12", "text/plain; charset=utf-8")
    assert encode_body("DELETE", None, "json") == (None, None)
    assert encode_body("GET", None, "none") == (None, None)
    with pytest.raises(BadValue, match="JSON"):
        encode_body("POST", {"a": object()}, "json")


# --- response decoding -----------------------------------------------------------------------


def test_decode_body():
    assert decode_body(b"", "application/json", None) is None
    assert decode_body(b'\xef\xbb\xbf{"a": 1}', "application/json", None) == {"a": 1}
    assert decode_body('{"a": "é"}'.encode("latin-1"), "application/json", "latin-1") == {"a": "é"}
    assert decode_body(b"\xff ok", "text/plain", None) == "\ufffd ok"
    assert decode_body(b'{"a": 1}', "text/plain", None) == '{"a": 1}'
    with pytest.raises(BadJson) as info:
        decode_body(b"<html>", "application/json", None)
    assert info.value.text == "<html>"


# --- public surface --------------------------------------------------------------------------


def test_all_is_complete_and_error_types_are_distinct():
    public = {name for name in vars(http_pkg) if not name.startswith("_")}
    modules = {"client", "errors", "message", "redact", "retry", "translate"}
    assert set(http_pkg.__all__) == public - modules
    assert len(set(ERROR_TYPES)) == len(ERROR_TYPES)
    assert "HttpError" in ERROR_TYPES and "HttpTimeout" in ERROR_TYPES
