"""`fhb.pipeline.precision`: one rule for which (device, precision) pairs run."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fhb.errors import FhbError
from fhb.pipeline.precision import PRECISIONS, autocast_context, check_precision, check_precision_name


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_everything_runs_on_cuda(precision: str, device: str | torch.device) -> None:
    check_precision(precision, device, bf16_on_cpu=False)
    check_precision(precision, device, bf16_on_cpu=True)


def test_cpu_rules_training_vs_extraction() -> None:
    check_precision("fp32", "cpu", bf16_on_cpu=False)
    check_precision("bf16", "cpu", bf16_on_cpu=True)  # training autocasts in bf16 on CPU
    with pytest.raises(FhbError, match="--precision bf16 on cpu: expected --device cuda; on cpu use fp32$"):
        check_precision("bf16", "cpu", bf16_on_cpu=False)  # the teacher autocasts on CUDA only
    with pytest.raises(FhbError, match="on cpu use fp32 or bf16$"):
        check_precision("fp16", "cpu", bf16_on_cpu=True)


@pytest.mark.parametrize("bad", ["fp64", "", "FP32"])
def test_unknown_precisions_refused(bad: str) -> None:
    with pytest.raises(FhbError, match="expected one of fp32, fp16, bf16"):
        check_precision_name(bad)
    with pytest.raises(FhbError, match="expected one of fp32, fp16, bf16"):
        check_precision(bad, "cuda", bf16_on_cpu=True)


def test_autocast_context() -> None:
    assert isinstance(autocast_context(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    with autocast_context(torch.device("cpu"), "bf16"):
        y = torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
    assert y.dtype == torch.bfloat16
