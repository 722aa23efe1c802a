"""Fixtures for the student tests: the tiny config and model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fhb.student import FitConfig, FitHuBERT, build_fit_student, load_packaged_config


@pytest.fixture(scope="session")
def tiny_config() -> FitConfig:
    """fhb/configs/tiny.yaml (matches the tiny random teacher: 3 layers, dim 64)."""
    return load_packaged_config("tiny")


@pytest.fixture
def tiny_model(tiny_config: FitConfig) -> FitHuBERT:
    """A fresh tiny student (seed 0, training layout, train mode)."""
    torch.manual_seed(0)
    return build_fit_student(tiny_config, teacher_dim=64)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (intra-op threads only add contention here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
