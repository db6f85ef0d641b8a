"""Pure mapping from FHIR dicts to the protocol's domain, driven by the tables in mappings/."""
