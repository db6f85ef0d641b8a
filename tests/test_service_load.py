"""A bounded load test of the HTTP service on loopback: 200 evaluations, 8 at a time, against the real uvicorn
process. Asserts only that nothing failed; prints the latency percentiles (bench/service_bench.py
measures properly)."""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import TODAY
from tests.support.make_examples import EXAMPLES_DIR
from tests.support.service import ServiceProcess

REQUESTS = 200
CONCURRENCY = 8


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def test_load_on_loopback(service: ServiceProcess) -> None:
    bodies = [(EXAMPLES_DIR / p.name).read_bytes() for p in sorted(EXAMPLES_DIR.glob("*.json"))]
    local = threading.local()
    headers = {**service.auth(), "Content-Type": "application/json"}

    def one(i: int) -> tuple[int, float]:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=service.url, timeout=30)
        started = time.perf_counter()
        r = client.post(
            "/evaluate", params={"as-of": TODAY.isoformat()}, content=bodies[i % len(bodies)], headers=headers
        )
        elapsed = time.perf_counter() - started
        if r.status_code == 200:
            json.loads(r.content)
        return r.status_code, elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    wall = time.perf_counter() - started
    statuses = [s for s, _ in results]
    ms = [t * 1000 for _, t in results]
    print(
        f"\nload: {REQUESTS} requests, {CONCURRENCY} concurrent, {wall:.2f} s ({REQUESTS / wall:.0f}/s); "
        f"latency ms p50 {percentile(ms, 50):.1f} p95 {percentile(ms, 95):.1f} p99 {percentile(ms, 99):.1f} "
        f"mean {statistics.fmean(ms):.1f}"
    )
    assert statuses == [200] * REQUESTS, {s: statuses.count(s) for s in set(statuses)}
