"""Body surface area from weight and height (Mosteller by default, DuBois selectable)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

Formula = Literal["mosteller", "dubois"]
FORMULAS: tuple[Formula, ...] = ("mosteller", "dubois")
M2 = Decimal("0.01")


def bsa_m2(weight_kg: float, height_cm: float, formula: Formula = "mosteller") -> Decimal:
    """BSA in m², rounded half-up to 0.01 m².

    Mosteller: sqrt(height[cm] × weight[kg] / 3600).
    DuBois & DuBois: 0.007184 × weight[kg]^0.425 × height[cm]^0.725.
    """
    if weight_kg <= 0 or height_cm <= 0 or not math.isfinite(weight_kg) or not math.isfinite(height_cm):
        raise ValueError("weight and height must be positive")
    if formula == "mosteller":
        value = math.sqrt(height_cm * weight_kg / 3600.0)
    elif formula == "dubois":
        value = 0.007184 * weight_kg**0.425 * height_cm**0.725
    else:
        raise ValueError(f"unknown BSA formula {formula!r}")
    # repr() keeps the shortest decimal that round-trips, so 1.865 stays 1.865 (not 1.86499...)
    return Decimal(repr(value)).quantize(M2, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class BsaResult:
    m2: Decimal
    formula: Formula
    weight_kg: float
    weight_ref: str
    weight_date: str
    height_cm: float
    height_ref: str
    height_date: str

    def as_json(self) -> dict[str, object]:
        return {
            "weight_kg": self.weight_kg,
            "weight": self.weight_ref,
            "weight_date": self.weight_date,
            "height_cm": self.height_cm,
            "height": self.height_ref,
            "height_date": self.height_date,
        }
