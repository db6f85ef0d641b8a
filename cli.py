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


def server_auth_options(fn: F) -> F:
    """The FHIR server auth options of ``sync`` and ``screen --export`` (adapter.fhir.auth.make_auth)."""
    options = [
        click.option(
            "--auth",
            type=click.Choice(["none", "bearer", "smart"]),
            default="none",
            show_default=True,
            help="none; bearer (a static token from --token-env or --token-file); smart (SMART Backend "
            "Services: --client-id and --key).",
        ),
        click.option("--client-id", metavar="ID", help="SMART Backend Services client id."),
        click.option(
            "--key",
            "key_file",
            type=click.Path(exists=True, dir_okay=False, readable=True),
            help="SMART Backend Services private key (PEM, RSA or EC P-384).",
        ),
        click.option("--key-id", metavar="KID", help="The key's id (default: its JWK thumbprint)."),
        click.option(
            "--token-env", metavar="NAME", help="Name of the environment variable holding the bearer token."
        ),
        click.option(
            "--token-file",
            type=click.Path(exists=True, dir_okay=False, readable=True),
            help="File holding the bearer token (chmod 600). The token is never a command-line argument.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


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


def _default_state() -> str:
    import os

    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ino-adapter", "sync.sqlite")


@main.command()
@click.option("--server", required=True, metavar="URL", help="FHIR R4 base URL of the hospital's server.")
@protocol_option
@server_auth_options
@click.option(
    "--patient", "patients", multiple=True, metavar="ID", help="Evaluate this patient (repeatable)."
)
@click.option("--group", metavar="ID", help="Evaluate the members of this FHIR Group.")
@click.option(
    "--since",
    metavar="auto|DATETIME",
    help="Skip patients whose record is unchanged: since each patient's checkpoint in the state file "
    "(auto) or since DATETIME. A patient whose next dose is due is always evaluated.",
)
@click.option("--as-of", callback=_parse_date, metavar="YYYY-MM-DD", help="Evaluation date (default: today).")
@click.option("--dry-run", is_flag=True, help="Write nothing to the server; print (and with --out save) what "
              "would be sent.")  # fmt: skip
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Patients' chunks worked on at once (one patient is only ever written by one worker).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, writable=True),
    default=_default_state,
    show_default="$XDG_STATE_HOME/ino-adapter/sync.sqlite",
    help="The run ledger (SQLite): resumable runs, checkpoints, the last evaluation per patient.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, writable=True),
    help="Also write the per-patient folders of `evaluate --out` (evaluation, summaries, bundle).",
)
@mappings_option
@site_settings_option
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the run's report as JSON to this file.",
)
@handle_errors
def sync(
    server: str,
    protocol: str,
    auth: str,
    client_id: str | None,
    key_file: str | None,
    key_id: str | None,
    token_env: str | None,
    token_file: str | None,
    patients: tuple[str, ...],
    group: str | None,
    since: str | None,
    as_of: date,
    dry_run: bool,
    concurrency: int,
    state_path: str,
    out_dir: str | None,
    mappings: tuple[str, ...],
    site_settings: str | None,
    report_path: str | None,
) -> None:
    """Evaluate the protocol's patients on a FHIR server and write the results back.

    Selects the patients with a B-ALL Condition or an inotuzumab order or administration (or --patient,
    --group), skips those unchanged since the last run (--since auto) unless a dose is due, evaluates
    each, and writes the draft proposals, DetectedIssues, summary and Provenance back. Resumable: a
    killed run is finished by the next. Exit status 0 all done, 1 some patients failed, 2 bad invocation,
    3 bad mapping/settings, 5 server unreachable or authentication refused, 143 stopped by SIGTERM.
    """
    import logging

    from adapter.sync import SyncOptions, run_sync
    from adapter.sync.options import parse_since

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ino-adapter sync: %(message)s"))
    handler.set_name("ino-adapter-sync")
    for name, level in (("adapter.sync", logging.INFO), ("adapter.fhir", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != "ino-adapter-sync"]
        logger.addHandler(handler)
        logger.setLevel(level)
    options = SyncOptions(
        server=server,
        protocol=protocol,
        state=Path(state_path),
        as_of=as_of,
        auth=auth,
        client_id=client_id,
        key_file=key_file,
        key_id=key_id,
        token_env=token_env,
        token_file=token_file,
        patients=patients,
        group=group,
        since=parse_since(since),
        dry_run=dry_run,
        concurrency=concurrency,
        out_dir=Path(out_dir) if out_dir else None,
        mappings=mappings,
        site_settings=site_settings,
        report_path=Path(report_path) if report_path else None,
    )
    report = run_sync(options)
    click.echo(report.text())
    sys.exit(report.exit_code)


@main.command()
@click.argument(
    "export_dir", metavar="EXPORT_DIR", required=False, type=click.Path(exists=True, file_okay=False)
)
@protocol_option
@click.option("--as-of", callback=_parse_date, metavar="YYYY-MM-DD", help="Evaluation date (default: today).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, writable=True),
    default="screen-out",
    show_default=True,
    help="Output directory (evaluations, write-back NDJSON, summary CSV/Parquet, report); also the "
    "run's work and resume state.",
)
@click.option("--all-patients", is_flag=True, help="Evaluate every patient, not only the candidates.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes (default: the number of CPUs).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: worker processes on this machine; spark: a Spark cluster (the `spark` extra).",
)
@click.option(
    "--master", metavar="URL", help="Spark master (--engine spark), e.g. local[2] or spark://HOST:7077."
)
@mappings_option
@click.option("--validate", is_flag=True, help="Validate the candidates' resources with the R4B models.")
@bsa_formula_option
@site_settings_option
@click.option(
    "--progress",
    type=click.Choice(["auto", "bar", "lines", "none"]),
    default="auto",
    show_default=True,
    help="auto: a bar on a terminal, plain lines otherwise.",
)
@click.option("--server", metavar="URL", help="With --export: the FHIR server to export from.")
@click.option(
    "--export", "do_export", is_flag=True, help="Run a Bulk Data $export on --server, then screen it."
)
@click.option(
    "--export-level",
    type=click.Choice(["system", "patient"]),
    default="system",
    show_default=True,
    help="[base]/$export or Patient/$export (--group: Group/ID/$export).",
)
@click.option("--group", metavar="ID", help="Export the members of this FHIR Group (Group/ID/$export).")
@click.option("--since", metavar="DATETIME", help="With --export: only resources changed since (_since).")
@server_auth_options
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="SMART scope to ask for (repeatable; default: read on the exported types and Group, e.g. "
    "system/Observation.rs). Some servers want system/*.read for $export.",
)
@handle_errors
def screen(**params: Any) -> None:
    """Screen a population: a Bulk Data export (EXPORT_DIR, or --server URL --export) in two streaming
    passes: the candidates (a B-ALL Condition or an inotuzumab record; every patient with
    --all-patients), then each candidate's evaluation and write-back. Bounded memory, parallel, resumable
    (run the same command again after an interruption). Exit status 0 screened, 2 unusable input or
    options, 3 bad mapping/settings, 5 server error (--export), 143 stopped (resumable).
    """
    from adapter.screen.cli import run_screen_command

    run_screen_command(**params, say=_say)  # the options, by name (adapter/screen/cli.py)


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True),
    help="The service's YAML configuration (docs/service.md); INO_ADAPTER_<KEY> variables override it.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes (default: the configuration's workers, 1).",
)
@handle_errors
def serve(config_path: str, workers: int | None) -> None:
    """Run the HTTP service: POST /evaluate, /check-order, the FHIR operation $evaluate and the CDS Hooks
    services (docs/service.md).

    Stops gracefully on SIGTERM. Exit status 3: the configuration (or a table it names) is unusable;
    nothing was started.
    """
    from adapter.service.server import serve as run_service

    run_service(config_path, workers)


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


@main.command("feedback-report")
@click.option(
    "--db",
    "db_path",
    required=True,
    envvar="INO_ADAPTER_FEEDBACK_DB",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="The CDS Hooks feedback database (the service's feedback_db).",
)
@click.option(
    "--since",
    callback=_parse_optional_date,
    metavar="YYYY-MM-DD",
    help="Only cards issued on or after this day.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a table; json: one object.",
)
@handle_errors
def feedback_report(db_path: str, since: date | None, fmt: str) -> None:
    """Override rates of the CDS Hooks cards, per card kind (finding id) and override reason: what a
    pharmacy and therapeutics committee reviews (docs/cds-hooks.md)."""
    import orjson

    from adapter.service.cds.feedback import build_report, report_text

    report = build_report(db_path, since)
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        click.echo(report_text(report))


if __name__ == "__main__":
    main()
