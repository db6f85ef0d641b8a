"""A fault-injecting reverse proxy on 127.0.0.1, put in front of a real FHIR server in tests.

Every request the proxy receives is forwarded to the upstream server unchanged (same method, path, query,
headers and body) unless a scripted fault matches it. Faults are scripted per request, in order, each a
fixed number of times; the proxy records every request it saw so that tests can count round trips.

    from tests.support.fault_proxy import Fault, FaultProxy, on

    with FaultProxy(fhir_server.base_url) as proxy:          # or the ``fault_proxy`` pytest fixture
        client = FhirClient(proxy.base_url, auth=fhir_server.token)
        proxy.inject(on("POST", r"^/fhir/?$"), Fault.status(503, retry_after="1"), times=1)
        proxy.inject(lambda method, path: path.startswith("/fhir/Patient"), Fault.reset(), times=2)
        ...
        assert proxy.count("POST", r"^/fhir/?$") == 2          # the 503, then the retry
        assert proxy.pending() == 0                           # every scripted fault was used

API
---

``FaultProxy(upstream_url, *, idle_timeout=30.0, upstream_timeout=30.0)``
    ``upstream_url`` is the server's FHIR base (``http://127.0.0.1:PORT/fhir``); the proxy serves every path
    of that origin (``/fhir/...``, ``/auth/token``, ``/.well-known/...``), so ``proxy.base_url`` is the same
    base on the proxy's own port (``proxy.origin`` is ``http://127.0.0.1:PROXYPORT``). ``start()`` /
    ``stop()`` or use it as a context manager; ``stop()`` is idempotent, releases held connections at once
    and joins every thread with a timeout, so a test never hangs on the proxy.

``proxy.inject(match, fault, times=1, *, body=None) -> Rule``
    ``match(method, path) -> bool`` sees the upper-case method and the request target as sent (path and
    query, e.g. ``/fhir/Patient?identifier=x``); ``None`` matches every request. ``body`` is an optional
    predicate on the raw request body (e.g. ``lambda b: b'"type":"batch"' in b``), handy because a batch
    and a transaction are both ``POST [base]``. ``times`` is how many matching requests the fault applies
    to (``None``: every one, until ``clear_faults()``). Rules are tried in the order they were injected; the
    first one with uses left applies. ``Rule.used`` counts its uses. Thread-safe.

``on(method=None, path=None) -> match``
    A matcher: ``method`` compared case-insensitively, ``path`` a regular expression ``re.search``-ed in
    the request target.

Faults (``Fault.*``; each is a frozen dataclass):

- ``Fault.status(code, *, retry_after=None, headers=None, body=None)``: answer ``code`` without forwarding
  (the server never sees the request). ``retry_after`` is delta-seconds (``"1"`` / ``1``), an HTTP-date
  string, or a ``datetime`` (formatted as an HTTP-date). ``body`` is a JSON-able object, ``bytes`` or
  ``str``; by default an OperationOutcome naming the status. E.g. 503 + Retry-After, 429, 412, 500, 502,
  504, 408.
- ``Fault.reset(*, forward=False)``: close the connection without answering (an RST: SO_LINGER 0). With
  ``forward=True`` the request is first forwarded and the server's answer dropped: the server did the work
  but the client never learns it (the dangerous case for a non-idempotent POST).
- ``Fault.hold(seconds=10.0, *, forward=False)``: read timeout: keep the connection open without answering
  for ``seconds`` (longer than the client's read timeout), then close it. ``forward=True`` forwards first,
  as for ``reset``.
- ``Fault.delay(seconds)``: forward, then answer normally after ``seconds`` (a slow server).
- ``Fault.cut()``: forward, then send the status, the headers (with the full Content-Length) and half the
  body, and reset the connection (a download broken off mid-way).
- ``Fault.rewrite(fn)``: forward, then replace the answer with ``fn(status, headers, body) -> (status,
  headers, body)`` (``headers`` a ``dict[str, str]``, ``body`` bytes; Content-Length is recomputed).
- ``Fault.rewrite_json(fn)``: forward, then ``fn(parsed_json) -> new_json`` on the answer's body (the
  status and headers are kept).
- ``Fault.entry_status(index, status="429 Too Many Requests")``: forward a batch or
  transaction, then, under the outer ``200``, make ``entry[index].response.status`` ``status`` (its
  ``location``/``etag``/``lastModified`` and the entry's ``resource`` removed, an OperationOutcome put in
  ``response.outcome``). The server DID process that entry; a client's retry of it therefore tests
  that the entry is idempotent (conditional create, PUT to a fixed id) -- nothing may be duplicated.

Records (``proxy.seen``: a list of ``Seen(method, path, at, fault, body)``, ``at`` from
``time.monotonic()``, ``fault`` the applied fault's ``kind`` or None, ``body`` the raw request body;
``seen.json()`` parses it):

- ``proxy.count(method=None, path=None)``: how many requests matched (same rules as ``on``).
- ``proxy.requests(method=None, path=None)``: those records.
- ``proxy.clear()`` forgets the records; ``proxy.clear_faults()`` drops every rule; ``proxy.pending()`` is
  how many scripted uses are left (rules with ``times=None`` are not counted).

URLs: absolute URLs of the upstream origin in answers (Location, Content-Location, paging links, ids in
Bundles) are rewritten to the proxy's origin, so that a client keeps talking through the proxy; request
bodies get the reverse rewrite. Answers under ``/.well-known/`` are left untouched, so that a SMART
client discovers the server's real token endpoint (its assertion's ``aud`` must be that URL); token
requests then go to the server directly, not through the proxy. ``Accept-Encoding`` is not forwarded
(answers stay uncompressed, so that they can be rewritten).

Limits: HTTP/1.1 with keep-alive, ``Content-Length`` request bodies only (no chunked uploads, which
``requests`` does not send for byte bodies), plain HTTP, loopback only. The ``fault_proxy`` fixture in
``tests/support/fhir_server.py`` gives a function-scoped proxy in front of the session's sekmet server.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

__all__ = ["Fault", "FaultProxy", "Match", "Rule", "Seen", "on"]

Match = Callable[[str, str], bool]
Rewrite = Callable[[int, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]
FaultKind = Literal["status", "reset", "hold", "delay", "rewrite", "cut"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "accept-encoding",
}
_NOT_FROM_UPSTREAM = {*_HOP_BY_HOP, "date", "server"}
_JOIN_TIMEOUT = 5.0


def _reason(code: int) -> str:
    try:
        return http.client.responses[code]
    except KeyError:
        return "Status"


def _outcome(code: int, text: str) -> dict[str, Any]:
    issue_code = {429: "throttled", 408: "timeout", 412: "conflict", 409: "conflict"}.get(code, "transient")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue_code, "diagnostics": f"fault proxy: {text}"}],
    }


def _retry_after_text(value: str | int | float | datetime) -> str:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return format_datetime(aware.astimezone(UTC), usegmt=True)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


@dataclass(frozen=True)
class Fault:
    """What to do with a matching request; build one with the class methods."""

    kind: FaultKind
    code: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    seconds: float = 0.0
    forward: bool = False
    rewrite_fn: Rewrite | None = None

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: str | int | float | datetime | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> Fault:
        """Answer ``code`` without forwarding (optional Retry-After, headers, body)."""
        sent = dict(headers or {})
        if retry_after is not None:
            sent["Retry-After"] = _retry_after_text(retry_after)
        if body is None:
            raw = orjson.dumps(_outcome(code, f"injected HTTP {code}"))
            sent.setdefault("Content-Type", "application/fhir+json")
        elif isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
            sent.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            raw = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/fhir+json")
        return cls("status", code=code, headers=tuple(sent.items()), body=raw)

    @classmethod
    def reset(cls, *, forward: bool = False) -> Fault:
        """Close the connection without answering (after forwarding, if ``forward``)."""
        return cls("reset", forward=forward)

    @classmethod
    def hold(cls, seconds: float = 10.0, *, forward: bool = False) -> Fault:
        """Hold the connection unanswered for ``seconds``, then close it (a read timeout for the client)."""
        return cls("hold", seconds=seconds, forward=forward)

    @classmethod
    def cut(cls) -> Fault:
        """Forward, then send the answer's status, headers (the full Content-Length) and half its body, and
        close the connection: a body broken off mid-way (a download that breaks)."""
        return cls("cut", forward=True)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Forward and answer normally, ``seconds`` late."""
        return cls("delay", seconds=seconds, forward=True)

    @classmethod
    def rewrite(cls, fn: Rewrite) -> Fault:
        """Forward, then replace the answer with ``fn(status, headers, body)``."""
        return cls("rewrite", forward=True, rewrite_fn=fn)

    @classmethod
    def rewrite_json(cls, fn: Callable[[Any], Any]) -> Fault:
        """Forward, then replace the answer's JSON body with ``fn(body)`` (status and headers kept)."""

        def apply(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
            return status, headers, orjson.dumps(fn(orjson.loads(body)))

        return cls.rewrite(apply)

    @classmethod
    def entry_status(cls, index: int, status: str = "429 Too Many Requests") -> Fault:
        """Forward a batch/transaction, then report ``entry[index]`` as failed with ``status``."""

        def apply(body: Any) -> Any:
            entry = body["entry"][index]
            entry.pop("resource", None)
            code = int(status.split(maxsplit=1)[0])
            entry["response"] = {"status": status, "outcome": _outcome(code, f"injected {status}")}
            return body

        return cls.rewrite_json(apply)


def on(method: str | None = None, path: str | None = None) -> Match:
    """A matcher on the method (case-insensitive) and a regular expression searched in the request target."""
    pattern = re.compile(path) if path is not None else None
    wanted = method.upper() if method else None

    def match(m: str, p: str) -> bool:
        return (wanted is None or m == wanted) and (pattern is None or pattern.search(p) is not None)

    return match


@dataclass
class Rule:
    match: Match | None
    fault: Fault
    times: int | None
    body: Callable[[bytes], bool] | None = None
    used: int = 0

    def left(self) -> bool:
        return self.times is None or self.used < self.times


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    at: float
    fault: str | None
    body: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        """The request body parsed as JSON (e.g. to see which batch entries a retry sent)."""
        return orjson.loads(self.body)


@dataclass
class _Answer:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(self.server.proxy.idle_timeout)  # keep-alive reads wait this long at most
        super().setup()
        self.server.proxy._track(self.connection, threading.current_thread(), add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.proxy._track(self.connection, threading.current_thread(), add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test reads proxy.seen

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        method = self.command.upper()
        fault = proxy._take(method, self.path, body)
        proxy._record(Seen(method, self.path, time.monotonic(), fault.kind if fault else None, body))
        if fault is not None and fault.kind == "status":
            self._send(_Answer(fault.code, _reason(fault.code), dict(fault.headers), fault.body or b""))
            return
        answer: _Answer | None = None
        if fault is None or fault.forward:
            answer = proxy._forward(method, self.path, dict(self.headers.items()), body)
        if fault is None:
            assert answer is not None
            self._send(answer)
        elif fault.kind == "reset":
            self._reset()
        elif fault.kind == "hold":
            proxy._stopping.wait(fault.seconds)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif fault.kind == "delay":
            assert answer is not None
            proxy._stopping.wait(fault.seconds)
            self._send(answer)
        elif fault.kind == "cut":
            assert answer is not None
            self._send(answer, cut=True)
            self._reset()
        elif fault.kind == "rewrite":
            assert answer is not None and fault.rewrite_fn is not None
            status, headers, new_body = fault.rewrite_fn(answer.status, dict(answer.headers), answer.body)
            self._send(_Answer(status, _reason(status), headers, new_body))

    def _reset(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _send(self, answer: _Answer, cut: bool = False) -> None:
        self.send_response(answer.status, answer.reason)
        for name, value in answer.headers.items():
            if name.lower() not in _NOT_FROM_UPSTREAM:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        if self.server.proxy._stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body[: len(answer.body) // 2] if cut else answer.body)
        self.wfile.flush()


class FaultProxy:
    """A reverse proxy in front of ``upstream_url`` (a FHIR base) that injects scripted faults."""

    def __init__(
        self, upstream_url: str, *, idle_timeout: float = 30.0, upstream_timeout: float = 30.0
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError("upstream_url must be http://host:port/...")
        self.upstream_url = upstream_url.rstrip("/")
        self._up_host, self._up_port = parts.hostname, parts.port
        self._up_origin = f"http://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self.idle_timeout = idle_timeout
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- life cycle ----

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + self._base_path

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = dict(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in open_connections.values():
            thread.join(_JOIN_TIMEOUT)
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ---- scripting ----

    def inject(
        self,
        match: Match | None,
        fault: Fault,
        times: int | None = 1,
        *,
        body: Callable[[bytes], bool] | None = None,
    ) -> Rule:
        """Apply ``fault`` to the next ``times`` requests for which ``match(method, path)`` holds."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        rule = Rule(match, fault, times, body)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def pending(self) -> int:
        with self._lock:
            return sum(r.times - r.used for r in self._rules if r.times is not None)

    # ---- records ----

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        match = on(method, path)
        with self._lock:
            return [s for s in self.seen if match(s.method, s.path)]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.requests(method, path))

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    # ---- internals (called from handler threads) ----

    def _take(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if not rule.left():
                    continue
                if rule.match is not None and not rule.match(method, path):
                    continue
                if rule.body is not None and not rule.body(body):
                    continue
                rule.used += 1
                return rule.fault
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _track(self, conn: socket.socket, thread: threading.Thread, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections[conn] = thread
            else:
                self._connections.pop(conn, None)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        own = self.origin.encode()
        up = self._up_origin.encode()
        sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        sent["Host"] = f"{self._up_host}:{self._up_port}"
        payload = body.replace(own, up) if body else b""
        if payload or method in ("POST", "PUT", "PATCH"):
            sent["Content-Length"] = str(len(payload))
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=self.upstream_timeout)
        try:
            conn.request(method, path, body=payload or None, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            out_headers = {k: v for k, v in resp.getheaders() if k.lower() not in _NOT_FROM_UPSTREAM}
            status, reason = resp.status, resp.reason
        except (OSError, http.client.HTTPException) as exc:
            text = f"upstream unreachable ({type(exc).__name__})"
            return _Answer(502, "Bad Gateway", {"Content-Type": "application/fhir+json"},
                           orjson.dumps(_outcome(502, text)))  # fmt: skip
        finally:
            conn.close()
        if "/.well-known/" not in path:
            data = data.replace(up, own)
            for name in list(out_headers):
                if name.lower() in ("location", "content-location"):
                    out_headers[name] = out_headers[name].replace(self._up_origin, self.origin)
        return _Answer(status, reason, out_headers, data)


@contextlib.contextmanager
def fault_proxy_for(upstream_url: str, **kwargs: Any) -> Iterator[FaultProxy]:
    """``with fault_proxy_for(url) as proxy:`` -- the same as ``with FaultProxy(url) as proxy:``."""
    proxy = FaultProxy(upstream_url, **kwargs)
    with proxy:
        yield proxy
