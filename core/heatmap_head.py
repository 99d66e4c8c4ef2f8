"""ImageDoctor's heatmap head: task-token states + visual features -> misalignment/artifact maps.

A SAM-style decoder (prompt encoder + two-way transformer + mask decoder) whose upsampler is
replaced by `HeatmapPredictor`. Module and parameter names are exactly those of the published
checkpoint (``GYX97/ImageDoctor``): ``text_hidden_fcs.0.*``, ``image_hidden_fcs.0.*``,
``prompt_encoder.*``, ``heatmap.*``, so its weights load by name with no remote code.

Beyond upstream: the visual grid is not fixed at 18x18 (any aspect ratio and resolution; the
positional map is computed for the actual grid) and several images decode in one batch.

Shapes (E = ``embed_dim``, 768 published; h x w = merged visual grid, 18x18 for 512x512):
    task states   [N, text_dim]      -> text_hidden_fcs  -> [N, 1, E]
    visual tokens [N, h*w, image_dim] -> image_hidden_fcs -> [N, E, h, w]
    decoder                          -> [N, 16h, 16w] logits -> sigmoid
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Prefixes of the head's parameters inside a full ImageDoctor checkpoint.
HEAD_PREFIXES = ("text_hidden_fcs.", "image_hidden_fcs.", "prompt_encoder.", "heatmap.")


@dataclass
class HeatmapHeadConfig:
    """Sizes of the head. Defaults are the published ImageDoctor-3B head."""

    text_dim: int = 2048
    image_dim: int = 2048
    embed_dim: int = 768
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8
    mask_in_chans: int = 16
    #: Stride-2 stages of the upsampler: maps come out at 2**upsample_stages x the visual grid.
    #: 4 (16x) is upstream; fewer stages are an opt-in for small CPU models (the maps are
    #: resized to the image anyway), e.g. 2 for the mini diagnoser.
    upsample_stages: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None, text_dim: int, image_dim: int) -> "HeatmapHeadConfig":
        data = dict(data or {})
        data.setdefault("text_dim", text_dim)
        data.setdefault("image_dim", image_dim)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown heatmap_head config key(s) {sorted(unknown)}")
        cfg = cls(**data)
        if not isinstance(cfg.upsample_stages, int) or not 1 <= cfg.upsample_stages <= 4:
            raise ValueError(f"heatmap_head upsample_stages must be an integer 1-4, got {cfg.upsample_stages!r}")
        if cfg.embed_dim % 4 or cfg.embed_dim % cfg.num_heads or (cfg.embed_dim // 2) % cfg.num_heads:
            raise ValueError(
                f"heatmap_head embed_dim={cfg.embed_dim} must be divisible by 4 and by 2*num_heads={2 * cfg.num_heads}"
            )
        return cfg


# --- building blocks ---------------------------------------------------------------------
class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel dim of [B, C, H, W] (no mean, no bias); parameter ``scale`` [C,1,1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt() * self.scale


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of [B, C, H, W] (SAM's)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them; parameters ``layers.{i}``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the embedding (SAM's).

    q [B, Nq, E], k/v [B, Nk, E] -> [B, Nq, E]; internally E / downsample_rate channels.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)))
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Tokens attend to themselves, tokens -> image, MLP, image -> tokens (SAM's block)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool = False):
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image [B, E, h, w] + pe [B|1, E, h, w] + tokens [B, N, E] -> (tokens [B, N, E], image [B, h*w, E])."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding, image_pe, point_embedding):
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding of a (h, w) grid -> [E, h, w] (SAM's).

    Every step runs in the buffer's dtype, as in the checkpoint's own code: in bf16 the grid,
    the matmul and sin/cos round at bf16 (computing in fp32 and casting would move the map by
    up to ~0.2, and the decoder was trained on the bf16 one).
    """

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        m = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=m.device, dtype=m.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        coords = (2 * torch.stack([x, y], dim=-1) - 1) @ m
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder, used only with text (task-token) prompts.

    Parameters for points/boxes/masks exist so that checkpoints load by name; the text path
    returns sparse = the task embeddings and dense = ``no_mask_embed`` over the grid.
    """

    def __init__(self, embed_dim: int, mask_in_chans: int = 16):
        super().__init__()
        self.embed_dim = embed_dim
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional map [1, E, h, w] for a visual grid of h x w tokens."""
        return self.pe_layer(grid).unsqueeze(0)

    def forward(self, text_embeds: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """text_embeds [B, N, E] -> (sparse [B, N, E], dense [B, E, h, w])."""
        b = text_embeds.shape[0]
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, grid[0], grid[1])
        return text_embeds, dense


class HeatmapPredictor(nn.Module):
    """Upsampler [B, E, h, w] -> [B, E/4, S h, S w] (S = 2**n_stages, 16 upstream): two 3x3 convs,
    then ``n_stages`` stride-2 residual stages.

    Channel widths scale with E; E = 768 gives the published 768/384 stem, 768/384/384/192 stages.
    Fewer stages keep the first ones (same parameter names).
    """

    def __init__(self, n_channels: int, n_stages: int = 4):
        super().__init__()
        e = n_channels
        stem = (e, e // 2)
        stages = (e, e // 2, e // 2, e // 4)[:n_stages]
        self.conv_layers = nn.Sequential(
            nn.Conv2d(e, stem[0], 3, padding="same"),
            nn.ReLU(),
            ChannelRMSNorm(stem[0]),
            nn.Conv2d(stem[0], stem[1], 3, padding="same"),
            nn.ReLU(),
            ChannelRMSNorm(stem[1]),
        )
        self.deconv_layers = nn.ModuleList()
        self.conv_layers2 = nn.ModuleList()
        c_in = stem[1]
        for c_out in stages:
            self.deconv_layers.append(
                nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1), ChannelRMSNorm(c_out), nn.ReLU())
            )
            self.conv_layers2.append(
                nn.Sequential(
                    nn.Conv2d(c_out, c_out, 3, padding="same"),
                    ChannelRMSNorm(c_out),
                    nn.ReLU(),
                    nn.Conv2d(c_out, c_out, 3, padding="same"),
                    ChannelRMSNorm(c_out),
                )
            )
            c_in = c_out
        self.last_conv1 = nn.Conv2d(c_in, e // 4, 3, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layers(x)
        for deconv, conv in zip(self.deconv_layers, self.conv_layers2):
            x = deconv(x)
            x = F.relu(conv(x) + x)
        return F.relu(self.last_conv1(x))


class MaskDecoder(nn.Module):
    """One learnable mask token + task tokens, two-way transformer, hypernetwork dot product."""

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer, upsample_stages: int = 4):
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = 1
        self.mask_tokens = nn.Embedding(1, transformer_dim)
        self.output_upscaling = HeatmapPredictor(transformer_dim, upsample_stages)
        self.output_hypernetworks_mlps = nn.ModuleList([MLP(transformer_dim, transformer_dim, transformer_dim // 4, 3)])

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        """image [B, E, h, w], pe [1, E, h, w], sparse [B, N, E], dense [B, E, h, w] -> logits [B, 16h, 16w]."""
        b = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.mask_tokens.weight.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        src = src.transpose(1, 2).reshape(b, c, h, w)
        up = self.output_upscaling(src)  # [B, E/4, 16h, 16w]
        hyper = self.output_hypernetworks_mlps[0](hs[:, 0, :])  # [B, E/4]
        return torch.einsum("bc,bchw->bhw", hyper, up)


def _projection(in_dim: int, out_dim: int) -> nn.ModuleList:
    # ModuleList([Sequential]) so that parameter names read text_hidden_fcs.0.{0,2}.* as upstream.
    return nn.ModuleList([nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim), nn.Dropout(0.0))])


class HeatmapHead(nn.Module):
    """The whole head. `forward` maps task-token states and visual tokens to heatmaps in [0, 1]."""

    def __init__(self, config: HeatmapHeadConfig):
        super().__init__()
        self.config = config
        e = config.embed_dim
        self.text_hidden_fcs = _projection(config.text_dim, e)
        self.image_hidden_fcs = _projection(config.image_dim, e)
        self.prompt_encoder = PromptEncoder(e, config.mask_in_chans)
        self.heatmap = MaskDecoder(e, TwoWayTransformer(config.depth, e, config.num_heads, config.mlp_dim),
                                   config.upsample_stages)

    def forward(self, task_states: torch.Tensor, image_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """task_states [N, text_dim], image_tokens [N, h*w, image_dim] (one image per map) -> [N, 16h, 16w]."""
        h, w = grid
        if image_tokens.shape[1] != h * w:
            raise ValueError(f"{image_tokens.shape[1]} visual tokens do not fill a {h}x{w} grid")
        dtype = self.text_hidden_fcs[0][0].weight.dtype
        text = self.text_hidden_fcs[0](task_states.to(dtype)).unsqueeze(1)  # [N, 1, E]
        img = self.image_hidden_fcs[0](image_tokens.to(dtype))  # [N, h*w, E]
        img = img.transpose(1, 2).reshape(img.shape[0], -1, h, w)
        sparse, dense = self.prompt_encoder(text, (h, w))
        logits = self.heatmap(img, self.prompt_encoder.dense_pe((h, w)), sparse, dense)
        return torch.sigmoid(logits)
