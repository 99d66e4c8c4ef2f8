"""8-bit weights for the diagnoser's language model (torchao weight-only int8).

Only the Linear layers of the text decoder are quantized: they hold most of the weights and are
what every decode step reads, so halving them halves the memory traffic that bounds decoding. The
vision tower (run once per image; its tokens feed the heatmap head), the embeddings and the
output projection (tied to the embeddings in Qwen2.5-VL-3B) and the head keep their dtype.
Works on CPU and CUDA (torchao ships both kernels); needs ``pip install torchao``.
"""

from __future__ import annotations

QUANTIZATIONS = (None, "int8")


def quantize_text_decoder(model, quantization: str | None) -> int:
    """Quantize the text decoder's Linear weights in place; returns how many layers were converted."""
    if quantization is None:
        return 0
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise ImportError("quantization='int8' needs torchao: `pip install torchao` (weight-only int8 on CPU and "
                          "CUDA), or load without quantization") from exc
    import torch

    from .generation import text_model

    layers = text_model(model).layers
    count = sum(isinstance(m, torch.nn.Linear) for m in layers.modules())
    quantize_(layers, Int8WeightOnlyConfig())
    return count
