"""Compile speed without changed results: the expression cache, lazy compile(), constant fields, the fast lexer.

Correctness only, never timing: a cached or lazily compiled field must behave
exactly like one compiled from scratch, and every error must still surface at
load, naming its own field and column.
"""

import builtins
import gc
import uuid
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler import load_definitions
from compiler._errors import CompileError
from compiler._expr import cache as expr_cache
from compiler._expr import compile_condition, compile_expression, compile_value, field_code, lazy
from compiler._expr.lexer import _tokenize_slow, tokenize
from compiler._lower import lower_stack
from runtime import CronstackError, ExpressionError, InternalError, RunContext
from runtime._limits import MAX_EXPRESSION_LENGTH
from runtime._vm import Frame, _new_scope

pytestmark = pytest.mark.anyio


@pytest.fixture
def compiles(monkeypatch):
    """Counts calls of builtins.compile (the cost the laziness avoids at load)."""
    calls = []
    real = builtins.compile

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(builtins, "compile", counting)
    return calls


def fresh_text():
    """``({{ x.<key> + 1 }}, key)``: a text nothing compiled before, so the code cache misses."""
    key = f"k_{uuid.uuid4().hex}"
    return f"{{{{ x.{key} + 1 }}}}", key


# -- laziness ------------------------------------------------------------------------------


def test_no_compile_at_load_one_compile_at_first_call(compiles):
    text, key = fresh_text()
    value, refs = compile_value(text, "stack[0].value")
    assert compiles == [] and [r.name for r in refs] == ["x"]
    assert value.fn({"x": {key: 2}}) == 3
    assert len(compiles) == 1
    with pytest.raises(ExpressionError, match=r"null \+ 1"):
        value.fn({"x": {}})
    assert len(compiles) == 1


def test_first_call_replaces_fn_and_keeps_the_stub_working(compiles):
    key = f"k_{uuid.uuid4().hex}"
    value, _ = compile_value(f"{{{{ (x.{key} ?? 0) + 41 }}}} ", "stack[1].value")  # with text: a template
    stub = value.fn
    assert compiles == []
    assert stub({"x": {key: 1}}) == "42 "
    assert len(compiles) == 1
    assert value.fn is not stub  # replaced by the compiled function
    assert stub({"x": {}}) == "41 " and value.fn({"x": {key: 2}}) == "43 "
    assert len(compiles) == 1  # never compiled again


def test_same_source_shares_one_code_object(compiles):
    text, key = fresh_text()
    a, _ = compile_value(text, "stack[0].value")
    b, _ = compile_value(text, "stack[9].value")
    scope = {"x": {key: 1}}
    assert a.fn(scope) == b.fn(scope) == 2
    assert len(compiles) == 1
    assert a.fn.__code__ is not b.fn.__code__  # each has its own file name...
    assert a.fn.__code__.co_filename == "<expression at stack[0].value>"
    assert b.fn.__code__.co_filename == "<expression at stack[9].value>"
    assert a.fn.__code__.co_code == b.fn.__code__.co_code  # ...and the same bytecode


def test_a_lazy_value_is_no_reference_cycle():
    value, _ = compile_value("{{ y * 2 }}", "p")
    ref = weakref.ref(value)
    gc.disable()
    try:
        del value
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_generated_code_python_refuses_is_an_internal_error():
    with pytest.raises(InternalError, match=r"<expression at stack\[3\]> does not compile"):
        lazy.function_from("def _value(scope):\n    return (\n", "<expression at stack[3]>", {})


async def test_native_stack_compiles_on_first_run(compiles):
    stack = [
        {"function": "create_variable", "name": "n", "value": 0},
        {"function": "loop", "times": 3, "operations": [
            {"function": "update_variable", "name": "n", "operation": "increment", "value": "{{ index + 1 }}"}]},
        {"function": "return", "value": "{{ n * 10 }}"},
    ]  # fmt: skip
    low = lower_stack(stack, "lazy_native")
    assert low.diagnostics == []
    assert compiles == []  # neither the fields nor the whole-stack coroutine at load
    for expected_compiles in (1, 1):
        ctx = RunContext()
        frame = Frame(low.program, _new_scope(ctx, None, None))
        assert await low.program.native(frame, ctx) == 60
        assert len(compiles) == expected_compiles


# -- errors still at load, worded for their own field --------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{{ a + }}", "ends too early"),
        ("{{ a|nope }}", "unknown filter 'nope'"),
        ("{{ 'abc }}", "never closed"),
        ("{{ a ", "never closed"),
        ("{{ a|round(x=1) }}", "has no argument 'x'"),
    ],
)
def test_errors_name_the_field_and_the_column_wherever_the_text_stands(bad, message):
    first = diag(compile_value, bad, "stack[0].value")
    moved = diag(compile_value, "prefix " + bad, "stack[7].data.x")
    assert message in first.message and message in moved.message
    assert first.path == "stack[0].value" and moved.path == "stack[7].data.x"
    if first.column is not None:
        assert moved.column == first.column + len("prefix ")
    # the text compiled fine elsewhere first does not hide the error here
    assert diag(compile_value, {"k": bad}, "stack[2].body").path == "stack[2].body.k"


def test_names_keep_their_columns_when_the_code_comes_from_the_cache():
    _, a = compile_value("{{ item.id }}", "stack[0].id")
    text = "id={{ item.id }} and {{ item.id }}"
    _, b = compile_value(text, "stack[5].url")
    first, second = text.index("item") + 1, text.rindex("item") + 1
    _, c = compile_value({"x": ["{{ item.id }}"]}, "stack[6].data")
    assert [(r.name, r.path, r.column) for r in a] == [("item", "stack[0].id", 4)]
    assert [(r.name, r.path, r.column) for r in b] == [("item", "stack[5].url", first), ("item", "stack[5].url", second)]
    assert [(r.name, r.path, r.column) for r in c] == [("item", "stack[6].data.x[0]", 4)]


def test_unknown_names_are_compile_errors_with_the_right_paths():
    stack = [
        {"function": "create_variable", "name": "a", "value": "{{ itme.id }}"},
        {"function": "create_variable", "name": "b", "value": {"k": "x {{ itme.id }}"}},
    ]
    low = lower_stack(stack, "t")
    got = [(d.path, d.column, d.hint) for d in low.diagnostics]
    assert got == [("stack[0].value", 4, "did you mean 'item'?"), ("stack[1].value.k", 6, "did you mean 'item'?")]


def test_length_limit_is_checked_for_cached_and_uncached_texts():
    long = "{{ " + " + ".join(["x"] * (MAX_EXPRESSION_LENGTH // 4 + 10)) + " }}"
    assert "characters long" in diag(compile_value, long, "p").message
    assert "characters long" in diag(compile_condition, long, "p").message
    n = expr_cache.CACHED_TEXT_LIMIT // 3 + 10
    ok = "{{ [" + ", ".join(["x"] * n) + "]|length }}"  # too long to be cached, still right
    assert len(ok) > expr_cache.CACHED_TEXT_LIMIT
    value, refs = compile_value(ok, "p")
    assert value.fn({"x": 1}) == n and len(refs) == n


def test_the_caches_are_bounded():
    assert expr_cache._cached_build.cache_info().maxsize == expr_cache.CACHE_SIZE
    assert expr_cache._cached_template.cache_info().maxsize == expr_cache.CACHE_SIZE
    assert lazy._function_code.cache_info().maxsize == lazy.CODE_CACHE_SIZE


def diag(fn, *args):
    with pytest.raises(CompileError) as info:
        fn(*args)
    return info.value.diagnostics[0]


# -- constant fields need no code ----------------------------------------------------------


def test_constant_fields_compile_nothing_and_return_fresh_copies(compiles):
    raw = {"a": [1, {"b": 2.5}], "s": "no template", "n": None, "t": True}
    value, refs = compile_value(raw, "stack[0].data")
    assert value.constant and refs == ()
    first = value.fn({})
    assert first == raw and first is not raw
    first["a"][1]["b"] = 99
    raw["a"].append("changed later")
    assert value.fn({}) == {"a": [1, {"b": 2.5}], "s": "no template", "n": None, "t": True}
    assert compile_value("plain text", "p")[0].fn({}) == "plain text"
    assert compile_value(7, "p")[0].fn({}) == 7
    assert compile_value("{{ 1 + 2 }}", "p")[0].fn({}) == 3  # folded at load
    assert compile_condition("true", "p")[0].fn({}) is True
    assert compile_condition("{{ 2 > 3 }}", "p")[0].fn({}) is False
    assert compile_expression("[1, 2]|length", "p")[0].fn({}) == 2
    assert compiles == []


def test_a_folded_list_is_not_shared_between_calls():
    value, _ = compile_value("{{ [1, [2]] }}", "p")
    first = value.fn({})
    first[1].append(3)
    assert value.fn({}) == [1, [2]]


# -- field code stays valid for the native backend -----------------------------------------


@pytest.mark.parametrize(
    "raw, scope, expected",
    [
        ("{{ a.b }}-{{ c.d }}-{{ a.b + c.d }}", {"a": {"b": 1}, "c": {"d": 2}}, "1-2-3"),
        ({"x": "{{ a.b ?? 5 }}", "y": ["{{ c.d * 2 }}", "t{{ c.d }}"]}, {"a": {}, "c": {"d": 2}}, {"x": 5, "y": [4, "t2"]}),
        ("{{ a.b > 0 ? 'pos' : 'neg' }}", {"a": {"b": -1}}, "neg"),
    ],
)
def test_field_code_runs_like_the_value(raw, scope, expected):
    stmts, result = field_code(raw, "p")
    body = "".join("    " + line + "\n" for s in stmts for line in s.split("\n"))
    ns = dict(__import__("compiler._expr", fromlist=["x"]).EXPRESSION_NAMESPACE)
    exec(compile(f"def f(scope):\n{body}    return {result}\n", "<test>", "exec"), ns)
    assert ns["f"](scope) == expected == compile_value(raw, "p")[0].fn(scope)


def test_cached_and_uncached_code_are_the_same():
    raws = ["{{ x|map(attribute='id')|limit(20) }}", "Bearer {{ env.API_KEY }}", {"k": "{{ a ~ b }}", "l": [1, "{{ c }}"]}]
    warm = [field_code(r, "p") for r in raws]
    expr_cache._cached_build.cache_clear()
    expr_cache._cached_template.cache_clear()
    assert [field_code(r, "p") for r in raws] == warm


# -- the fast lexer and template splitting agree with the reference tokenizer --------------

EXPR_CHARS = st.text(alphabet="ab_z019 .eE+-*/%~?:!<>=|&()[]{},'\"\\\tnxé", max_size=30)


def outcome(fn):
    try:
        return ("ok", fn())
    except CompileError as exc:
        return ("error", str(exc))


@given(EXPR_CHARS)
def test_fast_tokenizer_matches_the_reference(text):
    assert outcome(lambda: tokenize(text, "p")) == outcome(lambda: _tokenize_slow(text, "p", 0, False))


@given(st.text(alphabet="ab {}'\"\\|:,1", max_size=24))
def test_template_ends_match_the_tokenizer(inner):
    text = "x{{" + inner + "}}y}}"
    try:
        _, after = _tokenize_slow(text, "p", 3, True)
    except CompileError:  # the tokenizer refuses it: so does the whole compile
        with pytest.raises(CompileError):
            compile_value(text, "p")
        return
    pieces = expr_cache.template_pieces(text, "p")
    assert [p for p in pieces if type(p) is tuple][0] == (3, after - 2)


# -- loading ---------------------------------------------------------------------------------


def test_load_restores_the_garbage_collector_state(tmp_path):
    (tmp_path / "t.json").write_text('{"name": "t", "stack": [{"function": "return", "value": "{{ now }}"}]}')
    assert gc.isenabled()
    load_definitions(tmp_path)
    assert gc.isenabled()
    gc.disable()
    try:
        load_definitions(tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()
    (tmp_path / "bad.json").write_text('{"name": "b", "stack": [{"function": "return", "value": "{{ nope( }}"}]}')
    with pytest.raises(CompileError):
        load_definitions(tmp_path)
    assert gc.isenabled()


def test_load_shows_paths_relative_to_the_root(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "x.json").write_text('{"name": "x", "stack": [{"function": "nope"}]}')
    with pytest.raises(CompileError) as info:
        load_definitions(str(tmp_path) + "/")
    assert info.value.diagnostics[0].file == "sub/deeper/x.json"


# -- the int fast path of % keeps the checked helper's results and errors ------------------

MOD_OPERANDS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
)


@given(MOD_OPERANDS, st.sampled_from([1, 2, -3, 7, 2**62, -(2**63) + 1]))
def test_mod_by_an_int_constant_matches_the_helper(x, divisor):
    from runtime import _values as V

    value, _ = compile_expression(f"x % {divisor}", "p")
    stmts, code = field_code(f"{{{{ x % {divisor} }}}}", "p")
    assert stmts == () and ".__class__ is int else _mod(" in code
    assert outcome_of(lambda: value.fn({"x": x})) == outcome_of(lambda: V.mod(x, divisor))


def outcome_of(fn):
    try:
        result = fn()
    except CronstackError as exc:
        return ("error", type(exc).__name__, exc.message)
    return ("ok", type(result).__name__, result)


def test_mod_by_zero_and_by_a_variable_still_go_through_the_helper():
    assert "_mod(" in field_code("{{ x % 0 }}", "p")[1] and " % 0 if" not in field_code("{{ x % 0 }}", "p")[1]
    with pytest.raises(ExpressionError, match="modulo by zero"):
        compile_expression("x % 0", "p")[0].fn({"x": 4})
    assert compile_expression("x % y", "p")[0].fn({"x": -7, "y": 3}) == 2


def test_shared_constant_functions_keep_types_apart():
    values = [1, True, 1.0, -0.0, 0.0, 0, False, None, "1", ""]
    for v in values:
        got = compile_value(v, "p")[0].fn({})
        assert type(got) is type(v) and repr(got) == repr(v)
    assert compile_value("same", "a")[0].fn is compile_value("same", "b")[0].fn
