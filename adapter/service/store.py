"""The service's small pieces of state: the idempotency store (answers kept by request key, so that a retried
request gets the same answer without writing twice) and the JWT replay cache (``jti`` values seen).

Both exist in memory (one process; bounded) and in SQLite (``state_db``: shared by the workers, survives a
restart: durable enough for a client's retries). Both are bounded: the idempotency store forgets answers
after ``ttl`` seconds and keeps at most ``max_entries`` (the oldest go first); the replay cache remembers a
``jti`` until its token expires and refuses new tokens (:class:`ReplayCacheFull`) rather than forget one
that could still be replayed.

Kept answers may hold patient data (an evaluation): the SQLite file belongs on storage protected like the
FHIR server's, and is never logged.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from adapter.service.sqlite import ThreadLocalSqlite


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """An answer as sent: status, body, media type, extra headers, and the fingerprint of the request it
    answered (a key reused for a different request is refused, not answered with the other's result)."""

    status: int
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()
    fingerprint: str = ""


class IdempotencyStore(Protocol):
    def get(self, key: str) -> StoredResponse | None:
        """The answer kept under ``key`` (None: none, or only a claim)."""
        ...

    def put(self, key: str, response: StoredResponse) -> None:
        """Keep ``response`` under ``key`` (replacing a claim)."""
        ...

    def claim(self, key: str, hold_s: float) -> bool:
        """Mark ``key`` as being computed for ``hold_s`` seconds; False when it is already claimed (by a
        request still in flight) or answered."""
        ...

    def release(self, key: str) -> None:
        """Drop an unanswered claim (the request failed transiently: a retry computes again)."""
        ...


class ReplayCacheFull(Exception):  # noqa: N818 - a condition
    """Every remembered ``jti`` is still valid: a new token cannot be checked for replay."""


class ReplayCache(Protocol):
    def seen(self, issuer: str, jti: str, expires: float) -> bool:
        """True when ``(issuer, jti)`` was seen before; else remember it until ``expires`` (UNIX seconds)."""
        ...


# ---------------------------------------------------------------------------------------------------------
# in memory


@dataclass(slots=True)
class _Entry:
    expires: float
    response: StoredResponse | None  # None: claimed, not answered yet


@dataclass
class MemoryIdempotencyStore:
    ttl: float = 86_400.0
    max_entries: int = 10_000
    clock: Callable[[], float] = time.time
    _items: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _purge(self, now: float) -> None:
        for key in [k for k, e in self._items.items() if e.expires <= now]:
            del self._items[key]
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, key: str) -> StoredResponse | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None or entry.expires <= self.clock():
                return None
            return entry.response

    def put(self, key: str, response: StoredResponse) -> None:
        with self._lock:
            now = self.clock()
            self._items.pop(key, None)
            self._items[key] = _Entry(now + self.ttl, response)
            self._purge(now)

    def claim(self, key: str, hold_s: float) -> bool:
        with self._lock:
            now = self.clock()
            entry = self._items.get(key)
            if entry is not None and entry.expires > now:
                return False
            self._items[key] = _Entry(now + hold_s, None)
            self._purge(now)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry.response is None:
                del self._items[key]


@dataclass
class MemoryReplayCache:
    max_entries: int = 100_000
    clock: Callable[[], float] = time.time
    _items: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, issuer: str, jti: str, expires: float) -> bool:
        with self._lock:
            now = self.clock()
            key = (issuer, jti)
            until = self._items.get(key)
            if until is not None and until > now:
                return True
            if len(self._items) >= self.max_entries:
                for k in [k for k, t in self._items.items() if t <= now]:
                    del self._items[k]
                if len(self._items) >= self.max_entries:
                    raise ReplayCacheFull
            self._items[key] = expires
            return False


# ---------------------------------------------------------------------------------------------------------
# SQLite (shared by the workers)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    status INTEGER,
    media_type TEXT,
    headers TEXT,
    body BLOB,
    fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
CREATE TABLE IF NOT EXISTS jti (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX IF NOT EXISTS jti_expires ON jti (expires);
"""


class SqliteState:
    """One SQLite file (WAL) holding both tables; a connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = ThreadLocalSqlite(self.path)
        self.db.conn().executescript(_SCHEMA)

    def check(self) -> None:
        """Raise when the file cannot be used (for /ready)."""
        self.db.conn().execute("SELECT 1 FROM idempotency LIMIT 1").fetchall()


@dataclass
class SqliteIdempotencyStore:
    state: SqliteState
    ttl: float = 86_400.0
    max_entries: int = 10_000
    clock: Callable[[], float] = time.time

    def get(self, key: str) -> StoredResponse | None:
        row = (
            self.state.db.conn()
            .execute(
                "SELECT status, body, media_type, headers, fingerprint FROM idempotency "
                "WHERE key = ? AND expires > ? AND status IS NOT NULL",
                (key, self.clock()),
            )
            .fetchone()
        )
        if row is None:
            return None
        headers = tuple((str(k), str(v)) for k, v in orjson.loads(row[3]))
        return StoredResponse(int(row[0]), bytes(row[1]), str(row[2]), headers, str(row[4]))

    def put(self, key: str, response: StoredResponse) -> None:
        now = self.clock()
        with self.state.db.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO idempotency "
                "(key, created, expires, status, media_type, headers, body, fingerprint) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    now,
                    now + self.ttl,
                    response.status,
                    response.media_type,
                    orjson.dumps([list(h) for h in response.headers]).decode(),
                    response.body,
                    response.fingerprint,
                ),
            )
            db.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
            db.execute(
                "DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency ORDER BY created DESC "
                "LIMIT -1 OFFSET ?)",
                (self.max_entries,),
            )

    def claim(self, key: str, hold_s: float) -> bool:
        now = self.clock()
        with self.state.db.tx() as db:
            row = db.execute("SELECT expires FROM idempotency WHERE key = ?", (key,)).fetchone()
            if row is not None and float(row[0]) > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO idempotency (key, created, expires) VALUES (?, ?, ?)",
                (key, now, now + hold_s),
            )
            return True

    def release(self, key: str) -> None:
        with self.state.db.tx() as db:
            db.execute("DELETE FROM idempotency WHERE key = ? AND status IS NULL", (key,))


@dataclass
class SqliteReplayCache:
    state: SqliteState
    max_entries: int = 100_000
    clock: Callable[[], float] = time.time

    def seen(self, issuer: str, jti: str, expires: float) -> bool:
        now = self.clock()
        with self.state.db.tx() as db:
            row = db.execute("SELECT expires FROM jti WHERE issuer = ? AND jti = ?", (issuer, jti)).fetchone()
            if row is not None and float(row[0]) > now:
                return True
            (count,) = db.execute("SELECT COUNT(*) FROM jti").fetchone()
            if count >= self.max_entries:
                db.execute("DELETE FROM jti WHERE expires <= ?", (now,))
                (count,) = db.execute("SELECT COUNT(*) FROM jti").fetchone()
                if count >= self.max_entries:
                    raise ReplayCacheFull
            db.execute(
                "INSERT OR REPLACE INTO jti (issuer, jti, expires) VALUES (?, ?, ?)", (issuer, jti, expires)
            )
            return False
