"""The `ModelOptimization` resource as a whole: group, version, kind and metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln_operator.api.base import DNS_1035_LABEL, KilnModel, cel_rules
from kiln_operator.api.spec import ModelOptimizationSpec
from kiln_operator.api.status import ModelOptimizationStatus

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "SINGULAR",
    "VERSION",
    "ModelOptimization",
    "ObjectMeta",
]

GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelOptimization"
PLURAL = "modeloptimizations"
SINGULAR = "modeloptimization"
SHORT_NAME = "mopt"
CATEGORY = "kiln"


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata that Kiln reads; the rest passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(max_length=63, pattern=DNS_1035_LABEL)
    namespace: str | None = Field(default=None, max_length=63)
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ModelOptimization(KilnModel):
    """Optimize a model with NVIDIA Model Optimizer, check its accuracy, and serve it with
    Triton Inference Server."""

    api_version: Literal["kiln.dev/v1alpha1"] = Field(alias="apiVersion")
    """kiln.dev/v1alpha1."""
    kind: Literal["ModelOptimization"]
    """ModelOptimization."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: ModelOptimizationSpec
    """What to optimize, how, how to judge it, and how to serve it."""
    status: ModelOptimizationStatus | None = None
    """Observed state, written by Kiln."""

    # Kiln names the resource's Service after it and puts the name into label values.
    model_config = cel_rules(
        (
            f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS_1035_LABEL}')",
            "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits or '-',"
            " starting with a letter): Kiln names its Service and labels after it",
        )
    )
