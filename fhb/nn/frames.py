"""Frame arithmetic of the convolutional front-end: the one place that maps samples to frames.

The teacher, the lake index and the student all call :func:`conv_output_length`, so a frame count
means the same everywhere (16000 samples give 49 HuBERT frames, not ``16000 // 320 = 50``).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the tensor functions only: the lake (numpy) uses this module
    import torch

ConvSpec = tuple[int, int, int]
"""One conv layer of the feature extractor: ``(channels, kernel, stride)``."""

HUBERT_CONV_LAYERS: list[ConvSpec] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
"""The conv stack of wav2vec 2.0 / HuBERT (Base and Large): stride 320, receptive field 400."""

MAX_CONV_LAYERS = 1000
"""More conv layers than any config :func:`parse_conv_layers` accepts (real ones have 7)."""


def parse_conv_layers(spec: str | Sequence[Sequence[int]]) -> list[ConvSpec]:
    """Parse fairseq's ``conv_feature_layers`` string without ``eval``.

    Accepts exactly the expression language the published configs use: lists of int tuples
    joined by ``+`` and repeated by ``* int`` (``'[(512, 10, 5)] + [(512, 3, 2)] * 4'``).
    Already-parsed sequences pass through after validation.

    Raises:
        ValueError: naming the string when it is anything else.
    """
    if isinstance(spec, str):
        try:
            tree = ast.parse(spec.strip(), mode="eval")
            value = _eval_layer_expr(tree.body)
            if not isinstance(value, list):
                raise ValueError(f"a {type(value).__name__}, not a list of layers")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise ValueError(
                f"conv layer spec {spec!r} is not of the form '[(dim, kernel, stride)] * n + ...': {exc}"
            ) from None
    else:
        value = list(spec)
    layers: list[ConvSpec] = []
    for layer in value:
        if (
            not isinstance(layer, (tuple, list))
            or len(layer) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer)
        ):
            raise ValueError(
                f"conv layer {layer!r} in {spec!r} is not a (dim, kernel, stride) triple of positive ints"
            )
        layers.append((int(layer[0]), int(layer[1]), int(layer[2])))
    if not layers:
        raise ValueError(f"conv layer spec {spec!r} has no layers")
    return layers


def _eval_layer_expr(node: ast.AST) -> list:
    """Evaluate list/tuple/int literals joined by ``+`` and ``*`` (nothing else)."""
    if isinstance(node, ast.List):
        return [_eval_layer_expr(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_eval_layer_expr(e) for e in node.elts)  # type: ignore[return-value]
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value  # type: ignore[return-value]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _eval_layer_expr(node.left), _eval_layer_expr(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int):
            return _repeat(left, right)
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, list):
            return _repeat(right, left)
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")


def _repeat(layers: list, times: int) -> list:
    """``layers * times``, refusing results no real config has (a hostile one could ask for 10**9)."""
    if len(layers) * times > MAX_CONV_LAYERS:
        raise ValueError(f"{len(layers)} x {times} layers: expected at most {MAX_CONV_LAYERS} conv layers")
    return layers * times


def conv_output_length(num_samples: int, conv_layers: Sequence[ConvSpec] = HUBERT_CONV_LAYERS) -> int:
    """Number of frames the conv stack produces for ``num_samples`` samples (0 if too short)."""
    n = int(num_samples)
    for _, kernel, stride in conv_layers:
        n = (n - kernel) // stride + 1
        if n <= 0:
            return 0
    return n


def conv_output_lengths(lengths: torch.Tensor, conv_layers: Sequence[ConvSpec]) -> torch.Tensor:
    """Vectorised :func:`conv_output_length` for a ``B`` tensor of sample counts."""
    import torch

    n = lengths.to(torch.long)
    for _, kernel, stride in conv_layers:
        n = torch.div(n - kernel, stride, rounding_mode="floor") + 1
    return n.clamp(min=0)


def total_stride(conv_layers: Sequence[ConvSpec]) -> int:
    """Samples per frame of the stack (320 for HuBERT and FitHuBERT)."""
    stride = 1
    for _, _, s in conv_layers:
        stride *= s
    return stride


def receptive_field(conv_layers: Sequence[ConvSpec]) -> int:
    """Samples seen by one output frame (400 for HuBERT and FitHuBERT)."""
    field, jump = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``B`` valid lengths -> ``B x T`` bool mask, True where a position is padding."""
    import torch

    max_len = int(lengths.max()) if max_len is None else max_len
    steps = torch.arange(max_len, device=lengths.device)
    return steps[None, :] >= lengths[:, None]
