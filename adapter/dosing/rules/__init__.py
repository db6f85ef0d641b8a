"""The dose engine's rules, by concern. Each rule is a small function that reads a DoseContext and
returns findings (each with its evidence and the source it cites); none reads a file, a clock or
the network. The engine (adapter.dosing.engine) composes them in stages and decides the action.

``@dose_rule`` registers a rule with what docs/rules.md shows: its concern, the finding ids it can
raise, and the variant-file fields whose ``source`` it cites (resolved per variant by
``python -m adapter.dosing.catalogue``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from adapter.dosing.context import DoseContext
from adapter.dosing.findings import Finding

RuleFn = Callable[[DoseContext], list[Finding]]


@dataclass(frozen=True, slots=True)
class DoseRule:
    fn: Callable[..., Any]
    concern: str
    findings: tuple[str, ...]
    #: dotted paths into the variant's dosing file (``hepatic.source``) or fixed docs/ citations
    cites: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


REGISTRY: dict[str, DoseRule] = {}


F = TypeVar("F", bound=Callable[..., Any])


def dose_rule(concern: str, findings: tuple[str, ...], cites: tuple[str, ...]) -> Callable[[F], F]:
    def register(fn: F) -> F:
        REGISTRY[fn.__name__] = DoseRule(fn, concern, findings, cites)
        return fn

    return register


def run(ctx: DoseContext, rules: tuple[RuleFn, ...]) -> list[Finding]:
    return [f for rule in rules for f in rule(ctx)]
