"""Operator configuration from a file and KILN_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_operator.config import load_config

pytestmark = pytest.mark.unit


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("job_image: a:1\npoll_seconds: 5\nnamespaces: [x]\n")
    config = load_config(
        path,
        {
            "KILN_POLL_SECONDS": "2",
            "KILN_NAMESPACES": "team-a,team-b",
            "KILN_STORE_MOUNTS": "pvc://artifacts=/mnt/{namespace}/artifacts",
            "KILN_JOB_NODE_SELECTOR": '{"pool": "gpu"}',
            "KILN_ENGINE_FALLBACK": "true",
        },
    )
    assert config.job_image == "a:1" and config.poll_seconds == 2
    assert config.namespaces == ["team-a", "team-b"]
    assert config.store_mounts == {"pvc://artifacts": "/mnt/{namespace}/artifacts"}
    assert config.job_node_selector == {"pool": "gpu"} and config.engine_fallback is True


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("poll_seconds: soon\nbogus: 1\n")
    with pytest.raises(SystemExit) as error:
        load_config(path, {})
    message = str(error.value)
    assert message.startswith("kiln operator: invalid config:")
    assert "poll_seconds" in message and "bogus" in message


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as error:
        load_config(tmp_path / "missing.yaml", {})
    assert "cannot read config" in str(error.value)
