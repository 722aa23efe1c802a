"""`TargetDecoder`: reconstructs a pca/pq/klt lake's targets from their codes on the training device.

The loader copies the stored codes into the batch as they are (``B x L x T x W`` int8 / uint8,
``W`` the widest code of the requested layers; a layer's codes fill its first ``width`` columns)
and never expands them on the CPU; the step calls the decoder on its device:

- ``pca``: one batched matmul ``x = q @ (W * s)^T + mu`` over all layers (each layer's basis is
  zero-padded to ``W`` rows, so whatever the unused columns hold contributes nothing);
- ``klt``: the codes unzigzagged (``u >> 1``, negated where ``u`` is odd), then ``pca``'s matmul;
- ``pq``: per layer a gather of the ``M`` sub-space centroids, concatenated, plus ``mu``.

Frames past each utterance's length are zeroed, like the zero padding of float targets. The
small codec tensors are copied to a device once and cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fhb.storage.fitted import FittedCodec
from fhb.storage.schema import layer_array_name


class TargetDecoder:
    """Codes of teacher ``layers`` (lake order of the batch) -> ``B x L x T x D`` float32 targets.

    Args:
        codecs: ``{array name: FittedCodec}`` of the lake (`fhb.storage.reader.Lake.fitted`).
        layers: the teacher layers the batches hold, in batch order.
    """

    def __init__(self, codecs: Mapping[str, FittedCodec], layers: Sequence[int]) -> None:
        chosen = [codecs[layer_array_name(k)] for k in layers]
        kinds = {c.kind for c in chosen}
        if len(kinds) != 1:
            raise ValueError(f"TargetDecoder: expected one codec kind, found {sorted(kinds)}")
        self.kind = kinds.pop()
        self.layers = tuple(int(k) for k in layers)
        self.dim = chosen[0].dim
        self.width = max(c.width for c in chosen)
        self.widths = tuple(c.width for c in chosen)
        self._mean = torch.stack([torch.from_numpy(c.params["mean"]) for c in chosen])  # L x D
        if self.kind in ("pca", "klt"):
            proj = torch.zeros(len(chosen), self.width, self.dim)  # L x W x D, rows past r_l zero
            for i, c in enumerate(chosen):
                basis, scale = torch.from_numpy(c.params["basis"]), torch.from_numpy(c.params["scale"])
                proj[i, : c.width] = (basis * scale).T
            self._tables: list[torch.Tensor] = [proj]
        else:  # per layer: (M * K) x (D / M) centroids, flattened for one gather
            self._tables = [torch.from_numpy(c.params["centroids"]).reshape(-1, c.params["centroids"].shape[-1])
                            for c in chosen]
            self._k = [int(c.params["centroids"].shape[1]) for c in chosen]
        self._on: dict[torch.device, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        got = self._on.get(device)
        if got is None:
            got = self._on[device] = (self._mean.to(device), [t.to(device) for t in self._tables])
        return got

    def __call__(self, codes: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``codes`` ``B x L x T x W`` (on the target device) -> ``B x L x T x D`` float32 there.

        ``lengths``: ``B`` valid frames per row; later frames are zeroed.
        """
        b, n_layers, t, w = codes.shape
        if n_layers != len(self.layers) or w != self.width:
            raise ValueError(f"TargetDecoder: expected codes B x {len(self.layers)} x T x {self.width}, "
                             f"found {list(codes.shape)}")
        mean, tables = self._tensors(codes.device)
        if self.kind in ("pca", "klt"):
            q = codes.to(torch.float32) if self.kind == "pca" else _unzigzag(codes)
            out = torch.einsum("bltw,lwd->bltd", q, tables[0])
        else:
            parts = []
            for i, (table, k, m) in enumerate(zip(tables, self._k, self.widths)):
                offsets = torch.arange(m, device=codes.device) * k
                idx = codes[:, i, :, :m].to(torch.int64) + offsets  # B x T x M
                parts.append(table[idx].reshape(b, t, self.dim))
            out = torch.stack(parts, dim=1)
        out = out + mean[None, :, None, :]
        if lengths is not None:
            valid = torch.arange(t, device=codes.device)[None, :] < lengths.to(codes.device)[:, None]
            out = out * valid[:, None, :, None].to(out.dtype)
        return out


def _unzigzag(u: torch.Tensor) -> torch.Tensor:
    """klt's uint8 zigzag codes -> float32 signed codes (`fhb.storage.fitted.unzigzag`)."""
    v = u.to(torch.int16)
    half = (v >> 1).to(torch.float32)
    return torch.where((v & 1).bool(), -half - 1.0, half)
