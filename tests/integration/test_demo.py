"""`make demo` as a user runs it: `kiln run -f examples/quickstart.yaml`, the real thing end to
end (SmolLM2, FP8, the gate, export, a real tritonserver), from the command line."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tritonservers() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "tritonserver"]


def test_make_demo_runs_the_quickstart_end_to_end(tmp_path: Path) -> None:
    before = set(_tritonservers())
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "kiln"), "run", "-f", str(REPO / "examples/quickstart.yaml"),
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=3600, cwd=REPO,
    )  # fmt: skip
    report = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kiln_progress" not in report, "a person reads bars, not JSON lines"
    assert "perplexity" in report and "gate 5%" in report
    assert "generated" in report
    assert "served text equals the checkpoint's greedy continuation: yes" in report
    assert (tmp_path / "demo" / "artifacts").is_dir()
    published = next((tmp_path / "demo" / "artifacts").iterdir())
    assert (published / "manifest.json").is_file()
    assert set(_tritonservers()) <= before, "kiln run left a tritonserver behind"

    # The same spec again: already published, straight to serving.
    again = subprocess.run(
        [str(REPO / ".venv" / "bin" / "kiln"), "run", "-f", str(REPO / "examples/quickstart.yaml"),
         "--workdir", str(tmp_path / "demo"), "--no-serve"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"published    {published} (reused)" in again.stdout

    # Served on: the OpenAI client users script against talks to `kiln run --keep-serving`.
    _openai_client_against_keep_serving(tmp_path / "demo")


def _openai_client_against_keep_serving(workdir: Path) -> None:
    import signal

    import openai

    server = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "kiln"), "run", "-f", str(REPO / "examples/quickstart.yaml"),
         "--workdir", str(workdir), "--keep-serving"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        seen = []
        for line in server.stdout:
            seen.append(line)
            if line.startswith("openai: "):
                base_url = line.split(" ", 1)[1].strip()
                break
        else:
            raise AssertionError("".join(seen)[-3000:])
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        assert [m.id for m in client.models.list()] == ["model"]
        completion = client.completions.create(
            model="model", prompt="The GNU General Public License is", max_tokens=24,
            temperature=0,
        )  # fmt: skip
        # The same greedy text as the report's smoke request (24 tokens, the checkpoint's own).
        generated = next(line for line in seen if line.strip().startswith("generated"))
        assert completion.choices[0].text == ast.literal_eval(generated.split(None, 1)[1])
        chat = client.chat.completions.create(
            model="model", messages=[{"role": "user", "content": "Name a free software licence."}],
            max_tokens=16, temperature=0,
        )  # fmt: skip
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
