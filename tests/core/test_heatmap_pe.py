"""The head's dense positional map is computed in its buffer's dtype (the checkpoint's own code does
so; in bf16 the map differs from an fp32 computation cast to bf16, and the decoder saw the bf16 one)."""

from __future__ import annotations

import math

import torch

from imagedoctor.core.heatmap_head import HeatmapHead, HeatmapHeadConfig, PositionEmbeddingRandom


def reference_pe(gaussian: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SAM's random-Fourier map, every step in ``gaussian.dtype``: [2F] x h x w."""
    ones = torch.ones((h, w), dtype=gaussian.dtype)
    y = (ones.cumsum(0) - 0.5) / h
    x = (ones.cumsum(1) - 0.5) / w
    c = 2 * torch.stack([x, y], dim=-1) - 1
    c = 2 * math.pi * (c @ gaussian)
    return torch.cat([torch.sin(c), torch.cos(c)], dim=-1).permute(2, 0, 1)


def test_bf16_head_computes_its_positional_map_in_bf16():
    torch.manual_seed(0)
    head = HeatmapHead(HeatmapHeadConfig(text_dim=64, image_dim=64, embed_dim=64, depth=1, mlp_dim=64, num_heads=2))
    g32 = head.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.clone()
    fp32 = head.prompt_encoder.dense_pe((18, 18))[0]
    assert torch.allclose(fp32.double(), reference_pe(g32.double(), 18, 18), atol=1e-4)
    head.to(torch.bfloat16)
    g16 = head.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    bf16 = head.prompt_encoder.dense_pe((18, 18))[0]
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, reference_pe(g16, 18, 18))
    # fp32-then-cast is a different map: the phases 2*pi*(c @ G) reach ~|40| rad, where bf16 rounding moves sin/cos
    cast = reference_pe(g16.float(), 18, 18).to(torch.bfloat16)
    assert (bf16.float() - cast.float()).abs().max() > 0.05


def test_fp32_unchanged_for_any_grid():
    torch.manual_seed(1)
    pe = PositionEmbeddingRandom(8)
    g = pe.positional_encoding_gaussian_matrix
    for grid in [(18, 18), (12, 20), (1, 1)]:
        assert torch.equal(pe(grid), reference_pe(g, *grid))
