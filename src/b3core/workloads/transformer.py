"""b3's own sequence models: a pre-norm transformer over token ids, as a decoder-only causal
language model (GPT-style) or an encoder classifier (BERT-style).

Attention is torch's `scaled_dot_product_attention`, which picks a fused kernel where the device
has one (on such kernels the attention matrix is never stored, and memory loses its L² term).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gpt2_init(module: nn.Module) -> None:
    """GPT-2's initialisation: weights N(0, 0.02), biases zero. (torch's N(0, 1) embeddings,
    read back through a tied head, would start the loss far above ln V.)"""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class Block(nn.Module):
    """Pre-norm self-attention and a 4x GELU MLP, each with a residual."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.heads, self.causal = heads, causal
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.projection = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.projection(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Token and learned position embeddings, `depth` blocks and a final LayerNorm:
    (B, L) token ids in, (B, L, width) features out."""

    def __init__(self, *, vocab_size, context_size, width, depth, heads, causal):
        super().__init__()
        self.context_size = context_size
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context_size, width)
        self.blocks = nn.ModuleList(Block(width, heads, causal) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(gpt2_init)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if length > self.context_size:
            raise ValueError(f"sequence of {length} tokens is longer than {self.context_size}")
        x = self.tokens(ids) + self.positions(torch.arange(length, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class CausalLM(nn.Module):
    """Next-token logits (B, L, vocab) from a causal transformer, its head tied to the token
    embedding as GPT-2's is."""

    def __init__(self, **sizes):
        super().__init__()
        self.body = Transformer(causal=True, **sizes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.linear(self.body(ids), self.body.tokens.weight)


class EncoderClassifier(nn.Module):
    """Class logits (B, classes) from a bidirectional transformer, its features mean-pooled."""

    def __init__(self, num_classes: int, **sizes):
        super().__init__()
        self.body = Transformer(causal=False, **sizes)
        self.head = nn.Linear(self.body.norm.normalized_shape[0], num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(ids).mean(dim=1))
