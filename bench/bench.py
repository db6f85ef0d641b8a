"""Performance report for ino-adapter: every number next to its baseline, as a ratio.

    .venv/bin/python bench/bench.py [--repeat N] [--json] [--input FILE] [--protocol P] [--as-of D]

Measured in one run:

1. CLI start-up: wall time of ``ino-adapter --help`` in a subprocess (median of N runs, default 15)
   next to a subprocess that only starts the interpreter and parses the input with orjson.
   Target: under 0.3 s.
2. Warm single-patient latency, in process, after one warm-up call: median and p95 over N calls
   (default 200) of ``evaluate_path(..., validate=False)`` and ``validate=True`` (R4B models), and of
   the pure core ``evaluate_batch`` on a pre-read batch, next to the median of
   ``orjson.loads(path.read_bytes())`` on the same file. Target: evaluate_path without model
   validation at most 5 ms (median).

The input defaults to the largest single-patient ``examples/*.json``; when there is none, a bundle
is generated with ``tests.support.synth`` into a temporary directory. This is a report, not a test:
the exit status is always 0 and missed targets are printed as ``TARGET MISSED`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_PROTOCOL = "nhs-ta514"
DEFAULT_AS_OF = "2026-11-21"
DEFAULT_CLI_RUNS = 15
DEFAULT_CALLS = 200
CLI_TARGET_S = 0.3
EVAL_TARGET_S = 0.005
BASELINE_SNIPPET = 'import orjson, sys; orjson.loads(open(sys.argv[1], "rb").read())'

if str(ROOT) not in sys.path:  # `tests` (for the synthetic fallback) is not an installed package
    sys.path.insert(0, str(ROOT))


@dataclass(slots=True)
class Metric:
    name: str
    value_s: float
    baseline_name: str
    baseline_s: float
    target_s: float | None = None  # None: no target
    enforced: bool = False  # False: the target is shown for information only

    @property
    def ratio(self) -> float:
        return self.value_s / self.baseline_s if self.baseline_s > 0 else math.inf

    @property
    def ok(self) -> bool | None:
        return None if self.target_s is None else self.value_s <= self.target_s

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["ok"] = self.ok
        return out


@dataclass(frozen=True, slots=True)
class Series:
    """Wall times of repeated runs, in seconds."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank


def time_calls(fn: Callable[[], object], n: int) -> Series:
    gc.collect()
    times: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Series(tuple(times))


def time_processes(commands: Sequence[Sequence[str]], n: int) -> list[Series]:
    """Run each command n times (interleaved, after one untimed warm-up each); wall time per run."""
    for cmd in commands:
        _run(cmd)
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(n):
        for i, cmd in enumerate(commands):
            t0 = time.perf_counter()
            _run(cmd)
            times[i].append(time.perf_counter() - t0)
    return [Series(tuple(t)) for t in times]


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-1] if err else ''}")


def cli_command() -> tuple[list[str], str]:
    """The installed ``ino-adapter`` script next to this interpreter, else ``python -c`` on cli.main."""
    script = Path(sys.executable).parent / "ino-adapter"
    found = str(script) if script.is_file() else shutil.which("ino-adapter")
    if found:
        return [found], found
    note = "python -c 'from cli import main' (ino-adapter not installed: pip install -e .)"
    return [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())"], note


# -- input -------------------------------------------------------------------------------------------
def pick_example(protocol: str, as_of: date) -> Path | None:
    """The largest examples/*.json that evaluates to exactly one patient (files may be half-written)."""
    from adapter.api import evaluate_path

    best: Path | None = None
    for path in sorted(EXAMPLES.glob("*.json")):
        try:
            if len(evaluate_path(path, protocol, as_of, validate=False).results) != 1:
                continue
        except Exception:  # a file being written right now, or not a patient bundle
            continue
        if best is None or path.stat().st_size > best.stat().st_size:
            best = path
    return best


def synth_example(directory: Path) -> Path:
    import orjson

    from tests.conftest import eligible_patient

    path = directory / "synth-eligible.json"
    path.write_bytes(orjson.dumps(eligible_patient().bundle()))
    return path


# -- the report --------------------------------------------------------------------------------------
def measure(
    path: Path, protocol: str, as_of: date, cli_runs: int, calls: int
) -> tuple[dict[str, Any], list[Metric]]:
    import orjson

    from adapter.api import evaluate_batch, evaluate_path
    from adapter.input.reader import read_input

    metrics: list[Metric] = []
    notes: list[str] = []

    # 1. CLI start-up (subprocesses; nothing of the adapter is imported in them beyond cli.py)
    cli, cli_label = cli_command()
    baseline_cmd = [sys.executable, "-c", BASELINE_SNIPPET, str(path)]
    try:
        help_runs, base_runs = time_processes([[*cli, "--help"], baseline_cmd], cli_runs)
        metrics.append(
            Metric(
                "cli `ino-adapter --help` median",
                help_runs.median,
                "python -c orjson.loads(file)",
                base_runs.median,
                CLI_TARGET_S,
                enforced=True,
            )
        )
    except (OSError, RuntimeError) as exc:
        notes.append(f"CLI start-up not measured: {exc}")

    # 2. warm in-process latency
    read_base = time_calls(lambda: orjson.loads(path.read_bytes()), calls)
    warmup: dict[str, float] = {}

    def warm(label: str, fn: Callable[[], object]) -> Series:
        t0 = time.perf_counter()
        fn()  # warm-up: lazy imports, YAML tables (unless input selection loaded them), R4B models
        warmup[label] = time.perf_counter() - t0
        return time_calls(fn, calls)

    fast = warm("evaluate_path(validate=False)", lambda: evaluate_path(path, protocol, as_of, validate=False))
    slow = warm("evaluate_path(validate=True)", lambda: evaluate_path(path, protocol, as_of, validate=True))
    batch = read_input(path)
    core = warm(
        "evaluate_batch(validate=False)", lambda: evaluate_batch(batch, protocol, as_of, validate=False)
    )

    base_name = "orjson.loads(read_bytes) median"
    for label, series, enforced in (
        ("evaluate_path(validate=False)", fast, True),
        ("evaluate_path(validate=True)", slow, False),
        ("evaluate_batch(validate=False) core", core, False),
    ):
        metrics.append(
            Metric(f"{label} median", series.median, base_name, read_base.median, EVAL_TARGET_S, enforced)
        )
        metrics.append(Metric(f"{label} p95", series.p95, base_name, read_base.median, EVAL_TARGET_S))

    report = {
        "input": str(path),
        "input_bytes": path.stat().st_size,
        "resources": len(batch.resources),
        "protocol": protocol,
        "as_of": as_of.isoformat(),
        "cli": cli_label,
        "cli_runs": cli_runs,
        "calls": calls,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "warmup_s": warmup,
        "metrics": [m.as_json() for m in metrics],
        "missed": [m.name for m in metrics if m.enforced and m.ok is False],
        "notes": notes,
    }
    return report, metrics


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def print_table(report: dict[str, Any], metrics: Sequence[Metric]) -> None:
    print(
        f"input {report['input']} ({report['input_bytes']} bytes, {report['resources']} used resources), "
        f"protocol {report['protocol']}, as of {report['as_of']}"
    )
    print(
        f"python {report['python']} on {report['machine']}; CLI {report['cli']}; "
        f"{report['cli_runs']} subprocess runs, {report['calls']} in-process calls"
    )
    rows = [("metric", "value", "baseline", "ratio", "target", "ok?")]
    for m in metrics:
        target = "-" if m.target_s is None else f"<= {_fmt_s(m.target_s)}" + ("" if m.enforced else " (info)")
        ok = "-" if m.ok is None else ("yes" if m.ok else "NO")
        rows.append((m.name, _fmt_s(m.value_s), _fmt_s(m.baseline_s), f"{m.ratio:.1f}x", target, ok))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"baselines: CLI vs `python -c '{BASELINE_SNIPPET}' FILE`; in-process vs orjson.loads(bytes)")
    for note in report["notes"]:
        print(f"note: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help=f"runs per measurement (default: {DEFAULT_CLI_RUNS} subprocesses, {DEFAULT_CALLS} calls)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    parser.add_argument("--input", type=Path, help="FHIR file (default: largest examples/*.json, else synth)")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.fromisoformat(DEFAULT_AS_OF))
    args = parser.parse_args(argv)
    repeat: int | None = args.repeat
    if repeat is not None and repeat < 1:
        parser.error("--repeat must be at least 1")
    cli_runs = repeat or DEFAULT_CLI_RUNS
    calls = repeat or DEFAULT_CALLS
    protocol: str = args.protocol
    as_of: date = args.as_of

    with contextlib.ExitStack() as stack:
        path: Path | None = args.input or pick_example(protocol, as_of)
        synthetic = path is None
        if path is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ino-bench-")))
            path = synth_example(tmp)
        report, metrics = measure(path.resolve(), protocol, as_of, cli_runs, calls)
    if synthetic:
        report["notes"].append("no usable examples/*.json: used a tests.support.synth bundle (temp file)")

    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print_table(report, metrics)
    out = sys.stderr if args.json else sys.stdout
    for m in metrics:
        if m.enforced and m.ok is False:
            print(f"TARGET MISSED: {m.name} = {_fmt_s(m.value_s)} (target <= {_fmt_s(m.target_s)})", file=out)
    fast = next((m for m in metrics if m.name.startswith("evaluate_path(validate=False) median")), None)
    slow = next((m for m in metrics if m.name.startswith("evaluate_path(validate=True) median")), None)
    if fast and slow and not args.json:
        verdict = {True: "meets", False: "misses"}
        target = _fmt_s(EVAL_TARGET_S)
        print(
            f"{target} target: validate=False {verdict[bool(fast.ok)]} it ({_fmt_s(fast.value_s)}); "
            f"validate=True {verdict[bool(slow.ok)]} it ({_fmt_s(slow.value_s)})"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a report, not a test: never fail the caller
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(0)
