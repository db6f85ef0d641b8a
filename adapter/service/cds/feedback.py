"""CDS Hooks feedback, kept durably, and the override report a pharmacy and therapeutics committee reviews.

The store is one SQLite file (``feedback_db`` in the service configuration; WAL; created with mode 600,
because a ``userComment`` may hold patient data) with two tables:

- ``cards``: every card the service issued (uuid, service, hook, protocol variant, kind = the finding id of
  the card's ``source.topic``, indicator, hookInstance, issuing EHR, time, its suggestions' uuids), so
  that feedback can be told by kind;
- ``feedback``: every feedback item as received (card uuid, outcome, accepted suggestion uuids, override
  reason Coding, user comment, outcome time, time received, EHR). The same item sent twice (a client's
  retry; the specification allows feedback for one card more than once) is stored once.

Without ``feedback_db`` the service keeps feedback in a private in-memory database (lost at restart) and
says so in its start-up log.

``ino-adapter feedback-report [--db FILE] [--since DATE] [--format text|json]`` reads the file (read-only)
and prints, per card kind: cards issued, cards with feedback, accepted, overridden (a card's latest
outcome counts), the override rate (overridden / with feedback) and the override reasons with their
counts. Comments are never printed.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from adapter.errors import InputError
from adapter.service.errors import BadRequestError
from adapter.service.sqlite import ThreadLocalSqlite

OUTCOMES: Final = frozenset({"accepted", "overridden"})
MAX_ITEMS: Final = 200
MAX_COMMENT: Final = 2000
UNKNOWN_KIND: Final = "(unknown card)"
NO_REASON: Final = "(no reason given)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cards (
    uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    protocol TEXT NOT NULL,
    kind TEXT NOT NULL,
    indicator TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    issuer TEXT,
    issued_at TEXT NOT NULL,
    suggestions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cards_issued ON cards (issued_at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    accepted TEXT NOT NULL,
    reason_system TEXT,
    reason_code TEXT,
    reason_display TEXT,
    user_comment TEXT,
    outcome_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    issuer TEXT,
    UNIQUE (card_uuid, outcome, outcome_at, accepted, reason_system, reason_code)
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card_uuid);
"""


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    card: str
    outcome: str
    accepted: tuple[str, ...]
    reason_system: str | None
    reason_code: str | None
    reason_display: str | None
    comment: str | None
    outcome_at: str  # UTC, as sent


def _utc_stamp(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequestError(f"{where}.outcomeTimestamp: required (RFC 3339, UTC)")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{where}.outcomeTimestamp: not an RFC 3339 date-time") from None
    if when.utcoffset() != timedelta(0):
        raise BadRequestError(f"{where}.outcomeTimestamp: must be in UTC (Z)")
    return value


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """The request's feedback items, checked against CDS Hooks 2.0 §Feedback (BadRequest otherwise)."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise BadRequestError("the body must be an object with a 'feedback' array")
    items = body["feedback"]
    if not items:
        raise BadRequestError("feedback: the array is empty")
    if len(items) > MAX_ITEMS:
        raise BadRequestError(f"feedback: at most {MAX_ITEMS} items per request")
    out: list[FeedbackItem] = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise BadRequestError(f"{where}: must be an object")
        card = item.get("card")
        if not isinstance(card, str) or not card or len(card) > 100:
            raise BadRequestError(f"{where}.card: the card's uuid is required")
        outcome = item.get("outcome")
        if outcome not in OUTCOMES:
            raise BadRequestError(f"{where}.outcome: must be 'accepted' or 'overridden'")
        raw = item.get("acceptedSuggestions")
        accepted: list[str] = []
        if raw is not None:
            if not isinstance(raw, list) or not all(
                isinstance(s, dict) and isinstance(s.get("id"), str) and s["id"] for s in raw
            ):
                raise BadRequestError(f"{where}.acceptedSuggestions: an array of objects with an 'id'")
            accepted = sorted({s["id"][:100] for s in raw})
        if outcome == "accepted" and not accepted:
            raise BadRequestError(f"{where}.acceptedSuggestions: required for an accepted outcome")
        system = code = display = comment = None
        reason = item.get("overrideReason")
        if reason is not None:
            if not isinstance(reason, dict):
                raise BadRequestError(f"{where}.overrideReason: must be an object")
            coding = reason.get("reason")
            if coding is not None:
                if (
                    not isinstance(coding, dict)
                    or not isinstance(coding.get("code"), str)
                    or not isinstance(coding.get("system"), str)
                ):
                    raise BadRequestError(f"{where}.overrideReason.reason: a Coding with system and code")
                system, code = coding["system"][:300], coding["code"][:100]
                display = str(coding["display"])[:300] if isinstance(coding.get("display"), str) else None
            note = reason.get("userComment")
            if note is not None:
                if not isinstance(note, str):
                    raise BadRequestError(f"{where}.overrideReason.userComment: must be a string")
                comment = note[:MAX_COMMENT]
        out.append(
            FeedbackItem(
                card,
                str(outcome),
                tuple(accepted),
                system,
                code,
                display,
                comment,
                _utc_stamp(item.get("outcomeTimestamp"), where),
            )
        )
    return out


class FeedbackStore:
    """The SQLite store (``path`` None: a private in-memory database). A connection per thread."""

    def __init__(self, path: str | Path | None) -> None:
        if path is None:
            self.path = f"file:ino-feedback-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._uri = True
        else:
            self.path = str(path)
            self._uri = False
            if not Path(self.path).exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        # one writer per process (SQLite's lock serialises the workers)
        self.db = ThreadLocalSqlite(self.path, uri=self._uri, serialise_writes=True)
        self._keep = self.db.conn()  # an in-memory database lives as long as one connection does
        self._keep.executescript(_SCHEMA)  # executescript commits by itself

    def record_cards(
        self,
        cards: Sequence[Mapping[str, Any]],
        *,
        service_id: str,
        hook: str,
        protocol: str,
        hook_instance: str,
        issuer: str | None,
        issued_at: str,
    ) -> None:
        """Remember the cards issued (a retried call's same cards are kept once)."""
        rows = []
        for card in cards:
            topic = (card.get("source") or {}).get("topic") or {}
            rows.append(
                (
                    str(card["uuid"]),
                    service_id,
                    hook,
                    protocol,
                    str(topic.get("code") or UNKNOWN_KIND),
                    str(card.get("indicator")),
                    hook_instance,
                    issuer,
                    issued_at,
                    orjson.dumps([s.get("uuid") for s in card.get("suggestions") or []]).decode(),
                )
            )
        if not rows:
            return
        with self.db.tx() as db:
            db.executemany("INSERT OR IGNORE INTO cards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def record_feedback(
        self, items: Sequence[FeedbackItem], *, service_id: str, issuer: str | None, received_at: str
    ) -> int:
        """Store the items (a repeated item once); returns how many were new."""
        new = 0
        with self.db.tx() as db:
            for it in items:
                cur = db.execute(
                    "INSERT OR IGNORE INTO feedback (service_id, card_uuid, outcome, accepted, "
                    "reason_system, reason_code, reason_display, user_comment, outcome_at, received_at, "
                    "issuer) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        service_id,
                        it.card,
                        it.outcome,
                        orjson.dumps(list(it.accepted)).decode(),
                        it.reason_system,
                        it.reason_code,
                        it.reason_display,
                        it.comment,
                        it.outcome_at,
                        received_at,
                        issuer,
                    ),
                )
                new += cur.rowcount
        return new

    def close(self) -> None:
        self._keep.close()


# -- the report -------------------------------------------------------------------------------------------
def _open_read_only(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise InputError(str(path), "no such feedback database")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        conn.execute("SELECT 1 FROM cards LIMIT 1").fetchall()
        conn.execute("SELECT 1 FROM feedback LIMIT 1").fetchall()
    except sqlite3.Error:
        raise InputError(str(path), "not a feedback database (cards and feedback tables)") from None
    return conn


def _reason_label(system: str | None, code: str | None, display: str | None) -> str:
    from adapter.service.cds.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM

    if code is None:
        return NO_REASON
    if display:
        return display
    if system == OVERRIDE_SYSTEM and code in OVERRIDE_REASONS:
        return OVERRIDE_REASONS[code]
    return code


def build_report(path: str | Path, since: date | None = None) -> dict[str, Any]:
    """Override rates per card kind and reason (JSON-ready). ``since``: cards issued (and, for feedback
    on cards the file does not know, outcomes) on or after that day."""
    from adapter.service.cds.cards import title_of

    floor = since.isoformat() if since else ""
    conn = _open_read_only(path)
    try:
        issued: dict[str, int] = {}
        for kind, count in conn.execute(
            "SELECT kind, COUNT(*) FROM cards WHERE issued_at >= ? GROUP BY kind", (floor,)
        ):
            issued[str(kind)] = int(count)
        # every card's latest outcome (by its time, then arrival)
        rows = conn.execute(
            "SELECT f.card_uuid, COALESCE(c.kind, ?), f.outcome, f.reason_system, f.reason_code, "
            "f.reason_display FROM feedback f LEFT JOIN cards c ON c.uuid = f.card_uuid "
            "WHERE (c.uuid IS NOT NULL AND c.issued_at >= ?) OR (c.uuid IS NULL AND f.outcome_at >= ?) "
            "ORDER BY f.card_uuid, f.outcome_at, f.id",
            (UNKNOWN_KIND, floor, floor),
        ).fetchall()
    finally:
        conn.close()
    latest: dict[str, tuple[str, str, str | None, str | None, str | None]] = {}
    for card, kind, outcome, system, code, display in rows:
        latest[str(card)] = (str(kind), str(outcome), system, code, display)
    kinds: dict[str, dict[str, Any]] = {}

    def entry(kind: str) -> dict[str, Any]:
        return kinds.setdefault(
            kind,
            {
                "kind": kind,
                "title": title_of(kind) if kind != UNKNOWN_KIND else UNKNOWN_KIND,
                "issued": issued.get(kind, 0),
                "with_feedback": 0,
                "accepted": 0,
                "overridden": 0,
                "override_rate": None,
                "reasons": {},
            },
        )

    for kind in issued:
        entry(kind)
    for kind, outcome, system, code, display in latest.values():
        e = entry(kind)
        e["with_feedback"] += 1
        e[outcome] += 1
        if outcome == "overridden":
            key = (system or "", code or "")
            r = e["reasons"].setdefault(
                key,
                {"system": system, "code": code, "display": _reason_label(system, code, display), "count": 0},
            )
            r["count"] += 1
    out = []
    for e in sorted(kinds.values(), key=lambda k: (-k["issued"], k["kind"])):
        if e["with_feedback"]:
            e["override_rate"] = round(e["overridden"] / e["with_feedback"], 4)
        e["reasons"] = sorted(e["reasons"].values(), key=lambda r: (-r["count"], r["display"]))
        out.append(e)
    total = {key: sum(e[key] for e in out) for key in ("issued", "with_feedback", "accepted", "overridden")}
    total["override_rate"] = (
        round(total["overridden"] / total["with_feedback"], 4) if total["with_feedback"] else None
    )
    return {"since": since.isoformat() if since else None, "kinds": out, "total": total}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def report_text(report: Mapping[str, Any]) -> str:
    from adapter.safe_text import clean

    head = "CDS Hooks card feedback" + (f" since {report['since']}" if report.get("since") else "")
    lines = [head, ""]
    widths = (30, 8, 10, 10, 12, 10)
    names = ("card kind", "issued", "feedback", "accepted", "overridden", "override")
    lines.append(
        "".join(
            n.ljust(w) if i == 0 else n.rjust(w) for i, (n, w) in enumerate(zip(names, widths, strict=True))
        )
    )
    for e in [*report["kinds"], {"kind": "total", **report["total"], "reasons": []}]:
        cells = (
            clean(e["kind"])[:29],
            str(e["issued"]),
            str(e["with_feedback"]),
            str(e["accepted"]),
            str(e["overridden"]),
            _rate(e["override_rate"]),
        )
        lines.append(
            "".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
        for r in e["reasons"]:
            share = r["count"] / e["overridden"] if e["overridden"] else 0
            lines.append(f"    overridden: {clean(r['display'])[:70]} ({r['count']}, {share * 100:.0f}%)")
    return "\n".join(lines)
