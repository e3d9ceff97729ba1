"""A small GPT trained for a few steps on the CPU, its attention through flexattn.

The model is written as for PyTorch's FlexAttention; the only change is the import below. The
task is synthetic (continue sequences that repeat a random 6-token pattern: each token is the one
6 places back), so the loss must fall below half of chance (log(vocab)) within the steps. Attention: causal block mask + a traced ALiBi-style score_mod
with a learned-free per-head slope table, forward and backward through flexattn on the CPU (where
PyTorch's own flex_attention has no backward).

  python examples/python/gpt_train.py [--steps 300] [--device cpu]
"""

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# from torch.nn.attention.flex_attention import flex_attention, create_block_mask
from flexattn import create_block_mask, flex_attention


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.register_buffer("slopes", torch.tensor([2.0 ** (-8.0 * (i + 1) / heads)
                                                     for i in range(heads)]))

    def forward(self, x, block_mask):
        B, L, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, C // self.heads).unbind(2)
        slopes = self.slopes

        def alibi(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        # [B, L, H, D] -> [B, H, L, D] views: no copy, flexattn takes the strides as they are.
        y = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                           score_mod=alibi, block_mask=block_mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab, dim, heads, layers, max_len):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens, block_mask):
        x = self.emb(tokens) + self.pos[: tokens.shape[1]]
        for blk in self.blocks:
            x = blk(x, block_mask)
        return self.head(self.ln(x))


def batch(B, L, vocab, gen, period=6):
    """Sequences repeating a random pattern of `period` tokens: after the first period every
    token is the one `period` places back."""
    pattern = torch.randint(0, vocab, (B, period), generator=gen)
    seq = pattern[:, torch.arange(L + 1) % period]
    return seq[:, :-1], seq[:, 1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    vocab, dim, heads, layers, B, L = 16, 128, 4, 2, 16, 96
    model = GPT(vocab, dim, heads, layers, L).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    block_mask = create_block_mask(causal, None, None, L, L, device=args.device, BLOCK_SIZE=64)
    print(f"GPT: {layers} layers, dim {dim}, {heads} heads, L={L}, B={B}; chance loss "
          f"{math.log(vocab):.3f}")
    start = time.perf_counter()
    recent = []
    for step in range(args.steps + 1):
        x, y = (t.to(args.device) for t in batch(B, L, vocab, gen))
        loss = F.cross_entropy(model(x, block_mask).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-20:]
        if step % 50 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.1f} s)")
    mean = sum(recent) / len(recent)
    print(f"mean loss of the last {len(recent)} steps: {mean:.3f}")
    if not mean < 0.5 * math.log(vocab):
        raise SystemExit(f"the loss did not fall below half of chance ({math.log(vocab):.3f})")


if __name__ == "__main__":
    main()
