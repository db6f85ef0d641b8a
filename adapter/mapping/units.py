"""Unit normalisation through UCUM.

Library choice: ucumvert (PyPI). It parses UCUM with a grammar generated from the UCUM
specification and converts through pint, in pure Python. The alternative, ucumate, wraps the
Java ucumate-core and needs a JVM at run time, which is too heavy for a CLI and a service.
Conversion factors are cached per (from, to, molar mass), so the registry (about 0.6 s to build)
is built at most once per process and only when a unit differs from the canonical one.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

UCUM_SYSTEM = "http://unitsofmeasure.org"


class UnitError(ValueError):
    """A unit that is unknown, or that cannot be converted to the wanted unit."""


_lock = threading.Lock()
_registry: Any = None


def _ureg() -> Any:
    global _registry  # noqa: PLW0603 - a lazily built, process-wide registry
    with _lock:
        if _registry is None:
            from ucumvert import PintUcumRegistry  # imported lazily: ~0.2 s import, ~0.6 s build

            _registry = PintUcumRegistry()
        return _registry


def is_valid_ucum(unit: str) -> bool:
    try:
        _parse(unit)
    except UnitError:
        return False
    return True


@functools.lru_cache(maxsize=512)
def _parse(unit: str) -> Any:
    from ucumvert import InvalidUcumError

    try:
        return _ureg().from_ucum(unit)
    except InvalidUcumError:
        raise UnitError(f"{unit!r} is not a valid UCUM unit") from None
    except Exception as exc:  # the parser raises lark errors for some inputs
        raise UnitError(f"{unit!r} is not a valid UCUM unit ({type(exc).__name__})") from None


def drop_float_noise(x: float) -> float:
    """12 significant digits: drops binary noise (0.0010000000000000002 -> 0.001), so a value
    converted onto a limit (10000 /mm3 = 10 x10*9/L) compares equal to it."""
    return float(f"{x:.12g}")


@functools.lru_cache(maxsize=1024)
def conversion_factor(from_unit: str, to_unit: str, molar_mass: float | None = None) -> float:
    """The factor f with ``value[from_unit] * f == value[to_unit]``.

    With a molar mass (g/mol), substance concentrations (mol/L family) convert to mass
    concentrations (g/L family) and back.
    """
    if from_unit == to_unit:
        return 1.0
    src, dst = _parse(from_unit), _parse(to_unit)
    try:
        return drop_float_noise(float((1 * src).to(dst).magnitude))
    except Exception as direct_error:
        if molar_mass is None:
            raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}") from direct_error
    mol_l, g_l = _parse("mol/L"), _parse("g/L")
    try:
        if (1 * src).is_compatible_with(mol_l):
            return drop_float_noise(
                float((1 * src).to(mol_l).magnitude) * molar_mass * float((1 * g_l).to(dst).magnitude)
            )
        if (1 * src).is_compatible_with(g_l):
            return drop_float_noise(
                float((1 * src).to(g_l).magnitude) / molar_mass * float((1 * mol_l).to(dst).magnitude)
            )
    except Exception:
        pass
    raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}")
