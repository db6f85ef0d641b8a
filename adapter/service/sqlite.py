"""One SQLite database shared by the service's threads (and its worker processes): a connection per
thread, WAL for a file, and write transactions that take SQLite's write lock at their start
(``BEGIN IMMEDIATE``). Used by the idempotency/JWT state (store.py) and the CDS feedback store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext


class ThreadLocalSqlite:
    """``path`` a file name, or with ``uri`` an SQLite URI (e.g. a shared in-memory database, where WAL
    does not apply). ``serialise_writes`` also serialises this process's writers on a lock (they then never
    wait on SQLite's busy timeout for each other)."""

    def __init__(self, path: str, *, uri: bool = False, serialise_writes: bool = False) -> None:
        self.path = path
        self.uri = uri
        self._local = threading.local()
        self._write: threading.Lock | None = threading.Lock() if serialise_writes else None

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False, uri=self.uri
            )
            if not self.uri:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection: committed at the end, rolled back on error."""
        conn = self.conn()
        with self._write if self._write is not None else nullcontext():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
