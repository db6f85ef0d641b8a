"""FHIR R4 adapter for the inotuzumab ozogamicin protocol.

The package is a pure core (``adapter.mapping``, ``adapter.eligibility``) with I/O at
the edges (``adapter.input`` reads files; ``cli.py`` is the command line).
"""

__version__ = "0.5.0"

#: Version of the evaluation JSON contract (see docs/contract.md).
CONTRACT_VERSION = "1"
