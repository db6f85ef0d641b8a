"""CDS Hooks 2.0 services for inotuzumab ozogamicin orders (docs/cds-hooks.md).

- :mod:`.discovery`: the services (``order-select`` and ``order-sign``, per protocol variant) and the
  prefetch templates derived from the mapping tables and the variant files;
- :mod:`.prefetch`: the patient's record from the request's prefetch, with what is missing fetched from the
  EHR's ``fhirServer`` (412 when it cannot be);
- :mod:`.hook`: one hook call: the per-patient evaluation unit and check-order on each draft inotuzumab order;
- :mod:`.cards`: findings to cards, suggestions (the calculated dose, the premedication), override reasons;
- :mod:`.feedback`: the durable feedback store (SQLite) and the override report;
- :mod:`.routes`: the FastAPI router (``build_router(deps)``);
- :mod:`.example`: a request and a JWT as an EHR would send them, to try the services by hand.
"""
