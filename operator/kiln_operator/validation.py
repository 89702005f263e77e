"""Turn a manifest into a `ModelOptimization`, or into one clear line per problem.

The same messages appear in `kiln validate`, the admission webhook and the `Stalled` condition.
Each names the field path as a user writes it (`spec.techniques[1].qad.teacher`) and says what a
valid value looks like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from kiln_operator.api import API_VERSION, KIND, ModelOptimization

__all__ = ["Problem", "field_path", "parse_resource"]

# A validator may prefix its message with a path relative to where it ran.
_SEGMENT = r"[a-z][A-Za-z0-9]*(?:\[\d+\])*"
_RELATIVE_PATH = re.compile(rf"^({_SEGMENT}(?:\.{_SEGMENT})*): (.+)$", re.S)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a resource."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def field_path(loc: tuple[int | str, ...]) -> str:
    """`('spec', 'techniques', 1, 'qad')` → `spec.techniques[1].qad`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The API model class found by walking `loc` from the resource root."""
    model: Any = ModelOptimization
    for part in loc:
        if isinstance(part, int):
            continue
        field = _field_by_alias(model, part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model


def _field_by_alias(model: type[BaseModel], name: str) -> Any:
    for field_name, field in model.model_fields.items():
        if name in (field.alias, field_name):
            return field
    return None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _valid_fields(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _message(error: dict[str, Any]) -> tuple[tuple[int | str, ...], str]:
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx", {})
    given = error.get("input")
    if kind == "extra_forbidden":
        valid = _valid_fields(loc[:-1])
        hint = f"; valid fields here: {', '.join(valid)}" if valid else ""
        return loc, f"unknown field {loc[-1]!r}{hint}"
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "literal_error":
        return loc, f"{given!r} is not one of {ctx.get('expected')}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return loc, f"must be a whole number, got {given!r}"
    if kind in ("float_parsing", "float_type"):
        return loc, f"must be a number, got {given!r}"
    if kind in ("bool_parsing", "bool_type"):
        return loc, f"must be true or false, got {given!r}"
    if kind in ("string_type",):
        return loc, f"must be a string, got {given!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"must be a mapping of fields, got {type(given).__name__} {given!r}"
    if kind == "list_type":
        return loc, f"must be a list, got {type(given).__name__}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {
            "greater_than": ">",
            "greater_than_equal": ">=",
            "less_than": "<",
            "less_than_equal": "<=",
        }[kind]
        bound = next(iter(ctx.values()))
        return loc, f"must be {op} {bound}, got {given!r}"
    if kind == "too_short":
        return loc, f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return loc, f"allows at most {ctx.get('max_length')} item(s)"
    if kind == "string_pattern_mismatch":
        return loc, f"{given!r} does not match the pattern {ctx.get('pattern')}"
    if kind == "string_too_long":
        return loc, f"is longer than {ctx.get('max_length')} characters"
    if kind == "value_error":
        return _relocate(loc, str(ctx.get("error", error["msg"])))
    return loc, error["msg"]


def _relocate(loc: tuple[int | str, ...], text: str) -> tuple[tuple[int | str, ...], str]:
    """Move a `field.path: message` prefix of a model validator's message into the location."""
    relative = _RELATIVE_PATH.match(text)
    if relative is None:
        return loc, text
    extra = _split_path(relative.group(1))
    if extra[0] not in _valid_fields(loc):
        return loc, text
    return loc + extra, relative.group(2)


def _split_path(path: str) -> tuple[int | str, ...]:
    parts: list[int | str] = []
    for piece in path.split("."):
        name, *indexes = re.split(r"\[(\d+)\]", piece)
        parts.append(name)
        parts.extend(int(i) for i in indexes if i)
    return tuple(parts)


def problems_of(error: ValidationError) -> list[Problem]:
    """One Problem per pydantic error, deduplicated, in document order."""
    seen: list[Problem] = []
    for raw in error.errors(include_url=False):
        loc, message = _message(dict(raw))
        problem = Problem(field_path(loc), message)
        if problem not in seen:
            seen.append(problem)
    return seen


def parse_resource(document: Any) -> tuple[ModelOptimization | None, list[Problem]]:
    """Validate one YAML document as a ModelOptimization."""
    if not isinstance(document, dict):
        return None, [Problem("", f"expected a mapping (a Kubernetes object), got {document!r}")]
    kind, api_version = document.get("kind"), document.get("apiVersion")
    if kind != KIND:
        return None, [Problem("kind", f"expected {KIND}, got {kind!r}")]
    if api_version != API_VERSION:
        return None, [Problem("apiVersion", f"expected {API_VERSION}, got {api_version!r}")]
    try:
        return ModelOptimization.model_validate(document), []
    except ValidationError as error:
        return None, problems_of(error)
