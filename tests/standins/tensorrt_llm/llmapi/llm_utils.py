"""TEST-ONLY stand-in for `tensorrt_llm.llmapi.llm_utils` (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DecodingConfig", "update_llm_args_with_extra_dict"]

# decoding_type values `from_dict` accepts in 1.0, and main's alias.
_DECODING_TYPES = {
    "MTP", "Medusa", "Eagle", "Eagle3", "Lookahead", "NGram", "DraftTarget", "UserProvided",
    "AUTO",
}  # fmt: skip
_DRAFT_TYPES = {"Eagle", "Eagle3", "DraftTarget"}


@dataclass
class DecodingConfig:
    """A speculative_config as `DecodingBaseConfig.from_dict` builds it."""

    decoding_type: str
    max_draft_len: int | None = None
    speculative_model_dir: str | None = None
    eagle3_one_model: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecodingConfig:
        """Validate and build, as upstream does; unknown keys and types are refused."""
        values = dict(values)
        kind = values.pop("decoding_type", None)
        if kind not in _DECODING_TYPES:
            raise ValueError(f"speculative_config: unknown decoding_type {kind!r}")
        if "speculative_model" in values:  # main's name for the draft directory
            values["speculative_model_dir"] = values.pop("speculative_model")
        unknown = set(values) - {"max_draft_len", "speculative_model_dir", "eagle3_one_model"}
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {sorted(unknown)}")
        config = cls(decoding_type="Eagle" if kind == "Eagle3" else kind, **values)
        if config.decoding_type in _DRAFT_TYPES and not config.speculative_model_dir:
            raise ValueError(f"speculative_config: {kind} needs speculative_model_dir")
        return config

    def check_files(self) -> None:
        """The draft directory must hold a model, as the LLM loads it at start."""
        if self.speculative_model_dir is None:
            return
        if not (Path(self.speculative_model_dir) / "config.json").is_file():
            raise ValueError(f"speculative_model_dir {self.speculative_model_dir} holds no model")


def update_llm_args_with_extra_dict(
    llm_args: dict[str, Any],
    llm_args_dict: dict[str, Any],
    extra_llm_api_options: str | None = None,
) -> dict[str, Any]:
    """Merge `llm_args_dict` (model.yaml) into `llm_args`, building the config objects."""
    merged = {**llm_args, **llm_args_dict}
    if isinstance(merged.get("speculative_config"), dict):
        merged["speculative_config"] = DecodingConfig.from_dict(merged["speculative_config"])
    return merged
