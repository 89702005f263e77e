"""Generate the ModelOptimization CRD from the pydantic API.

Pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3.0 schema: no `$ref`,
no `anyOf` over types, boolean `exclusiveMinimum`, no `additionalProperties: false` (the API
server prunes unknown fields instead). `structural_schema` rewrites one into the other and fails
loudly on anything it cannot express, so a new API type never produces a silently wrong CRD.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from kiln_operator.api import (
    CATEGORY,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    ModelOptimization,
    ModelOptimizationSpec,
    ModelOptimizationStatus,
)

__all__ = ["crd", "crd_yaml"]

Schema = dict[str, Any]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Techniques", "type": "string", "jsonPath": ".status.techniques"},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Percent of the current run done",
    },
    {
        "name": "Degradation",
        "type": "number",
        "format": "float",
        "jsonPath": ".status.metrics.degradationPercent",
        "description": "Perplexity increase over the original model, percent",
    },
    {
        "name": "Speedup",
        "type": "number",
        "format": "float",
        "jsonPath": ".status.metrics.speedup",
        "priority": 1,
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Endpoint",
        "type": "string",
        "jsonPath": ".status.endpoint",
        "priority": 1,
    },
    {
        "name": "Serving",
        "type": "string",
        "jsonPath": ".status.servingPlanHash",
        "description": "Plan hash of the revision clients get (another plan's until the current "
        "one passes its checks)",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "$defs", "discriminator"}


def _describe(node: Schema) -> None:
    """Fold docstring line breaks into spaces and state the default, if any."""
    description = node.get("description")
    default = node.pop("default", None)
    if description:
        paragraphs = re.split(r"\n\s*\n", description.strip())
        description = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    if not isinstance(default, dict | type(None)) and "efault" not in (description or ""):
        rendered = json.dumps(default) if not isinstance(default, str) else default
        description = f"{description or ''} Defaults to {rendered}.".strip()
    if description:
        node["description"] = description


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # the property's own description wins over the type's
        return _convert(merged, defs)
    if "anyOf" in node and node.get("x-kubernetes-int-or-string"):
        for key in _DROP:
            node.pop(key, None)
        _describe(node)
        return _ordered(node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of types in a CRD: {branches}")
        return _convert({**branches[0], **node}, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, inclusive, step in (
        ("exclusiveMinimum", "minimum", 1),
        ("exclusiveMaximum", "maximum", -1),
    ):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if node.get("type") == "integer":  # x > 0 reads better as x >= 1
                node[inclusive] = value + step
                del node[bound]
            else:
                node[inclusive] = value
                node[bound] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    for key in _DROP:
        node.pop(key, None)
    _describe(node)
    if "properties" in node:
        node["properties"] = {k: _convert(v, defs) for k, v in node["properties"].items()}
        node.setdefault("type", "object")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = _convert(node["items"], defs)
    return _ordered(node)


_KEY_ORDER = ("type", "description", "enum", "format", "minimum", "exclusiveMinimum", "maximum")


def _ordered(node: Schema) -> Schema:
    """Keys in the order a reader of the CRD wants them: type and description first."""
    first = {k: node[k] for k in _KEY_ORDER if k in node}
    return {**first, **{k: v for k, v in node.items() if k not in first}}


def structural_schema(model: type[Any]) -> Schema:
    """The structural OpenAPI v3 schema of a pydantic model, by wire (camelCase) names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    """The ModelOptimization CustomResourceDefinition."""
    spec_schema = structural_schema(ModelOptimizationSpec)
    status_schema = structural_schema(ModelOptimizationStatus)
    root: Schema = {
        "type": "object",
        "description": (
            "ModelOptimization optimizes a model with NVIDIA Model Optimizer (quantization, "
            "QAT, QAD, speculative decoding, pruning + distillation), checks its accuracy "
            "against the original and serves it with Triton Inference Server (TensorRT-LLM's "
            "LLM API) and an OpenAI-compatible endpoint."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kiln.dev/v1alpha1."},
            "kind": {"type": "string", "description": "ModelOptimization."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    # Rules on the resource as a whole (they may read metadata.name).
    extra = ModelOptimization.model_config.get("json_schema_extra") or {}
    if isinstance(extra, dict) and extra.get("x-kubernetes-validations"):
        root["x-kubernetes-validations"] = extra["x-kubernetes-validations"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/part-of": "kiln"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style, long lines kept whole, keys in the order written."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def crd_yaml() -> str:
    """The CRD as YAML, exactly as committed under crds/."""
    header = "# Generated by `kiln crd` from kiln_operator.api. Do not edit; run `make crds`.\n"
    body = yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body
