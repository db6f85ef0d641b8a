"""Progress of a screening stage on stderr: a tqdm bar (rate and ETA) on a terminal, else plain lines
(at most one every few seconds, and at the end), or nothing."""

from __future__ import annotations

import sys
import time
from typing import Any, Literal, TextIO

ProgressMode = Literal["auto", "bar", "lines", "none"]
LINE_EVERY = 5.0  # seconds between plain progress lines


def _size(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:,.0f} {unit}"
    for suffix in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or suffix == "TB":
            return f"{n:,.1f} {suffix}" if suffix != "B" else f"{n:,.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """``with Progress("pass 2", total, "B", mode) as p: p.update(n)``."""

    def __init__(
        self,
        desc: str,
        total: float,
        unit: str = "B",
        mode: ProgressMode = "auto",
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = mode
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0.0
        self.started = self.last = time.monotonic()
        self.bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1000,
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def update(self, n: float) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self.last >= LINE_EVERY:
            self._line()

    def _line(self, final: bool = False) -> None:
        self.last = now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        pct = f"{100 * self.done / self.total:.0f}%" if self.total else "100%"
        if final:
            tail = f"done in {elapsed:.1f} s"
        elif rate > 0 and self.total:
            tail = f"ETA {max(0.0, (self.total - self.done) / rate):.0f} s"
        else:
            tail = "ETA ?"
        self.stream.write(
            f"ino-adapter screen: {self.desc}: {pct} ({_size(self.done, self.unit)} of "
            f"{_size(self.total, self.unit)}), {_size(rate, self.unit)}/s, {tail}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.total:
            self._line(final=True)
            self.mode = "none"
