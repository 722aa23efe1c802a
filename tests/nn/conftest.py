"""Fixtures for the building-block tests: one thread, a fixed seed, a padded-batch helper."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_seeded() -> Iterator[None]:
    """Small blocks run fastest on one thread; every test starts from seed 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def pad_batch(items: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``T_i x D`` tensors -> ``B x T x D`` batch (padded with ``fill``), ``B`` lengths, ``B x T`` mask."""
    lengths = torch.tensor([len(x) for x in items])
    frames = int(lengths.max())
    batch = torch.full((len(items), frames, *items[0].shape[1:]), fill)
    for i, x in enumerate(items):
        batch[i, : len(x)] = x
    mask = torch.arange(frames)[None, :] >= lengths[:, None]
    return batch, lengths, mask
