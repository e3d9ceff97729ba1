"""On a CUDA device: flexattn against torch.nn.attention.flex_attention itself (PyTorch's
compiled Flex kernels), forward and backward, same Python mods, same inputs. Skipped without
CUDA; the float64 checks of test_api.py / test_pytorch_ports.py run on the GPU as well."""

import pytest
import torch

import flexattn
from oracle import rand

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

if torch.cuda.is_available():
    from torch.nn.attention import flex_attention as tfa

    torch_flex = torch.compile(tfa.flex_attention, dynamic=False)


def _cases():
    rel = torch.randn(2 * 1024, device="cuda") * 0.1 if torch.cuda.is_available() else None
    docs = (torch.arange(1024, device="cuda") // 300) if torch.cuda.is_available() else None

    def rel_bias(score, b, h, q_idx, kv_idx):
        return score + rel[q_idx - kv_idx + 1024]

    def softcap(score, b, h, q_idx, kv_idx):
        return 30.0 * torch.tanh(score / 30.0)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def doc_causal(b, h, q_idx, kv_idx):
        return (docs[q_idx] == docs[kv_idx]) & (q_idx >= kv_idx)

    return {"causal": (None, causal), "softcap": (softcap, None),
            "rel_bias_causal": (rel_bias, causal), "document_causal": (None, doc_causal),
            "stock_alibi_causal": (flexattn.alibi(8), flexattn.causal)}


CASES = _cases()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch_flex(name, dtype):
    score_mod, mask_mod = CASES[name]
    g = torch.Generator().manual_seed(11)
    q, k, v = (rand(2, 8, 1024, 64, dtype=dtype, device="cuda", requires_grad=True, generator=g)
               for _ in range(3))
    dout = rand(2, 8, 1024, 64, dtype=dtype, device="cuda", generator=g)
    results = []
    for make_mask, attend in ((flexattn.create_block_mask, flexattn.flex_attention),
                              (tfa.create_block_mask, torch_flex)):
        bm = None if mask_mod is None else make_mask(mask_mod, None, None, 1024, 1024,
                                                     device="cuda")
        out = attend(q, k, v, score_mod=score_mod, block_mask=bm)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        results.append((out, *grads))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours.float(), theirs.float(), atol=3e-2, rtol=3e-2)
