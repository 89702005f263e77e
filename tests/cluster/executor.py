"""TEST-ONLY local executor: the one bit of a kubelet the test cluster needs for real work.

For pods bound to a node labelled ``test.kiln.dev/local-exec=true`` (named ``local-exec-*``,
which is how kwok's Stages know to leave them alone once Running), it runs the pod's first
container's exact ``command`` + ``args`` on this machine, with

* the container's ``env``/``envFrom`` (plain values, ConfigMap and Secret keys, fieldRefs),
* ConfigMap, Secret, downward-API, projected and emptyDir volumes materialised under the run
  directory, PersistentVolumeClaims mapped to ``<run dir>/pvc/<namespace>/<claim>``, all
  bind-mounted at their ``mountPath`` in a private mount namespace (see ``podns.py``),
* an ``/etc/hosts`` that resolves the namespace's Services to this machine (cluster DNS and
  kube-proxy, for pods that all share its network),

then reports the real exit code and termination message (the file at the container's
``terminationMessagePath``) in the pod's status, as a kubelet does. Long-running pods
(``restartPolicy`` other than ``Never``: a Deployment's) run every container, each in its own
mount namespace, and report Ready once every readiness probe (``httpGet`` on 127.0.0.1) answers;
kwok's Stages leave their readiness to the executor. Ports are the host's: no two such pods may
use the same one. The container's stdout and
stderr go to a log file in the CRI format (``crilog.py``); a kwok ``Logs`` object named after the
pod (owned by it, so the garbage collector removes it with the pod) points kwok's kubelet API at
that file, so ``kubectl logs`` and the ``pods/log`` API serve it (the first container's, for
long-running pods). It knows nothing about what the pods are for, and runs nothing but those
pods' commands, with the stand-ins of GPU-only packages (``tests/standins``) on PYTHONPATH, as
the job image has the real ones. Long-running pods run their init containers first, in order;
a failing one is reported in the pod's status and nothing else starts.

The same process runs the test-only PV provisioner (``provisioner.py``) for claims of the default
StorageClass, so operator-created PVCs bind and map to the same directories.

Run by the cluster launcher: ``python -m tests.cluster.executor --kubeconfig K --run-dir D``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.cluster.crilog import CriLog, decode
from tests.cluster.nodes import LOCAL_EXEC_LABEL
from tests.cluster.procs import RUN_MARKER, kill_processes_with_env
from tests.cluster.provisioner import Provisioner

__all__ = [
    "PodRun",
    "Unsupported",
    "expand_vars",
    "logs_object",
    "main",
    "termination_message",
]

PODNS = Path(__file__).with_name("podns.py")
STANDINS = Path(__file__).resolve().parents[1] / "standins"
#: Every process of a pod carries this in its environment, so that all of them can be found and
#: stopped together when the pod ends (what a kubelet does with the container's cgroup).
POD_MARKER = "KILN_TEST_POD_UID"
MAX_MESSAGE = 4096  # what a kubelet keeps of a termination message
FALLBACK_LOG_BYTES = 2048
FALLBACK_LOG_LINES = 80
#: kwok's Logs API (``enableCRDs: [Logs]``): which file kwok's kubelet endpoint serves for a pod.
KWOK_GROUP, KWOK_VERSION, KWOK_LOGS = "kwok.x-k8s.io", "v1alpha1", "logs"

log = logging.getLogger("kiln-test-executor")


class Unsupported(Exception):
    """The pod uses something this executor does not implement (the pod is failed with it)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Expand ``$(VAR)`` references as a kubelet does (``$$`` escapes; unknown refs stay)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, text)


def termination_message(file_text: str, log_tail: str, exit_code: int, policy: str) -> str:
    """The message a kubelet would report.

    Args:
        file_text: Content of the terminationMessagePath file.
        log_tail: The end of the container's log.
        exit_code: The container's exit code.
        policy: ``File`` or ``FallbackToLogsOnError``.
    """
    message = file_text[:MAX_MESSAGE]
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = log_tail.splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message


def _tail_bytes(path: Path, size: int) -> bytes:
    """The whole records among the last ``size`` bytes of a log file."""
    with path.open("rb") as f:
        start = max(f.seek(0, os.SEEK_END) - size, 0)
        f.seek(start)
        data = f.read()
    return data.partition(b"\n")[2] if start else data


def logs_object(pod: Any, container: str, log_file: Path) -> dict[str, Any]:
    """The kwok ``Logs`` object that serves ``log_file`` as ``container``'s log of ``pod``.

    Named after the pod (kwok looks it up by the pod's namespace and name) and owned by it.
    """
    m = pod.metadata
    owner = {"apiVersion": "v1", "kind": "Pod", "name": m.name, "uid": m.uid}
    return {
        "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
        "kind": "Logs",
        "metadata": {"name": m.name, "namespace": m.namespace, "ownerReferences": [owner]},
        "spec": {"logs": [{"containers": [container], "logsFile": str(log_file), "follow": True}]},
    }


@dataclass
class PodRun:
    """One pod's run: its files, its process and its result."""

    pod: Any
    core: Any
    run_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    started_at: str = ""
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.pod.metadata.namespace}/{self.pod.metadata.name}"

    @property
    def dir(self) -> Path:
        """This pod's scratch directory."""
        m = self.pod.metadata
        return self.run_dir / "executor" / f"{m.namespace}_{m.name}_{m.uid[:8]}"

    # -- environment -------------------------------------------------------------------------

    def _config_map(self, name: str, optional: bool) -> dict[str, bytes]:
        try:
            cm = self.core.read_namespaced_config_map(name, self.pod.metadata.namespace)
        except Exception as exc:
            if optional:
                return {}
            raise Unsupported(f"configmap {name!r}: {exc}") from exc
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
        return data

    def _secret(self, name: str, optional: bool) -> dict[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, self.pod.metadata.namespace)
        except Exception as exc:
            if optional:
                return {}
            raise Unsupported(f"secret {name!r}: {exc}") from exc
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _field(self, path: str) -> str:
        m, spec = self.pod.metadata, self.pod.spec
        fields = {
            "metadata.name": m.name,
            "metadata.namespace": m.namespace,
            "metadata.uid": m.uid,
            "spec.nodeName": spec.node_name,
            "spec.serviceAccountName": spec.service_account_name,
            "status.podIP": self.pod.status.pod_ip or "",
            "status.hostIP": self.pod.status.host_ip or "",
        }
        label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if label:
            source = (m.labels if label.group(1) == "labels" else m.annotations) or {}
            return str(source.get(label.group(2), ""))
        if path not in fields:
            raise Unsupported(f"fieldRef {path!r}")
        return str(fields[path] or "")

    def _env_value(self, var: Any, env: dict[str, str]) -> str | None:
        if var.value_from is None:
            return expand_vars(var.value or "", env)
        src = var.value_from
        if src.secret_key_ref is not None:
            ref = src.secret_key_ref
            value = self._secret(ref.name, bool(ref.optional)).get(ref.key)
        elif src.config_map_key_ref is not None:
            ref = src.config_map_key_ref
            value = self._config_map(ref.name, bool(ref.optional)).get(ref.key)
        elif src.field_ref is not None:
            return self._field(src.field_ref.field_path)
        else:
            raise Unsupported(
                f"env {var.name}: only value, secretKeyRef, configMapKeyRef, fieldRef"
            )
        if value is None and not getattr(ref, "optional", False):
            raise Unsupported(f"env {var.name}: key {ref.key!r} not found in {ref.name!r}")
        return None if value is None else value.decode()

    def environment(self, container: Any) -> dict[str, str]:
        """The container's environment, resolved as a kubelet would."""
        env: dict[str, str] = {}
        for src in container.env_from or []:
            if src.config_map_ref is not None:
                data = self._config_map(src.config_map_ref.name, bool(src.config_map_ref.optional))
            else:
                data = self._secret(src.secret_ref.name, bool(src.secret_ref.optional))
            env |= {(src.prefix or "") + k: v.decode() for k, v in data.items()}
        for var in container.env or []:
            value = self._env_value(var, env)
            if value is not None:
                env[var.name] = value
        return env

    # -- volumes -----------------------------------------------------------------------------

    def _write_files(self, target: Path, data: dict[str, bytes], items: Any, mode: int) -> None:
        target.mkdir(parents=True, exist_ok=True)
        chosen = {i.key: i.path for i in items} if items else {k: k for k in data}
        for key, rel in chosen.items():
            if key not in data:
                raise Unsupported(f"volume {target.name}: key {key!r} not found")
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])
            path.chmod(mode)

    def _sa_token(self, source: Any) -> bytes:
        m = self.pod.metadata
        body = {
            "spec": {
                "audiences": [source.audience] if source.audience else None,
                "expirationSeconds": source.expiration_seconds or 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": m.name, "uid": m.uid},
            }
        }
        sa = self.pod.spec.service_account_name or "default"
        result = self.core.create_namespaced_service_account_token(sa, m.namespace, body)
        return str(result.status.token).encode()

    def _downward(self, items: Any) -> dict[str, bytes]:
        data = {}
        for item in items or []:
            if item.field_ref is None:
                raise Unsupported("downwardAPI resourceFieldRef")
            data[item.path] = self._field(item.field_ref.field_path).encode()
        return data

    def _projected(self, target: Path, sources: Any, mode: int) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for src in sources or []:
            if src.service_account_token is not None:
                tok = src.service_account_token
                self._write_files(target, {tok.path: self._sa_token(tok)}, None, 0o644)
            elif src.config_map is not None:
                data = self._config_map(src.config_map.name, bool(src.config_map.optional))
                self._write_files(target, data, src.config_map.items, mode)
            elif src.secret is not None:
                data = self._secret(src.secret.name, bool(src.secret.optional))
                self._write_files(target, data, src.secret.items, mode)
            elif src.downward_api is not None:
                data = self._downward(src.downward_api.items)
                self._write_files(target, data, None, mode)
            else:
                raise Unsupported(f"projected volume source {src.to_dict()}")

    def volume_source(self, volume: Any) -> Path:
        """Materialise one volume; return the host directory that backs it."""
        target = self.dir / "volumes" / volume.name
        ns = self.pod.metadata.namespace
        if volume.persistent_volume_claim is not None:
            target = self.run_dir / "pvc" / ns / volume.persistent_volume_claim.claim_name
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
        elif volume.config_map is not None:
            cm = volume.config_map
            mode = cm.default_mode or 0o644
            self._write_files(target, self._config_map(cm.name, bool(cm.optional)), cm.items, mode)
        elif volume.secret is not None:
            s = volume.secret
            mode = s.default_mode or 0o644
            data = self._secret(s.secret_name, bool(s.optional))
            self._write_files(target, data, s.items, mode)
        elif volume.empty_dir is not None:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
        elif volume.projected is not None:
            self._projected(
                target, volume.projected.sources, volume.projected.default_mode or 0o644
            )
        elif volume.downward_api is not None:
            self._write_files(target, self._downward(volume.downward_api.items), None, 0o644)
        elif volume.host_path is not None:
            target = Path(volume.host_path.path)
        else:
            raise Unsupported(f"volume {volume.name}: type not supported by the test executor")
        return target

    def mounts(self, container: Any) -> list[dict[str, Any]]:
        """Bind mounts (host source, pod target, read-only) for the container's volumeMounts."""
        sources = {v.name: self.volume_source(v) for v in self.pod.spec.volumes or []}
        mounts = []
        for vm in container.volume_mounts or []:
            if vm.name not in sources:
                raise Unsupported(f"volumeMount {vm.name}: no such volume")
            source = sources[vm.name] / vm.sub_path if vm.sub_path else sources[vm.name]
            if vm.sub_path and not source.exists():
                source.mkdir(parents=True)
            mounts.append(
                {"source": str(source), "target": vm.mount_path, "read_only": bool(vm.read_only)}
            )
        return mounts

    # -- running -----------------------------------------------------------------------------

    def _ids(self, container: Any) -> tuple[int | None, int | None]:
        pod_sc, c_sc = self.pod.spec.security_context, container.security_context
        uid = (c_sc and c_sc.run_as_user) or (pod_sc and pod_sc.run_as_user)
        gid = (c_sc and c_sc.run_as_group) or (pod_sc and pod_sc.run_as_group)
        if uid is not None and gid is None:
            gid = uid
        return uid, gid

    def spec_for(self, container: Any, base: Path | None = None) -> dict[str, Any]:
        """The podns.py spec for the container; its private layers live under ``base``."""
        base = base or self.dir
        env = self.environment(container)
        argv = [expand_vars(a, env) for a in (container.command or []) + (container.args or [])]
        if not argv:
            raise Unsupported(
                "the container has no command: the image's entrypoint is unknown here"
            )
        uid, gid = self._ids(container)
        base_env = {
            # The image's PATH is unknown; the test machine's (virtual environment first) stands in.
            "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOSTNAME": self.pod.metadata.name,
            "HOME": "/root" if not uid else "/",
            # Lets the launcher find and stop anything the command leaves running.
            RUN_MARKER: str(self.run_dir),
            POD_MARKER: self.pod.metadata.uid,
            # The "image" of a local-exec node has TensorRT-LLM, as the job image does: here,
            # the labelled stand-in.
            "PYTHONPATH": str(STANDINS),
        }
        term_file = base / "termination-log"
        term_file.touch()
        term_file.chmod(0o666)
        mounts = self.mounts(container)
        mounts.append({"source": str(term_file), "target": container.termination_message_path
                       or "/dev/termination-log", "read_only": False})  # fmt: skip
        mounts.append({"source": str(self._hosts(base)), "target": "/etc/hosts",
                       "read_only": True})  # fmt: skip
        for name in ("root", "upper", "work", "tmp"):
            (base / name).mkdir(parents=True, exist_ok=True)
        (base / "tmp").chmod(0o1777)
        return {
            "root": str(base / "root"), "upper": str(base / "upper"),
            "work": str(base / "work"), "tmp": str(base / "tmp"),
            "mounts": mounts, "workdir": container.working_dir or "/",
            "argv": argv, "env": base_env | env, "uid": uid, "gid": gid,
        }  # fmt: skip

    def _hosts(self, base: Path) -> Path:
        """An /etc/hosts that resolves the namespace's Services, as cluster DNS would. Executor
        pods share this machine's network and a Service's port is its pods' port here (there is
        no kube-proxy), so `NAME.NAMESPACE.svc` is 127.0.0.1."""
        namespace = self.pod.metadata.namespace
        lines = [Path("/etc/hosts").read_text().rstrip("\n")]
        for service in self.core.list_namespaced_service(namespace).items:
            host = f"{service.metadata.name}.{namespace}.svc"
            lines.append(f"127.0.0.1 {host} {host}.cluster.local {service.metadata.name}")
        hosts = base / "hosts"
        hosts.write_text("\n".join(lines) + "\n")
        return hosts

    def run(self) -> None:
        """Run the first container to the end and report the result in the pod's status."""
        try:
            self._run()
        except Exception as exc:  # never leave the pod Running forever on our own bug
            log.exception("%s: test executor failure", self.key)
            self._report(128, f"test executor failure: {exc}", "ContainerCannotRun")

    def _run(self) -> None:
        container = self.pod.spec.containers[0]
        self.dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / f"{container.name}.log"
        self.started_at = _now()
        try:
            spec = self.spec_for(container)
        except Unsupported as exc:
            log.error("%s: %s", self.key, exc)
            self._report(128, f"test executor: {exc}", "ContainerCannotRun")
            return
        spec_path = self.dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        log_file = CriLog(log_path)
        self._publish_log(container.name, log_path)
        log.info("%s: running %s (log %s)", self.key, spec["argv"], log_path)
        try:
            code = self._execute(spec_path, log_file)
        finally:
            log_file.close()
        self.exit_code = 128 - code if code < 0 else code  # killed by a signal: 128 + signo
        if self.stopping.is_set():
            return
        file_text = (self.dir / "termination-log").read_text(errors="replace")
        tail = decode(_tail_bytes(log_path, 32768))
        policy = container.termination_message_policy or "File"
        message = termination_message(file_text, tail, self.exit_code, policy)
        self._report(self.exit_code, message, "Completed" if self.exit_code == 0 else "Error")
        log.info("%s: exited %d", self.key, self.exit_code)
        self._cleanup()

    def _execute(self, spec_path: Path, log_file: CriLog) -> int:
        """Run the container's process; relay its stdout and stderr into ``log_file``."""
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "SIGKILL", "--",
             "unshare", "--mount", "--propagation", "private", "--",
             sys.executable, str(PODNS), str(spec_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        relays = []
        for stream, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            assert pipe is not None
            relay = threading.Thread(
                target=log_file.relay, args=(stream, pipe.fileno()), daemon=True,
                name=f"{self.key} {stream}",
            )  # fmt: skip
            relay.start()
            relays.append(relay)
        code = self.proc.wait()
        # As when a container's main process exits: whatever it left running goes too.
        kill_processes_with_env(POD_MARKER, self.pod.metadata.uid)
        for relay in relays:  # the pipes reach end of file once every writer is gone
            relay.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            pipe.close()
        return code

    def _publish_log(self, container: str, log_path: Path) -> None:
        """Create (or replace) the kwok Logs object that serves the log through the API."""
        from kubernetes import client

        api = client.CustomObjectsApi(self.core.api_client)
        body = logs_object(self.pod, container, log_path)
        ns, name = self.pod.metadata.namespace, self.pod.metadata.name
        try:
            try:
                api.create_namespaced_custom_object(KWOK_GROUP, KWOK_VERSION, ns, KWOK_LOGS, body)
            except client.ApiException as exc:
                if exc.status != 409:  # a pod of the same name ran before
                    raise
                old: dict[str, Any] = api.get_namespaced_custom_object(
                    KWOK_GROUP, KWOK_VERSION, ns, KWOK_LOGS, name
                )  # type: ignore[assignment]
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                api.replace_namespaced_custom_object(
                    KWOK_GROUP, KWOK_VERSION, ns, KWOK_LOGS, name, body
                )
        except Exception as exc:  # the pod still runs; only `kubectl logs` will not show it
            log.warning("%s: could not publish the log to kwok: %s", self.key, exc)

    def stop(self, grace: float) -> None:
        """Stop the process (the pod was deleted): SIGTERM, then SIGKILL after ``grace``."""
        self.stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        kill_processes_with_env(POD_MARKER, self.pod.metadata.uid)

    def _cleanup(self) -> None:
        # The container's private layers go; the log and termination message stay for debugging.
        for name in ("root", "upper", "work", "tmp", "volumes"):
            shutil.rmtree(self.dir / name, ignore_errors=True)

    def _report(self, code: int, message: str, reason: str) -> None:
        phase, ready_reason = (
            ("Succeeded", "PodCompleted") if code == 0 else ("Failed", "PodFailed")
        )
        now = _now()
        statuses = []
        for i, c in enumerate(self.pod.spec.containers):
            term = {"exitCode": code, "reason": reason, "message": message,
                    "startedAt": self.started_at, "finishedAt": now}  # fmt: skip
            if i > 0:
                term = {"exitCode": 0, "reason": "NotRunByTestExecutor",
                        "startedAt": self.started_at, "finishedAt": now}  # fmt: skip
            statuses.append({"name": c.name, "image": c.image, "ready": False,
                             "restartCount": 0, "started": False,
                             "state": {"terminated": term}})  # fmt: skip
        body = {
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": kind, "status": "False", "reason": ready_reason,
                     "lastTransitionTime": now}
                    for kind in ("Ready", "ContainersReady")
                ],
                "containerStatuses": statuses,
            }
        }  # fmt: skip
        m = self.pod.metadata
        try:
            self.core.patch_namespaced_pod_status(
                m.name, m.namespace, body, _content_type="application/strategic-merge-patch+json"
            )
        except Exception as exc:  # the pod may be gone already; nothing left to tell
            log.warning("%s: could not report the result: %s", self.key, exc)


@dataclass
class ServicePodRun(PodRun):
    """A long-running pod (a Deployment's): every container runs, and the pod reports Ready once
    each container's readiness probe answers, as a kubelet does. A container that exits ends
    the pod's run (no restarts)."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started_at = _now()
        containers = list(self.pod.spec.containers)
        try:
            specs = [self._write_spec(c) for c in containers]
        except Unsupported as exc:
            log.error("%s: %s", self.key, exc)
            self._report(128, f"test executor: {exc}", "ContainerCannotRun")
            return
        logs = [self.dir / f"{c.name}.log" for c in containers]
        self._publish_log(containers[0].name, logs[0])
        for init in self.pod.spec.init_containers or []:
            if not self._run_init(init):
                return
        for spec, path in zip(specs, logs, strict=True):
            self.procs.append(self._spawn(spec, CriLog(path)))
        log.info("%s: running %d containers", self.key, len(self.procs))
        self._watch(containers, logs)

    def _run_init(self, container: Any) -> bool:
        """Run an init container to its end, as a kubelet does before the containers start."""
        log_path = self.dir / f"{container.name}.log"
        proc = self._spawn(self._write_spec(container), CriLog(log_path))
        self.procs.append(proc)
        while proc.poll() is None:
            if self.stopping.wait(0.5):
                return False
        self.procs.remove(proc)
        if proc.returncode == 0:
            return True
        tail = decode(_tail_bytes(log_path, 4096))[-FALLBACK_LOG_BYTES:]
        log.info("%s: init container %s exited %d", self.key, container.name, proc.returncode)
        self._report_init_failure(container, proc.returncode, tail)
        return False

    def _report_init_failure(self, container: Any, code: int, message: str) -> None:
        now = _now()
        terminated = {"exitCode": code, "reason": "Error", "message": message,
                      "startedAt": self.started_at, "finishedAt": now}  # fmt: skip
        body = {
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": kind, "status": "False", "reason": "ContainersNotInitialized",
                     "lastTransitionTime": now}
                    for kind in ("Initialized", "Ready", "ContainersReady")
                ],
                "initContainerStatuses": [
                    {"name": container.name, "image": container.image, "ready": False,
                     "restartCount": 0, "state": {"terminated": terminated}}
                ],
            }
        }  # fmt: skip
        m = self.pod.metadata
        try:
            self.core.patch_namespaced_pod_status(
                m.name, m.namespace, body, _content_type="application/strategic-merge-patch+json"
            )
        except Exception as exc:
            log.warning("%s: could not report the init failure: %s", self.key, exc)

    def _write_spec(self, container: Any) -> Path:
        base = self.dir / container.name
        base.mkdir(parents=True, exist_ok=True)
        path = base / "spec.json"
        path.write_text(json.dumps(self.spec_for(container, base)))
        return path

    def _spawn(self, spec_path: Path, log_file: CriLog) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "SIGKILL", "--",
             "unshare", "--mount", "--propagation", "private", "--",
             sys.executable, str(PODNS), str(spec_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            assert pipe is not None
            threading.Thread(
                target=log_file.relay, args=(stream, pipe.fileno()), daemon=True,
                name=f"{self.key} {stream}",
            ).start()  # fmt: skip
        return proc

    def _watch(self, containers: list[Any], logs: list[Path]) -> None:
        """Report readiness as the probes change; end when a container exits or on stop."""
        ready: bool | None = None
        while not self.stopping.wait(1.0):
            for container, proc, log_path in zip(containers, self.procs, logs, strict=True):
                code = proc.poll()
                if code is not None:
                    tail = decode(_tail_bytes(log_path, 4096))
                    self.exit_code = code
                    log.info("%s: container %s exited %d", self.key, container.name, code)
                    self._report(code, tail[-FALLBACK_LOG_BYTES:], "Error")
                    self.stop(grace=5)
                    return
            now_ready = all(self._probe(c) for c in containers)
            if now_ready != ready:
                self._report_running(containers, now_ready)
                ready = now_ready

    def _probe(self, container: Any) -> bool:
        probe = container.readiness_probe
        if probe is None or probe.http_get is None:
            return True
        port = probe.http_get.port
        if isinstance(port, str) and not port.isdigit():
            port = next(p.container_port for p in container.ports or [] if p.name == port)
        url = f"http://127.0.0.1:{port}{probe.http_get.path or '/'}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return 200 <= response.status < 400
        except OSError:
            return False

    def _report_running(self, containers: list[Any], ready: bool) -> None:
        now = _now()
        state = "True" if ready else "False"
        body = {
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": kind, "status": state, "lastTransitionTime": now}
                    for kind in ("Ready", "ContainersReady")
                ],
                "containerStatuses": [
                    {"name": c.name, "image": c.image, "ready": ready, "restartCount": 0,
                     "started": True, "state": {"running": {"startedAt": self.started_at}}}
                    for c in containers
                ],
            }
        }  # fmt: skip
        m = self.pod.metadata
        try:
            self.core.patch_namespaced_pod_status(
                m.name, m.namespace, body, _content_type="application/strategic-merge-patch+json"
            )
            log.info("%s: %s", self.key, "Ready" if ready else "not ready")
        except Exception as exc:  # the pod may be gone already
            log.warning("%s: could not report readiness: %s", self.key, exc)

    def stop(self, grace: float) -> None:
        """Stop every container (the pod was deleted): SIGTERM, then SIGKILL after ``grace``."""
        self.stopping.set()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_processes_with_env(POD_MARKER, self.pod.metadata.uid)


class Executor:
    """Polls the API for pods on local-exec nodes; runs each once; stops those deleted."""

    def __init__(self, core: Any, run_dir: Path, label: str = f"{LOCAL_EXEC_LABEL}=true") -> None:
        self.core = core
        self.run_dir = run_dir
        self.provisioner = Provisioner(core, run_dir)
        self.label = label
        self.runs: dict[str, PodRun] = {}
        self.threads: list[threading.Thread] = []
        self.shutdown = threading.Event()

    def _local_nodes(self) -> list[str]:
        return [n.metadata.name for n in self.core.list_node(label_selector=self.label).items]

    def _pods(self, node: str) -> list[Any]:
        return list(
            self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        )

    def poll(self) -> None:
        """One pass: start runs for new Running pods, stop runs of deleted pods."""
        seen = set()
        for node in self._local_nodes():
            for pod in self._pods(node):
                uid = pod.metadata.uid
                seen.add(uid)
                if pod.metadata.deletion_timestamp is not None:
                    self._stop(uid, pod.spec.termination_grace_period_seconds or 30)
                elif pod.status.phase == "Running" and uid not in self.runs:
                    self._start(pod)
        for uid in list(self.runs):
            if uid not in seen:
                self._stop(uid, 0)

    def _start(self, pod: Any) -> None:
        uid = pod.metadata.uid
        service = pod.spec.restart_policy != "Never"
        run = (ServicePodRun if service else PodRun)(pod, self.core, self.run_dir)
        self.runs[uid] = run
        thread = threading.Thread(target=run.run, name=run.key, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _stop(self, uid: str, grace: float) -> None:
        run = self.runs.get(uid)
        if run is not None and not run.stopping.is_set() and run.exit_code is None:
            log.info("%s: pod deleted, stopping its process", run.key)
            threading.Thread(target=run.stop, args=(grace,), daemon=True).start()

    def serve(self, interval: float = 0.3) -> None:
        """Poll until :attr:`shutdown` is set, then stop every process."""
        while not self.shutdown.wait(interval):
            try:
                self.poll()
                self.provisioner.poll()
            except Exception as exc:  # the API server may be restarting; try again
                log.warning("poll failed: %s", exc)
        for run in self.runs.values():
            run.stop(grace=5)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Test-only local executor for kwok pods.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(args.kubeconfig, client_configuration=configuration)
    executor = Executor(client.CoreV1Api(client.ApiClient(configuration)), args.run_dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: executor.shutdown.set())
    log.info("test executor watching nodes %s", executor.label)
    executor.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
