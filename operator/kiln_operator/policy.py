"""The platform team's rules for what a resource may ask of the cluster, and who may ask it.

Kiln acts with its own ServiceAccount, which can read every Secret it mounts and create Jobs
and Deployments anywhere it watches: without these rules a user who may create a
ModelOptimization could borrow those rights (a confused deputy). Two kinds of checks:

- `policy_problems`: what the installation allows, from the operator config — the Triton
  image, the Service type, priority classes, tolerations, the Kueue queue, and node selectors
  that would fight the platform's. Pure; run on every reconcile (the resource is Stalled) and
  at admission (it is refused).
- `referenced_objects`: the Secrets and PersistentVolumeClaims a spec makes Kiln mount. The
  admission webhook asks the API server, with a SubjectAccessReview as the requesting user,
  whether that user may read each of them (`webhook.access_problems`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from kiln_operator.api import ModelOptimization
from kiln_operator.api.techniques import ModelRefSpec
from kiln_operator.api.uris import uri_scheme
from kiln_operator.compiler import spec_uris
from kiln_operator.config import OperatorConfig
from kiln_operator.validation import Problem

__all__ = ["Reference", "policy_problems", "referenced_objects"]


@dataclass(frozen=True)
class Reference:
    """An object in the resource's namespace that Kiln would use on the user's behalf."""

    path: str  # the spec field that names it
    resource: str  # "secrets" or "persistentvolumeclaims"
    name: str


def referenced_objects(resource: ModelOptimization) -> list[Reference]:
    """Every Secret and PersistentVolumeClaim the spec makes Kiln mount, once each."""
    spec = resource.spec
    found: list[Reference] = []
    secrets = [("spec.model.credentialsSecret", spec.model.credentials_secret)]
    secrets.append(("spec.artifacts.credentialsSecret", spec.artifacts.credentials_secret))
    for index, item in enumerate(spec.techniques):
        for field in ("teacher", "draft"):
            ref = getattr(item.body, field, None)
            if isinstance(ref, ModelRefSpec) and ref.credentials_secret:
                path = f"spec.techniques[{index}].{item.kind}.{field}.credentialsSecret"
                secrets.append((path, ref.credentials_secret))
    found += [Reference(path, "secrets", name) for path, name in secrets if name]
    for path, uri in spec_uris(spec):
        if uri_scheme(uri) == "pvc":
            claim = uri[len("pvc://") :].split("/", 1)[0]
            found.append(Reference(path, "persistentvolumeclaims", claim))
    unique: dict[tuple[str, str], Reference] = {}
    for reference in found:
        unique.setdefault((reference.resource, reference.name), reference)
    return list(unique.values())


def policy_problems(resource: ModelOptimization, config: OperatorConfig) -> list[Problem]:
    """What the spec asks that this installation does not allow, each naming the field and the
    setting that would allow it."""
    spec = resource.spec
    problems: list[Problem] = []
    image = spec.serving.image
    if image and not any(fnmatch.fnmatchcase(image, p) for p in config.allowed_images):
        problems.append(
            Problem(
                "spec.serving.image",
                f"{image} is not an image this installation runs; leave it unset for "
                f"{config.triton_image}, or ask the platform team to allow it (allowedImages)",
            )
        )
    service = spec.serving.service
    if service and service.type not in config.allowed_service_types:
        problems.append(
            Problem(
                "spec.serving.service.type",
                f"{service.type} is not allowed here (allowed: "
                f"{', '.join(config.allowed_service_types)}); ask the platform team "
                "(allowedServiceTypes)",
            )
        )
    priority = spec.scheduling.priority_class_name
    if priority and priority not in config.allowed_priority_classes:
        problems.append(
            Problem(
                "spec.scheduling.priorityClassName",
                f"{priority} is not a priority class this installation allows "
                f"({', '.join(config.allowed_priority_classes) or 'none'}); "
                "ask the platform team (allowedPriorityClasses)",
            )
        )
    for index, toleration in enumerate(spec.scheduling.tolerations or []):
        if toleration.key not in config.allowed_toleration_keys:
            problems.append(
                Problem(
                    f"spec.scheduling.tolerations[{index}].key",
                    f"tolerating {toleration.key or 'every taint'} is not allowed here "
                    f"(allowed keys: {', '.join(config.allowed_toleration_keys) or 'none'}); "
                    "ask the platform team (allowedTolerationKeys)",
                )
            )
    for key, value in (spec.scheduling.node_selector or {}).items():
        pinned = config.job_node_selector.get(key)
        if pinned is not None and pinned != value:
            problems.append(
                Problem(
                    "spec.scheduling.nodeSelector",
                    f"{key}={value} contradicts the platform's {key}={pinned}; remove it",
                )
            )
    queue = spec.scheduling.queue_name
    if config.allowed_queues is not None and (queue or config.default_queue) not in (
        config.allowed_queues
    ):
        problems.append(
            Problem(
                "spec.scheduling.queueName",
                f"{queue or 'no queue'}: optimization Jobs here go through Kueue, in "
                f"{', '.join(config.allowed_queues)}; set queueName to one of them",
            )
        )
    return problems
