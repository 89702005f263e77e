"""The Hugging Face Hub: snapshots of models and datasets, honouring the Job's environment.

`HF_TOKEN` (mapped from a Secret) authenticates gated and private repositories, `HF_HOME` is the
cache, and `HF_HUB_OFFLINE=1` uses only what the cache holds. Every failure becomes one clear
Kiln error.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln_jobs.errors import MissingCredentials, SourceNotFound

__all__ = ["offline", "snapshot"]

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when HF_HUB_OFFLINE asks for the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str = "model",
    allow_patterns: list[str] | None = None,
) -> Path:
    """The local folder of a Hub repository, downloaded unless the cache already has it.

    Raises:
        MissingCredentials: the repository is gated and HF_TOKEN is missing or lacks access.
        SourceNotFound: no such repository or revision, or offline and not cached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token = os.environ.get("HF_TOKEN") or None
    prefix = "hf://datasets/" if repo_type == "dataset" else "hf://"
    where = f"{prefix}{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            token=token,
            local_files_only=offline(),
            allow_patterns=allow_patterns,
        )
    except GatedRepoError as err:
        if token is None:
            raise MissingCredentials(
                f"{where} is gated: set HF_TOKEN (from a Secret) to a token with access"
            ) from err
        raise MissingCredentials(f"{where} is gated and HF_TOKEN has no access to it") from err
    except RepositoryNotFoundError as err:
        hint = "" if token else " (a private repository also needs HF_TOKEN)"
        raise SourceNotFound(f"{where} does not exist{hint}") from err
    except RevisionNotFoundError as err:
        raise SourceNotFound(f"{where}: no such revision") from err
    except LocalEntryNotFoundError as err:
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        reason = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        raise SourceNotFound(
            f"{where} is not in the local cache (HF_HOME={cache}) and {reason}"
        ) from err
    return Path(folder)
