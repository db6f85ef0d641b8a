"""Write-back: turn an evaluation into FHIR R4 resources for the hospital's record.

Pure builders (``resources``, ``bundle``) make a transaction Bundle from an evaluation, the rendered
summaries and what is already known to exist; ``apply`` (the only module here with I/O) reads the
server's current state through ``adapter.fhir.client`` and posts the Bundle. See docs/writeback.md.
"""
