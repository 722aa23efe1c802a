"""The transformer encoder of the wav2vec 2.0 family: positional conv, LayerNorm, layers."""

from __future__ import annotations

import torch
from torch import nn



class TransformerEncoder(nn.Module):
    """``pos_conv`` + ``layer_norm`` + ``layers``, fairseq-named (``encoder.pos_conv.0.weight_g``,
    ``encoder.layer_norm.weight``, ``encoder.layers.3.self_attn.q_proj.weight``).

    Post-LN models (``layer_norm_first=False``, HuBERT/wav2vec 2.0 Base) normalise after adding the
    positional embedding; pre-LN models (Large) normalise the last layer's output instead.

    Args:
        pos_conv: ``B x D x T -> B x D x T`` positional convolution (None: none, e.g. conformer
            layers with relative or rotary positions).
        layers: the transformer layers.
        layer_norm_first: pre-LN (True) or post-LN (False).
        dropout: dropout after the embedding.
        layerdrop: probability of skipping a layer in training.
        dim: model dimension ``D`` (default: the first layer's ``fc1`` input size).
    """

    def __init__(
        self,
        pos_conv: nn.Module | None,
        layers: nn.ModuleList,
        layer_norm_first: bool,
        dropout: float = 0.1,
        layerdrop: float = 0.0,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if not len(layers):
            raise ValueError("Expected at least one transformer layer. Found: 0")
        dim = layers[0].fc1.in_features if dim is None else dim
        self.pos_conv = pos_conv  # fairseq's registration order: pos_conv, layers, layer_norm
        self.layers = layers
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = layer_norm_first
        self.dropout = nn.Dropout(dropout)
        self.layerdrop = layerdrop

    def embed(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Add the positional embedding: ``B x T x D`` -> ``B x T x D``.

        Padded frames are zeroed first, so an utterance gets the same result alone or padded.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x)

    def run_layer(
        self, index: int, x: torch.Tensor, padding_mask: torch.Tensor | None, pos_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Layer ``index`` (0-based) on ``B x T x D``, honouring layerdrop in training; ``pos_emb``
        (relative positions) is passed on to layers that take it."""
        if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
            return x
        if pos_emb is not None:
            return self.layers[index](x, padding_mask, pos_emb)
        return self.layers[index](x, padding_mask)

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, num_layers: int | None = None
    ) -> list[torch.Tensor]:
        """Run the encoder.

        Args:
            x: ``B x T x D`` frame features (after ``post_extract_proj``).
            padding_mask: ``B x T`` bool, True at padding.
            num_layers: stop after this many layers (all when None).

        Returns:
            The output of each layer run, ``B x T x D`` each, as fairseq's
            ``encoder.layers[i]`` returns it (before the final LayerNorm of pre-LN models;
            apply :meth:`final_norm` to the last one for the model's output).
        """
        num_layers = len(self.layers) if num_layers is None else num_layers
        x = self.embed(x, padding_mask)
        outputs = []
        for index in range(num_layers):
            x = self.run_layer(index, x, padding_mask)
            outputs.append(x)
        return outputs

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output from the last layer's: LayerNorm for pre-LN, identity for post-LN."""
        return self.layer_norm(x) if self.layer_norm_first else x
