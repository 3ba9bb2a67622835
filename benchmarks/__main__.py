"""Run every benchmark: ``python -m benchmarks [--quick] [--json PATH] [--only NAME ...] [--loop ...]``.

Modules are discovered as ``benchmarks/bench_*.py``; each exposes
``run(quick) -> list[Result]``. Each module runs in a fresh subprocess: the
engine benchmarks leave behind hundreds of thousands of objects, tracemalloc
state and event-loop policy, and a later module measured in the same process
would pay for the earlier one's garbage (see README, "Isolation"). A module
that fails, times out or cannot be imported becomes a failed row (``met`` =
NO, the error in the note) and the others still run. The combined table goes
to stdout, progress to stderr, and ``--json`` writes the rows plus the
machine's facts (python, platform, cpu count, uvloop, loops measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from benchmarks import LOOPS_ENV
from benchmarks._harness import Result, report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: seconds a module may take before it is stopped and reported as failed
TIMEOUT = {True: 300.0, False: 3600.0}

_CHILD = """
import json, sys
from dataclasses import asdict
import importlib
mod = importlib.import_module("benchmarks." + sys.argv[1])
results = mod.run(sys.argv[2] == "quick")
with open(sys.argv[3], "w") as f:
    json.dump([asdict(r) for r in results], f)
"""


def discover() -> list[str]:
    """Module names ``bench_*`` beside this file, sorted."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def select(names: list[str], only: Sequence[str] | None) -> list[str]:
    """``names`` narrowed to ``only`` (``vm`` and ``bench_vm`` both work); unknown names are an error."""
    if not only:
        return names
    wanted = [o if o.startswith("bench_") else f"bench_{o}" for o in only]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise SystemExit(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(n[6:] for n in names)}")
    return [n for n in names if n in wanted]


def _failed(name: str, why: str) -> Result:
    short = name.removeprefix("bench_")
    return Result(short, "FAILED", 0.0, "-", target="runs", met=False, note=why)


def _result(raw: dict[str, Any]) -> Result:
    known = {f.name for f in fields(Result)}
    return Result(**{k: v for k, v in raw.items() if k in known})


def run_module(name: str, quick: bool, loops: str, timeout: float | None = None) -> tuple[list[Result], float]:
    """Run ``benchmarks.<name>`` in a fresh interpreter; its rows (or one failed row) and seconds taken."""
    env = dict(os.environ, **{LOOPS_ENV: loops})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="cronstack-bench-run-") as tmp:
        out = Path(tmp) / "results.json"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, name, "quick" if quick else "full", str(out)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout or TIMEOUT[quick],
            )
        except subprocess.TimeoutExpired:
            return [_failed(name, f"timed out after {timeout or TIMEOUT[quick]:.0f} s")], time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            return [_failed(name, why[:300])], elapsed
        return [_result(r) for r in json.loads(out.read_text())], elapsed


def machine(loops: str) -> dict[str, Any]:
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "uvloop": uv,
        "loops": loops.split(","),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions (< 2 min in all)")
    parser.add_argument("--json", metavar="PATH", help="write the rows and the machine's facts as JSON")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. vm runs)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"),
                        help="event loop(s) to measure on [quick: asyncio; full: both]")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    loop = args.loop or ("asyncio" if args.quick else "both")
    loops = "asyncio,uvloop" if loop == "both" else loop
    names = select(discover(), args.only)
    results: list[Result] = []
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows, elapsed = run_module(name, args.quick, loops)
        timings[name] = round(elapsed, 2)
        print(f"  {name}: {len(rows)} rows in {elapsed:.1f} s", file=sys.stderr, flush=True)
        results.extend(rows)
    total = time.perf_counter() - started
    report(results)
    for r in results:
        if r.name == "FAILED":
            print(f"{r.bench} failed: {r.note}")
    print(f"\n{len(names)} modules in {total:.0f} s ({'quick' if args.quick else 'full'}, loops: {loops})")
    if args.json:
        payload = {
            "machine": machine(loops),
            "mode": "quick" if args.quick else "full",
            "seconds": round(total, 1),
            "module_seconds": timings,
            "results": [asdict(r) | {"ratio": r.ratio} for r in results],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 1 if any(r.name == "FAILED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
