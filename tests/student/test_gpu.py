"""The student on CUDA: devices of lengths and masks, fp16 autocast, CPU parity (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from fhb.student import DistillLoss, FitConfig, FitHuBERT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_padded_batch_on_cuda_matches_cpu(tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    tiny_model.eval()
    wavs, lengths = torch.randn(3, 16640), torch.tensor([16640, 9000, 3000])
    targets = torch.randn(3, 3, 51, 64)
    loss = DistillLoss(tiny_config.loss, 3, student=tiny_config.distiller)
    with torch.no_grad():
        cpu = tiny_model(wavs, lengths)
        cpu_loss = loss(cpu, targets).total
        model = tiny_model.cuda()
        gpu = model(wavs.cuda(), lengths.cuda())
        gpu_loss = loss(gpu, targets.cuda()).total
    assert gpu.hidden_padding_mask is not None and gpu.hidden_padding_mask.is_cuda
    assert gpu.projection_lengths.tolist() == cpu.projection_lengths.tolist()
    for a, b in zip(gpu.projections, cpu.projections):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, atol=1e-4, rtol=1e-4)


def test_fp16_autocast_training_step(tiny_model: FitHuBERT, tiny_config: FitConfig) -> None:
    model = tiny_model.cuda().train()
    loss = DistillLoss(tiny_config.loss, 3, student=tiny_config.distiller)
    wavs, lengths = torch.randn(2, 16000, device="cuda"), torch.tensor([16000, 8000], device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        result = loss(model(wavs, lengths), {k: torch.randn(2, 49, 64, device="cuda") for k in (1, 2, 3)})
    result.total.backward()
    assert torch.isfinite(result.total)
    assert model.feature_extractor.conv_layers[0][0].weight.grad is not None
