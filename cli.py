"""ino-adapter: the command line. A thin layer: each command calls one library function and
turns the library's errors into one-line messages and exit codes (adapter.errors.ExitCode).

Imports of the library happen inside the commands so that ``ino-adapter --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

VARIANTS = ("fda-label", "nhs-ta514", "es-valtermed", "mdacc-low-dose")
F = TypeVar("F", bound=Callable[..., Any])


def _say(message: str) -> None:
    """One line on stderr. Data in ``message`` (file names, ids) cannot break it or steer the terminal."""
    from adapter.safe_text import clean

    click.echo(f"ino-adapter: {clean(message)}", err=True)


def _fail(message: str, code: int) -> None:
    _say(f"error: {message}")
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Map AdapterError to its exit code and any other exception to 70, without a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from adapter.errors import AdapterError, ExitCode

        try:
            return fn(*args, **kwargs)
        except AdapterError as exc:
            _fail(exc.message, int(exc.exit_code))
        except Exception as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            _fail(
                f"internal error ({type(exc).__name__}); rerun with --debug for details",
                int(ExitCode.INTERNAL),
            )
        return None

    return wrapper  # type: ignore[return-value]


def _now_instant() -> str:
    """The current UTC time as a FHIR instant, to the second."""
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date:
    if value is None:
        return date.today()
    return _iso_date(value)


def _parse_optional_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    return None if value is None else _iso_date(value)


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


# Options shared by the commands (one definition each).
protocol_option = click.option(
    "--protocol", "-p", type=click.Choice(VARIANTS), required=True, help="Protocol variant to apply."
)
mappings_option = click.option(
    "--mappings",
    "mappings",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Site mapping table merged over the shipped tables (repeatable).",
)
no_validate_option = click.option(
    "--no-validate", is_flag=True, help="Skip fhir.resources R4B validation (faster; for trusted input)."
)
bsa_formula_option = click.option(
    "--bsa-formula",
    type=click.Choice(["mosteller", "dubois"]),
    default="mosteller",
    show_default=True,
    help="Body surface area formula for the doses.",
)

site_settings_option = click.option(
    "--site-settings",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    help="YAML site settings for write-back and summaries (intent, id_mode, premedication, "
    "template_dir); see docs/writeback.md.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ino-adapter")
@click.option("--debug", is_flag=True, help="Show tracebacks for internal errors.")
def main(debug: bool) -> None:
    """FHIR R4 adapter for the inotuzumab ozogamicin (Besponsa) protocol in relapsed or
    refractory CD22-positive B-cell precursor ALL."""


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=True, readable=True))
@protocol_option
@click.option("--as-of", callback=_parse_date, metavar="YYYY-MM-DD", help="Evaluation date (default: today).")
@mappings_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "ndjson", "text"]),
    default="json",
    show_default=True,
    help="json: one object (an array for several patients); ndjson: one line per patient; text: readable.",
)
@no_validate_option
@bsa_formula_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, writable=True),
    help="Also write, per patient, OUT/<patient id>_<hash>/<variant>/: evaluation.json, summary.html, "
    "summary.md and bundle.json (the FHIR transaction that writes the result back).",
)
@site_settings_option
@handle_errors
def evaluate(
    input_path: str,
    protocol: str,
    as_of: date,
    mappings: tuple[str, ...],
    fmt: str,
    no_validate: bool,
    bsa_formula: str,
    out_dir: str | None,
    site_settings: str | None,
) -> None:
    """Evaluate eligibility and the next dose for every patient in INPUT.

    INPUT is a FHIR R4 JSON file (Bundle or resource), a Bulk Data NDJSON file, or a directory of
    them. Exit status 0 means evaluated, whatever the decision; 2 means unusable input.
    """
    import orjson

    from adapter.api import evaluate_path
    from adapter.render_text import render_text

    run = evaluate_path(
        input_path,
        protocol,
        as_of,
        mappings,
        validate=not no_validate,
        bsa_formula=bsa_formula,  # type: ignore[arg-type]
        site_settings=site_settings,  # part of the rule-set digest (issue #10)
    )
    if fmt == "ndjson":
        for result in run.results:
            sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    elif fmt == "json":
        payload: Any = run.results[0] if len(run.results) == 1 else run.results
        sys.stdout.buffer.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        click.echo(render_text(run.results))
    if run.ignored:
        counts = ", ".join(f"{n} {t}" for t, n in sorted(run.ignored.items()))
        _say(f"ignored resources the protocol does not use: {counts}")
    for note in run.notes:
        _say(f"warning: {note}")
    for orphan in run.orphans:
        _say(f"warning: {orphan}")
    if out_dir is not None:
        from adapter.outputs import write_patient
        from adapter.safe_text import patient_tag
        from adapter.writeback.settings import load_settings

        settings = load_settings(site_settings)
        now = _now_instant()
        existing = run.existing()
        for result in run.results:
            written = write_patient(Path(out_dir), result, now, settings, existing)
            plan = written.plan.summary()
            _say(
                f"{patient_tag(result['patient'])}: {result['dose']['action']}; wrote {written.folder}/ "
                f"(bundle: {plan['entries']} entries)"
            )
            for note in plan["not_touched"]:
                _say(f"not touched: {note}")


@main.command("check-order")
@click.argument("order_path", metavar="ORDER", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option(
    "--context",
    "context_path",
    required=True,
    type=click.Path(exists=True, dir_okay=True, readable=True),
    help="The patient's record: Bundle, resource, NDJSON or a directory.",
)
@protocol_option
@click.option(
    "--as-of",
    callback=_parse_optional_date,
    metavar="YYYY-MM-DD",
    help="Check as of this date (default: the order's dose date).",
)
@mappings_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="json: the check as one object; text: readable.",
)
@bsa_formula_option
@click.option(
    "--fail-on",
    type=click.Choice(["never", "warning", "critical"]),
    default="never",
    show_default=True,
    help="Exit with status 4 when the verdict reaches this severity.",
)
@no_validate_option
@click.option(
    "--bundle",
    "bundle_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write a FHIR transaction Bundle recording each warning or critical finding as a "
    "DetectedIssue on the order (the order itself is never changed).",
)
@site_settings_option
@handle_errors
def check_order(
    order_path: str,
    context_path: str,
    protocol: str,
    as_of: date | None,
    mappings: tuple[str, ...],
    fmt: str,
    bsa_formula: str,
    fail_on: str,
    no_validate: bool,
    bundle_path: str | None,
    site_settings: str | None,
) -> None:
    """Check an inotuzumab ozogamicin MedicationRequest (ORDER) against the plan.

    Says whether the dose (±10%), the day and the timing (≥ 6 days since the last dose) agree with
    the protocol variant, whether the results are fresh and within limits, and whether anything
    stops treatment. Each finding has a severity: info, warning or critical.
    """
    import orjson

    from adapter.api import check_order_path
    from adapter.errors import ExitCode
    from adapter.render_text import render_check

    result = check_order_path(
        order_path,
        context_path,
        protocol,
        as_of,
        mappings,
        not no_validate,
        bsa_formula,  # type: ignore[arg-type]
        site_settings=site_settings,
    )
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        click.echo(render_check(result))
    if bundle_path is not None:
        from adapter.writeback.bundle import build_check_transaction
        from adapter.writeback.settings import load_settings

        plan = build_check_transaction(result, _now_instant(), load_settings(site_settings))
        Path(bundle_path).write_bytes(orjson.dumps(plan.bundle, option=orjson.OPT_INDENT_2) + b"\n")
    order = ("info", "warning", "critical")
    if fail_on != "never" and order.index(result["verdict"]) >= order.index(fail_on):
        sys.exit(int(ExitCode.ORDER_REJECTED))


@main.command()
@click.argument("evaluation_path", metavar="EVALUATION", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md"]),
    default="html",
    show_default=True,
    help="html: the printable one-page summary; md: Markdown (reads as plain text too).",
)
@click.option(
    "--previous",
    "previous_path",
    type=click.Path(exists=True, dir_okay=False),
    help="An earlier evaluation of the same patient and variant, to say what changed.",
)
@click.option(
    "--template-dir",
    type=click.Path(file_okay=False),  # a missing directory is exit 3 (check_template_dir)
    help="Site templates searched before the packaged ones (overrides site settings).",
)
@site_settings_option
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to this file instead of standard output.",
)
@handle_errors
def render(
    evaluation_path: str,
    fmt: str,
    previous_path: str | None,
    template_dir: str | None,
    site_settings: str | None,
    output_path: str | None,
) -> None:
    """Render the clinician summary of EVALUATION (an evaluation JSON from `evaluate`)."""
    from adapter.outputs import read_evaluation
    from adapter.summary.render import render_summary
    from adapter.writeback.settings import check_template_dir, load_settings

    settings = load_settings(site_settings)
    check_template_dir(template_dir, "--template-dir")
    evaluation = read_evaluation(evaluation_path)
    previous = read_evaluation(previous_path) if previous_path else None
    text = render_summary(
        evaluation,
        fmt,  # type: ignore[arg-type]
        previous=previous,
        template_dir=template_dir or settings.template_dir,
    )
    if output_path:
        Path(output_path).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":
    main()
