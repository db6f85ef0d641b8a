"""The clinician regimen summary: one page per evaluation, as HTML or Markdown.

``view.build_view`` turns the evaluation JSON into display strings (pure); ``render.render_summary``
lays them out with the Jinja2 templates in ``templates/`` (a site may override them).
"""

from adapter.summary.render import SUMMARY_FORMATS, SummaryFormat, render_summary
from adapter.summary.view import PreviousMismatchError, build_view, compute_changes

__all__ = [
    "SUMMARY_FORMATS",
    "PreviousMismatchError",
    "SummaryFormat",
    "build_view",
    "compute_changes",
    "render_summary",
]
