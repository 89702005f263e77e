"""The `ModelOptimization` API (kiln.dev/v1alpha1): the single source of its CRD, its
`kubectl explain` text and its validation messages."""

from kiln_operator.api.resource import (
    API_VERSION,
    CATEGORY,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    ModelOptimization,
)
from kiln_operator.api.spec import ModelOptimizationSpec
from kiln_operator.api.status import Condition, ModelOptimizationStatus

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "SINGULAR",
    "VERSION",
    "Condition",
    "ModelOptimization",
    "ModelOptimizationSpec",
    "ModelOptimizationStatus",
]
