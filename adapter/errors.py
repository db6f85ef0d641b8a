"""The adapter's error types and the exit codes the CLI maps them to (once, in cli.py)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. 0 means evaluated, whatever the clinical decision."""

    OK = 0
    PATIENTS_FAILED = 1  # sync: some patients failed (each reported with its reason); the others were done
    USAGE = 1  # alias of 1, kept for compatibility (click reports usage errors with 2; see cli.py)
    BAD_INPUT = 2  # unusable input: not JSON, not FHIR, unknown resourceType, no Patient ...; unsafe --out
    BAD_MAPPINGS = 3  # a --mappings file or a shipped table is malformed
    ORDER_REJECTED = 4  # check-order --fail-on: the order's verdict reached the given severity
    FHIR_SERVER = 5  # a FHIR server refused a request, answered with an error, or could not be reached
    STOPPED = 143  # sync: stopped by SIGTERM after finishing the patients in flight; the next run resumes
    INTERNAL = 70  # a bug: reported without a traceback unless --debug


class AdapterError(Exception):
    """A fatal, expected error with a one-line message for the user."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(AdapterError):
    """Input that cannot be used at all. The message names the file and the fault."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, source: str, fault: str) -> None:
        super().__init__(f"{source}: {fault}")
        self.source = source
        self.fault = fault


class MappingTableError(AdapterError):
    """A mapping or protocol table that does not follow its documented format."""

    exit_code = ExitCode.BAD_MAPPINGS


class OutputError(AdapterError):
    """An output folder that cannot be written safely (outside ``--out``, or another patient's)."""

    exit_code = ExitCode.BAD_INPUT
