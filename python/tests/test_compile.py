"""flexattn under torch.compile: the call becomes the opaque custom ops flexattn::flex_attention
and flexattn::flex_attention_backward (fake implementations for tracing), with no graph break,
and gives what the eager call gives."""

import pytest
import torch

import flexattn
from oracle import rand, reference

offsets = torch.randn(96)


def offset_score(score, b, h, q_idx, kv_idx):
    return score + offsets[q_idx] - 0.05 * (q_idx - kv_idx)


def layer(q, k, v, block_mask, score_mod):
    y = flexattn.flex_attention(torch.sin(q), k, v, score_mod=score_mod, block_mask=block_mask)
    return torch.nn.functional.gelu(y) * 2.0


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_matches_eager_forward_and_backward(backend):
    torch._dynamo.reset()
    bm = flexattn.create_block_mask(flexattn.causal, 1, 1, 96, 96, device="cpu", BLOCK_SIZE=32)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)  # fullgraph: no break
    results = []
    for fn in (layer, compiled):
        q, k, v = (rand(2, 2, 96, 16, requires_grad=True, generator=torch.Generator()
                        .manual_seed(i)) for i in range(3))
        out = fn(q, k, v, bm, offset_score)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, atol=1e-5, rtol=1e-5)
    # and the eager result is right
    q, k, v = (rand(2, 2, 96, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    ref_out, _ = reference(torch.sin(q), k, v, offset_score, flexattn.causal)
    torch.testing.assert_close(results[0][0].double(),
                               torch.nn.functional.gelu(ref_out) * 2.0, atol=2e-4, rtol=2e-4)


def test_compiled_follows_new_masks_and_mods():
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")
    q, k, v = rand(1, 2, 64, 16), rand(1, 2, 64, 16), rand(1, 2, 64, 16)

    def near(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < 8

    for mask in (flexattn.causal, flexattn.sliding_window(5), near):
        bm = flexattn.create_block_mask(mask, 1, 1, 64, 64, device="cpu", BLOCK_SIZE=32)
        for score_mod in (None, flexattn.softcap(4.0), offset_score):
            torch.testing.assert_close(compiled(q, k, v, bm, score_mod),
                                       layer(q, k, v, bm, score_mod), atol=1e-6, rtol=1e-6)


def test_compiled_refuses_gradient_through_lse():
    torch._dynamo.reset()

    def uses_lse(q, k, v):
        out, lse = flexattn.flex_attention(q, k, v, return_lse=True)
        return out.sum() + lse.sum()

    q, k, v = (rand(1, 1, 32, 16, requires_grad=True) for _ in range(3))
    with pytest.raises(flexattn.FlexAttentionError, match="lse"):
        torch.compile(uses_lse, backend="aot_eager")(q, k, v).backward()
    with pytest.raises(flexattn.FlexAttentionError, match="lse"):
        uses_lse(q, k, v).backward()


def test_compiled_refuses_learnable_captures():
    torch._dynamo.reset()
    bias = torch.randn(32, requires_grad=True)

    def biased(score, b, h, q_idx, kv_idx):
        return score + bias[kv_idx]

    q, k, v = rand(1, 1, 32, 16), rand(1, 1, 32, 16), rand(1, 1, 32, 16)
    with pytest.raises(Exception, match="not supported under torch.compile"):
        torch.compile(lambda q, k, v: flexattn.flex_attention(q, k, v, score_mod=biased),
                      backend="aot_eager")(q, k, v)
