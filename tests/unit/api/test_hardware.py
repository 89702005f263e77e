"""GPU product names → generation → what formats run."""

from __future__ import annotations

import pytest

from kiln_operator.hardware import family_of_product, format_support_problem

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("product", "family"),
    [
        ("NVIDIA-H100-80GB-HBM3", "hopper"),
        ("NVIDIA-H200", "hopper"),
        ("NVIDIA-GH200-480GB", "hopper"),
        ("NVIDIA-B200", "blackwell"),
        ("NVIDIA-GB200", "blackwell"),
        ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", "blackwell"),
        ("NVIDIA-L40S", "ada"),
        ("NVIDIA-L4", "ada"),
        ("NVIDIA-A100-SXM4-80GB", "ampere"),
        ("NVIDIA-A10G", "ampere"),
        ("Tesla-T4", "turing"),
        ("Tesla-V100-SXM2-16GB", "volta"),
        ("Some-Future-GPU", None),
    ],
)
def test_family_of_product(product: str, family: str | None) -> None:
    assert family_of_product(product) == family


def test_nvfp4_needs_blackwell() -> None:
    assert format_support_problem("nvfp4", "blackwell") is None
    problem = format_support_problem("nvfp4", "hopper", where="NVIDIA-H100")
    assert problem and "Blackwell" in problem and "NVIDIA-H100" in problem


def test_fp8_on_hopper_and_newer_only() -> None:
    assert format_support_problem("fp8", "hopper") is None
    assert format_support_problem("fp8", "ada") is None
    assert format_support_problem("fp8", "ampere")


def test_unknown_family_is_not_refused() -> None:
    assert format_support_problem("nvfp4", None) is None


def test_kv_cache_suggestion_lists_only_what_runs() -> None:
    problem = format_support_problem("int4_awq", "hopper", kv_cache="nvfp4")
    assert problem and problem.endswith("choose kvCache: none or fp8")


def test_gpu_feature_discovery_family_names() -> None:
    assert format_support_problem("nvfp4", "ada-lovelace")
    assert format_support_problem("fp8", "ada-lovelace") is None
