"""Input edge: reading FHIR R4 JSON from files, directories and Bulk Data NDJSON."""
