"""Shared building blocks of the API: the model base class and the string types users write.

Field docstrings become the CRD's descriptions (`kubectl explain`), so they are written for the
person reading them there.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, JsonValue, WithJsonSchema
from pydantic.alias_generators import to_camel

__all__ = [
    "DNS_1035_LABEL",
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "LABEL_KEY",
    "LABEL_VALUE",
    "AnnotationMap",
    "Duration",
    "KilnModel",
    "LabelMap",
    "Quantity",
    "SecretName",
    "cel_rules",
    "parse_duration_seconds",
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# What Kubernetes takes as a Service name (and Kiln names the resource's Service after it).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
#: A label or annotation key: an optional DNS-subdomain prefix and '/', then a name.
LABEL_KEY = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
#: A label value: empty, or a name of at most 63 characters.
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
_DURATION = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# Prefixes of well-known credentials, so that a pasted token gets a message about Secrets.
_TOKEN_PREFIXES = ("hf_", "AKIA", "ASIA", "ghp_", "sk-", "eyJ")


class KilnModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )


def cel_rules(*rules: tuple[str, str] | tuple[str, str, str]) -> ConfigDict:
    """Model config carrying CEL rules into the CRD as x-kubernetes-validations.

    Each rule is (rule, message) or (rule, message, fieldPath); fieldPath (e.g. ".blockSize")
    makes the API server name that field in its error. The CRD has no defaults, so a rule must
    guard optional fields with has(); pydantic validators enforce the same rules with defaults
    applied.
    """
    validations: list[JsonValue] = []
    for rule, message, *field_path in rules:
        validation: dict[str, JsonValue] = {"rule": rule, "message": message}
        if field_path:
            validation["fieldPath"] = field_path[0]
        validations.append(validation)
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": validations})


def _check_secret_name(value: str) -> str:
    if value.startswith(_TOKEN_PREFIXES) or len(value) > 253:
        raise ValueError(
            "takes the name of a Secret in the same namespace, not the secret itself: "
            "store the credential in a Secret and put its name here"
        )
    if "/" in value:
        raise ValueError(
            "must name a Secret in the same namespace as this resource "
            "(a plain name such as 'hf-token', not 'namespace/name')"
        )
    if not re.match(DNS_SUBDOMAIN, value):
        raise ValueError(
            "must be a Secret name: lowercase letters, digits, '-' and '.', e.g. 'hf-token'"
        )
    return value


SecretName = Annotated[
    str,
    AfterValidator(_check_secret_name),
    WithJsonSchema({"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN}),
]


def _check_duration(value: str) -> str:
    if not value or not re.match(_DURATION, value):
        raise ValueError("must be a duration such as '90m', '6h' or '1h30m'")
    if not re.search(r"[1-9]", value):
        raise ValueError(f"{value!r} is no time at all: use a positive duration such as '6h'")
    return value


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "pattern": _DURATION,
            "x-kubernetes-validations": [
                {"rule": "self.matches('[1-9]')", "message": "must be a positive duration"}
            ],
        }
    ),
]


def _check_map(values: dict[str, str], *, check_values: bool) -> dict[str, str]:
    for key, value in values.items():
        if len(key) > 316 or not re.match(LABEL_KEY, key):
            raise ValueError(
                f"{key!r} is not a valid key: an optional DNS prefix and '/', then up to 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            )
        if check_values and not re.match(LABEL_VALUE, value):
            raise ValueError(
                f"{key}: {value!r} is not a valid label value: up to 63 letters, digits, '-', "
                "'_' or '.', starting and ending with a letter or digit"
            )
    return values


def _map_schema(check_values: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"type": "string"}
    if check_values:
        values |= {"maxLength": 63, "pattern": LABEL_VALUE}
    return {
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": values,
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(k, k.size() <= 316 && k.matches(r'{LABEL_KEY}'))",
                "message": "keys must be label keys: [prefix/]name, name of at most 63 "
                "letters, digits, '-', '_' or '.'",
            }
        ],
    }


#: Labels (or a node selector): label keys and label values, as Kubernetes checks them.
LabelMap = Annotated[
    dict[str, str],
    AfterValidator(lambda v: _check_map(v, check_values=True)),
    WithJsonSchema(_map_schema(check_values=True)),
]
#: Annotations: label-style keys, any values.
AnnotationMap = Annotated[
    dict[str, str],
    AfterValidator(lambda v: _check_map(v, check_values=False)),
    WithJsonSchema(_map_schema(check_values=False)),
]


def parse_duration_seconds(value: str) -> int:
    """Seconds in a duration such as `1h30m`."""
    match = re.match(_DURATION, value)
    if not match or not value:
        raise ValueError(f"not a duration: {value!r}")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _quantity_to_str(value: Any) -> str:
    text = str(value)
    if not re.match(_QUANTITY, text):
        raise ValueError("must be a Kubernetes quantity such as '8', '500m', '64Gi'")
    return text


Quantity = Annotated[
    str | int,
    AfterValidator(_quantity_to_str),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            # A structural int-or-string: exactly these two branches, the pattern beside them
            # (it only constrains strings).
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": _QUANTITY,
        }
    ),
]
