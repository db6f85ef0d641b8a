"""From mg/m² and BSA to what the pharmacy prepares: mg, vials and mL to withdraw.

Rounding (docs/dosing.md): the dose is mg/m² × BSA (BSA already rounded to 0.01 m²), rounded
half-up to 0.01 mg; the volume to withdraw is that rounded dose ÷ 0.25 mg/mL, rounded half-up to
0.01 mL, so the mg on the label and the mL drawn agree. Vials are whole single-dose vials of 0.9 mg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from adapter.dosing.spec import Product


def _q(decimals: int) -> Decimal:
    return Decimal(1).scaleb(-decimals)


@dataclass(frozen=True, slots=True)
class PreparedDose:
    mg: Decimal
    vials: int
    volume_ml: Decimal


def prepare(mg_per_m2: Decimal, bsa_m2: Decimal, product: Product) -> PreparedDose:
    mg = (mg_per_m2 * bsa_m2).quantize(_q(product.mg_decimals), rounding=ROUND_HALF_UP)
    vials = max(1, math.ceil(mg / product.vial_mg))
    volume = (mg / product.concentration_mg_per_ml).quantize(_q(product.ml_decimals), rounding=ROUND_HALF_UP)
    return PreparedDose(mg, vials, volume)


def preparation_json(product: Product) -> dict[str, object]:
    return {
        "vial_mg": float(product.vial_mg),
        "reconstitute_with_ml": float(product.reconstitution_ml),
        "reconstituted_mg_per_ml": float(product.concentration_mg_per_ml),
        "diluent": product.diluent,
        "diluent_ml": product.diluent_ml,
        "infusion_minutes": product.infusion_minutes,
        "protect_from_light": product.protect_from_light,
        "max_hours_reconstitution_to_dilution": product.max_hours_reconstitution_to_dilution,
        "max_hours_reconstitution_to_end_of_infusion": product.max_hours_reconstitution_to_end,
        "rounding": (
            f"dose to {product.mg_decimals} decimals of mg and volume to {product.ml_decimals} "
            f"decimals of mL, {product.rounding}"
        ),
        "source": product.source,
        "infusion_source": product.infusion_source,
    }
