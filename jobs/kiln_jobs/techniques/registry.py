"""Every technique, by the `kind` of its Plan model: adding one is a new module and one line here.

A technique module exposes `run(ctx, spec) -> TechniqueOutcome` and may expose
`preflight(spec, accelerator)`, which the runner calls for the whole stack (and every escalation
stack) before loading the model, so a request this machine cannot serve fails in seconds.
Modules are imported when first used: the registry itself imports no ML library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from pydantic import BaseModel

from kiln_jobs.hardware import Accelerator
from kiln_jobs.plan import (
    PruneDistillPlan,
    PTQPlan,
    QADPlan,
    QATPlan,
    SpeculativePlan,
    Technique,
)
from kiln_jobs.techniques.context import TechniqueContext, TechniqueOutcome

__all__ = ["TECHNIQUES", "TechniqueEntry", "preflight", "run"]


@dataclass(frozen=True)
class TechniqueEntry:
    """A technique: the Plan model it takes and the module that runs it."""

    plan: type[BaseModel]
    module: str


TECHNIQUES: dict[str, TechniqueEntry] = {
    "ptq": TechniqueEntry(PTQPlan, "kiln_jobs.techniques.ptq"),
    "qat": TechniqueEntry(QATPlan, "kiln_jobs.techniques.qat"),
    "qad": TechniqueEntry(QADPlan, "kiln_jobs.techniques.qad"),
    "speculative": TechniqueEntry(SpeculativePlan, "kiln_jobs.techniques.speculative"),
    "prune_distill": TechniqueEntry(PruneDistillPlan, "kiln_jobs.techniques.prune_distill"),
}


def module_for(spec: Technique) -> ModuleType:
    """The module that runs `spec`."""
    entry = TECHNIQUES[spec.kind]
    if not isinstance(spec, entry.plan):
        raise TypeError(f"{spec.kind} expects {entry.plan.__name__}, got {type(spec).__name__}")
    return importlib.import_module(entry.module)


def preflight(spec: Technique, accelerator: Accelerator) -> None:
    """Run the technique's own checks against this accelerator, if it has any."""
    check = getattr(module_for(spec), "preflight", None)
    if check is not None:
        check(spec, accelerator)


def run(ctx: TechniqueContext, spec: Technique) -> TechniqueOutcome:
    """Apply one technique to `ctx.model`."""
    outcome: TechniqueOutcome = module_for(spec).run(ctx, spec)
    return outcome
