"""Expression evaluation speed: cronstack's compiled expressions against two references.

For each expression we measure evaluations per second of
(1) the ``runtime.Value.fn`` that ``compiler._expr.compile_value`` produces,
(2) the same logic written by hand as a Python function (the ceiling), and
(3) Jinja2's ``Environment().compile_expression``, compiled once (the field's
usual tool). Targets: within 2x of hand-written, at least 20x Jinja2.
Everything runs in one process, so the ratios are what a target is checked against.
Ours, the hand-written function and Jinja2 are timed in turn within each
repetition (CPU time of this process), so that other load on the machine falls
on all three alike; the note of each row gives the range of the per-repetition
ratios.
Run: ``.venv/bin/python -m benchmarks.bench_expressions [--quick] [--json PATH]``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._harness import Result, parse_args, report
from compiler._expr import compile_value

SCOPE: dict[str, Any] = {
    "a": {"b": 40},
    "items": [1, 2, 3, 4],
    "stats": {"done": 7, "failed": 1, "started_at": 1_700_000_000.0},
    "config": {"max_time": 3600, "batch_size": 25},
    "user": {"name": "ada", "plan": "pro"},
    "__now__": time.time,
}


def _hand_ab(s: dict[str, Any]) -> Any:
    return s["a"]["b"] + len(s["items"]) * 2


def _hand_cmp(s: dict[str, Any]) -> Any:
    return (s["__now__"]() - s["stats"]["started_at"]) > s["config"]["max_time"]


def _hand_sum(s: dict[str, Any]) -> Any:
    return s["stats"]["done"] + s["stats"]["failed"] + 1


def _hand_text(s: dict[str, Any]) -> Any:
    return "user-" + s["user"]["name"]


def _hand_ternary(s: dict[str, Any]) -> Any:
    return "paid" if s["user"]["plan"] == "pro" else "free"


# (name, cronstack template, hand-written, jinja2 expression)
CASES: list[tuple[str, str, Callable[[dict[str, Any]], Any], str]] = [
    ("a.b + (items|length) * 2", "{{ a.b + (items|length) * 2 }}", _hand_ab, "a.b + (items|length) * 2"),
    ("(now - started) > max", "{{ (now - stats.started_at) > config.max_time }}", _hand_cmp,
     "(now() - stats.started_at) > config.max_time"),
    ("x.done + x.failed + 1", "{{ stats.done + stats.failed + 1 }}", _hand_sum, "stats.done + stats.failed + 1"),
    ("'user-' ~ user.name", "{{ 'user-' ~ user.name }}", _hand_text, "'user-' ~ user.name"),
    ("plan == 'pro' ? ... : ...", "{{ user.plan == 'pro' ? 'paid' : 'free' }}", _hand_ternary,
     "'paid' if user.plan == 'pro' else 'free'"),
]  # fmt: skip


def _cpu_seconds(fn: Callable[[dict[str, Any]], Any], n: int) -> float:
    scope = SCOPE
    t0 = time.process_time()
    for _ in range(n):
        fn(scope)
    return time.process_time() - t0


def _paired_rates(
    fns: Sequence[tuple[Callable[[dict[str, Any]], Any], int]], repeat: int
) -> list[tuple[float, list[float]]]:
    """Per ``(fn, n)``: median evals/s, and the ratios of the first one's rate to it, repetition by repetition.

    The functions are timed in turn within each repetition (CPU time): timing
    all of ours and then all of a baseline let a burst of other load fall on
    one side only (quick runs swung 0.4x-1.8x on a loaded 2-core machine).
    """
    for fn, n in fns:
        _cpu_seconds(fn, n)
    rates: list[list[float]] = [[] for _ in fns]
    gc.collect()
    for _ in range(repeat):
        for i, (fn, n) in enumerate(fns):
            rates[i].append(n / _cpu_seconds(fn, n))
    return [(statistics.median(r), sorted(a / b for a, b in zip(rates[0], r))) for r in rates]


def run(quick: bool) -> list[Result]:
    import jinja2

    n, repeat = (20_000, 9) if quick else (200_000, 9)
    env = jinja2.Environment()
    results: list[Result] = []
    for name, template, hand, jexpr in CASES:
        value, _ = compile_value(template, "bench")
        if value.fn(SCOPE) != hand(SCOPE) and "now" not in template:
            raise AssertionError(f"{name}: compiled {value.fn(SCOPE)!r} != hand-written {hand(SCOPE)!r}")
        jfn = env.compile_expression(jexpr)
        jscope = dict(SCOPE, now=time.time)
        jinja = lambda s, f=jfn, js=jscope: f(**js)  # noqa: E731
        (ours, _), (theirs_hand, by_hand), (theirs_jinja, by_jinja) = _paired_rates(
            [(value.fn, n), (hand, n), (jinja, max(n // 20, 1000))], repeat
        )
        results.append(
            Result("expressions", f"{name} vs hand-written", ours, "evals/s", "hand-written", theirs_hand,
                   ">= 0.5x", ours / theirs_hand >= 0.5,
                   note=f"per-repetition ratios {by_hand[0]:.2f}-{by_hand[-1]:.2f}")
        )  # fmt: skip
        results.append(
            Result("expressions", f"{name} vs jinja2", ours, "evals/s", "jinja2 compile_expression", theirs_jinja,
                   ">= 20x", ours / theirs_jinja >= 20,
                   note=f"per-repetition ratios {by_jinja[0]:.1f}-{by_jinja[-1]:.1f}")
        )  # fmt: skip
    t0 = time.perf_counter()
    count = 200 if quick else 2000
    for i in range(count):
        compile_value(f"{{{{ a.b + (items|length) * {i} }}}}", "bench")
    results.append(Result("expressions", "compile a template", count / (time.perf_counter() - t0), "compiles/s"))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)


if __name__ == "__main__":
    main()
