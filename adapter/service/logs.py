"""Structured logs: one JSON object per line on stderr, each with the request id of the request it belongs to.

No patient data ever reaches a log: no names, MRNs, birth dates, resource bodies or resource ids. A patient
is named by :func:`adapter.safe_text.patient_tag`; a request path by its shape
(``/fhir/Patient/[id]/$evaluate``); query strings are never logged. Tokens are never logged (a bearer
token by nothing at all; a JWT by its issuer). Field values are strings, numbers or booleans; a string
is made single-line by ``clean``.

    deps.log.info("evaluated", patient=patient_tag(ref), action="give-dose", ms=12.3)
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from typing import Any, Final

import orjson

from adapter.safe_text import clean

#: The current request's id (set by the app's middleware; "-" outside a request).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

LOGGER_NAME: Final = "adapter.service"
_FIELD_LIMIT: Final = 300
_OPAQUE_CHARS: Final = 40
_ID_SEGMENT = re.compile(r"^(Patient|Encounter|MedicationRequest|[A-Z][A-Za-z]+)$")


def path_shape(path: str) -> str:
    """A request path with the ids after resource types replaced (``/fhir/Patient/[id]/$evaluate``), the
    credential of a CDS summary link (``.../summary/[token]``) and any long opaque segment hidden."""
    parts = path.split("/")
    out: list[str] = []
    for i, part in enumerate(parts):
        before = parts[i - 1] if i > 0 else ""
        if _ID_SEGMENT.match(before) and part and not part.startswith("$"):
            out.append("[id]")
        elif before == "summary" and part:
            out.append("[token]")
        elif len(part) >= _OPAQUE_CHARS:
            out.append("[opaque]")
        else:
            out.append(clean(part)[:64])
    return "/".join(out)[:200]


def _value(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float):
        return v
    return clean(str(v))[:_FIELD_LIMIT]


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", "request_id", **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": clean(record.getMessage())[:_FIELD_LIMIT],
            "request_id": request_id_var.get(),
        }
        if isinstance(fields, dict):
            for k, v in fields.items():
                if k not in out:
                    out[k] = _value(v)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__  # the type only: a message may carry data
        return orjson.dumps(out).decode()


class ServiceLog:
    """The structured logger every route uses: ``log.info(event, **fields)``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the service's loggers (adapter.*) and uvicorn's error log. Uvicorn's access
    log is off: it prints paths with ids and query strings; the app logs each request itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name("ino-adapter-service")
    numeric = getattr(logging, level.upper(), logging.INFO)
    for name in ("adapter", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != "ino-adapter-service"]
        logger.addHandler(handler)
        logger.setLevel(numeric)
        logger.propagate = False
    logging.getLogger("adapter.fhir").setLevel(max(numeric, logging.WARNING))
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True
