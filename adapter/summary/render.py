"""Render the clinician regimen summary with Jinja2 (HTML autoescaped; Markdown neutralised).

Templates are looked up in a site directory first (``template_dir``), then in the packaged
``templates/`` directory, so a site may override one file and keep the others. Undefined
variables raise (``StrictUndefined``). Nothing here reads the clock: ``generated_at`` is passed
in, so the same evaluation always renders to the same text.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import jinja2

from adapter.safe_text import clean
from adapter.summary.view import DASH, build_view

SummaryFormat = Literal["html", "md"]
SUMMARY_FORMATS: tuple[SummaryFormat, ...] = ("html", "md")
TEMPLATE_NAMES: dict[str, str] = {"html": "summary.html.j2", "md": "summary.md.j2"}

# Punctuation that can start Markdown or HTML markup in running text. ``>`` is left alone: without
# ``<`` it opens nothing mid-line, and values never start a line. ``&`` only before an entity name.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<|~])|(&(?=#?[0-9A-Za-z]+;))")


def md_escape(value: Any) -> str:
    """Neutralise Markdown and HTML in ``value``: one line without control or bidi characters
    (``clean``), markup punctuation backslash-escaped."""
    text = DASH if value is None else " ".join(clean(value).split())
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _md_finalize(value: Any) -> str:
    return md_escape(value)


def _html_finalize(value: Any) -> Any:
    return DASH if value is None else value


def packaged_template_dir() -> Path:
    """The ``templates`` directory shipped with the adapter (a package-data directory)."""
    import adapter

    beside = Path(adapter.__file__).resolve().parent.parent / "templates"
    if (beside / TEMPLATE_NAMES["html"]).is_file():
        return beside
    spec = importlib.util.find_spec("templates")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / TEMPLATE_NAMES["html"]).is_file():
            return Path(location)
    raise FileNotFoundError("the packaged summary templates (templates/summary.html.j2) are missing")


@functools.lru_cache(maxsize=16)
def environment(fmt: SummaryFormat, template_dir: str | None = None) -> jinja2.Environment:
    """The Jinja2 environment for ``fmt``, searching ``template_dir`` before the packaged templates."""
    search: list[jinja2.BaseLoader] = []
    if template_dir is not None:
        search.append(jinja2.FileSystemLoader(template_dir))
    search.append(jinja2.FileSystemLoader(str(packaged_template_dir())))
    loader = jinja2.ChoiceLoader(search)
    if fmt == "html":
        env = jinja2.Environment(
            loader=loader,
            autoescape=True,  # every template of this environment is HTML
            undefined=jinja2.StrictUndefined,
            finalize=_html_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
    elif fmt == "md":
        env = jinja2.Environment(
            loader=loader,
            autoescape=False,  # Markdown: values are neutralised by md_escape instead
            undefined=jinja2.StrictUndefined,
            finalize=_md_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        env.filters["md_escape"] = md_escape
    else:
        raise ValueError(f"unknown summary format {fmt!r} (known: {', '.join(SUMMARY_FORMATS)})")
    return env


def _protocol_info(protocol: Any) -> dict[str, str] | None:
    """The variant's title, source file and version from its packaged YAML, if it is known."""
    from adapter.errors import MappingTableError
    from adapter.protocols import VARIANTS, load_variant

    if not isinstance(protocol, str) or protocol not in VARIANTS:
        return None
    try:
        variant = load_variant(str(protocol))
    except MappingTableError:
        return None
    return {"title": variant.title, "source_file": variant.source_file, "version": variant.version}


def render_summary(
    evaluation: dict[str, Any],
    fmt: SummaryFormat,
    *,
    previous: dict[str, Any] | None = None,
    template_dir: str | Path | None = None,
    generated_at: str | None = None,
) -> str:
    """The one-page regimen summary of ``evaluation`` as HTML or Markdown text.

    ``previous`` is the last evaluation of the same patient and protocol (for "what changed");
    ``template_dir`` a site directory searched before the packaged templates.
    """
    if fmt not in SUMMARY_FORMATS:
        raise ValueError(f"unknown summary format {fmt!r} (known: {', '.join(SUMMARY_FORMATS)})")
    view = build_view(
        evaluation,
        previous,
        generated_at=generated_at,
        protocol_info=_protocol_info(evaluation.get("protocol")),
    )
    site = str(Path(template_dir).resolve()) if template_dir is not None else None
    template = environment(fmt, site).get_template(TEMPLATE_NAMES[fmt])
    return template.render(v=view)
