"""Build what an EHR would send, to try the CDS services by hand (README §CDS Hooks):

    python -m adapter.service.cds.example RECORD [--dose-mg MG] [--hook order-sign] > request.json
    python -m adapter.service.cds.example --jwt --key KEY.pem --kid KID --iss ISS \\
        [--aud http://127.0.0.1:8080/cds-services/ino-order-sign-nhs-ta514]

The first prints a hook request: ``context.draftOrders`` with one draft inotuzumab ozogamicin order for today
(``--dose-mg``) for the Patient in RECORD (a Bundle or a resource file), and every prefetch key filled from
RECORD as an EHR fills the service's templates (by resource type; Observations by the templates' codes, the
labs from the date floor on). The second prints a CDS Hooks JWT signed with an EC P-384 (ES384) or RSA
(RS384) private key, valid five minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from adapter.input.reader import read_input
from adapter.mapping.fhir_values import codings
from adapter.mapping.tables import load_tables
from adapter.service.cds.discovery import prefetch_specs


def request_body(path: str, dose_mg: float, hook: str, protocol: str) -> dict[str, Any]:
    resources = [r.resource for r in read_input(path).resources]
    patient = next(r for r in resources if r.get("resourceType") == "Patient")
    pid = str(patient["id"])
    today = datetime.now(UTC).date()
    prefetch: dict[str, Any] = {}
    for spec in prefetch_specs(protocol, load_tables(())):
        if spec.read:
            prefetch[spec.key] = patient
            continue
        floor = (today - timedelta(days=spec.floor_days)).isoformat() if spec.floor_days is not None else ""
        found = [
            r
            for r in resources
            if r.get("resourceType") == spec.resource_type
            and (not spec.codes or {f"{s}|{c}" for s, c in codings(r.get("code"))} & set(spec.codes))
            and str(r.get("effectiveDateTime") or r.get("issued") or "9")[:10] >= floor
        ]
        prefetch[spec.key] = (
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in found]}
            if found
            else None  # the specification's "no data"
        )
    order = {
        "resourceType": "MedicationRequest",
        "id": "draft-ino-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {"system": "http://www.whocc.no/atc", "code": "L01FB01", "display": "inotuzumab ozogamicin"}
            ]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": today.isoformat(),
        "dosageInstruction": [
            {
                "timing": {"event": [today.isoformat()]},
                "doseAndRate": [
                    {
                        "doseQuantity": {
                            "value": dose_mg,
                            "unit": "mg",
                            "system": "http://unitsofmeasure.org",
                            "code": "mg",
                        }
                    }
                ],
            }
        ],
    }
    context: dict[str, Any] = {"userId": "PractitionerRole/123", "patientId": pid}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/draft-ino-1"]
    context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": order}]}
    return {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": context, "prefetch": prefetch}


def signed_jwt(key_file: str, kid: str, iss: str, aud: str) -> str:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(key_file, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    alg = "ES384" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS384"
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adapter.service.cds.example", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("record", nargs="?", help="the patient's record (a Bundle or a resource file)")
    p.add_argument("--dose-mg", type=float, default=1.0)
    p.add_argument("--hook", choices=["order-sign", "order-select"], default="order-sign")
    p.add_argument("--protocol", default="nhs-ta514")
    p.add_argument("--jwt", action="store_true", help="print a signed JWT instead")
    p.add_argument("--key")
    p.add_argument("--kid")
    p.add_argument("--iss")
    p.add_argument("--aud", default="http://127.0.0.1:8080/cds-services/ino-order-sign-nhs-ta514")
    args = p.parse_args(argv)
    if args.jwt:
        if not (args.key and args.kid and args.iss):
            p.error("--jwt needs --key, --kid and --iss")
        print(signed_jwt(args.key, args.kid, args.iss, args.aud))
        return 0
    if not args.record:
        p.error("give RECORD (or --jwt)")
    body = request_body(args.record, args.dose_mg, args.hook, args.protocol)
    sys.stdout.buffer.write(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
