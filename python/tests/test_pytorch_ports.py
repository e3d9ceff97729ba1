"""Ports of the kinds of cases in PyTorch's test/inductor/test_flex_attention.py to flexattn.

The score_mods and mask_mods are written as a PyTorch user writes them. Every result is checked
against a float64 evaluation of the same Python functions on broadcast index grids (`reference`),
and a few against torch.nn.attention.flex_attention itself in eager mode.
"""

import warnings

import pytest
import torch

import flexattn

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
TOL = {F32: dict(atol=1e-4, rtol=1e-4), BF16: dict(atol=2e-2, rtol=2e-2),
       F16: dict(atol=2e-2, rtol=1e-2)}


# The float64 reference is the package tests' one oracle (oracle.py).
from oracle import reference  # noqa: E402


def make_qkv(B=2, Hq=4, L=128, S=None, E=32, Ev=None, Hkv=None, dtype=F32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    S, Ev, Hkv = S or L, Ev or E, Hkv or Hq

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_(grad)

    return rand(B, Hq, L, E), rand(B, Hkv, S, E), rand(B, Hkv, S, Ev)


def assert_close(actual, expected, dtype=F32):
    torch.testing.assert_close(actual.double(), expected.double(), **TOL[dtype])


def check(q, k, v, score_mod=None, mask_mod=None, block_mask=None, grads=False, **kw):
    """flexattn against the reference: out, lse and (grads=True, float32) dq, dk, dv."""
    out, lse = flexattn.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask,
                                       return_lse=True, **kw)
    ref_out, ref_lse = reference(q, k, v, score_mod, mask_mod, **kw)
    assert out.dtype == q.dtype and lse.dtype == F32
    assert not torch.isnan(out).any()
    assert_close(out, ref_out, q.dtype)
    torch.testing.assert_close(lse.double(), ref_lse.detach(), atol=1e-3, rtol=1e-4)
    if grads:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        got = torch.autograd.grad(out, (q, k, v), g)
        want = torch.autograd.grad(ref_out, (q, k, v), g.double(), allow_unused=True,
                                   materialize_grads=True)
        for name, a, e in zip("qkv", got, want):
            sc = e.abs().max().item() or 1.0
            torch.testing.assert_close(a.double() / sc, e.double() / sc, atol=1e-3, rtol=0,
                                       msg=lambda m, name=name: f"d{name}: {m}")
    return out, lse


# ---- score_mods, as in PyTorch's test file --------------------------------------------------------
def _identity(score, b, h, q_idx, kv_idx):
    return score

def _times_two(score, b, h, m, n):
    return score * 2

def _squared(score, b, h, m, n):
    return score * score

def _causal(score, b, h, token_q, token_kv):
    return torch.where(token_q >= token_kv, score, float("-inf"))

def _inverse_causal(score, b, h, m, n):
    return torch.where(m <= n, score, float("-inf"))

def _rel_bias(score, b, h, token_q, token_kv):
    return score + (token_q - token_kv)

def _rel_causal(score, b, h, token_q, token_kv):
    return torch.where(token_q >= token_kv, score + (token_q - token_kv), float("-inf"))

def _generate_alibi_bias(num_heads):
    def _alibi_bias(score, b, h, token_q, token_kv):
        scale = torch.exp2(-((h + 1) * 8.0 / num_heads))
        return score + (token_kv - token_q) * scale
    return _alibi_bias


HEAD_OFFSET = torch.rand(8, generator=torch.Generator().manual_seed(1))

def _head_offset(score, b, h, m, n):  # captured buffer (PyTorch: _head_offset)
    return score * HEAD_OFFSET[h]

def _trig(score, b, h, m, n):  # PyTorch adds tan(b); flexattn has no tan, cos(b) plays its part
    return torch.sin(torch.cos(score)) + torch.cos(b)

def _trig2(score, b, h, m, n):
    cos_score = torch.cos(score)
    sin_score = torch.sin(score)
    return cos_score * sin_score + torch.sin(h)

def _generate_tanh_softcap(soft_cap):
    def _tanh_softcap(score, b, h, m, n):
        return soft_cap * torch.tanh(score / soft_cap)
    return _tanh_softcap

def _generate_windowed(offset):
    def _windowed(score, b, h, q, kv):
        return torch.where(q - kv <= offset, score, float("-inf"))
    return _windowed

def _silu(score, b, h, q_idx, kv_idx):
    return score * torch.sigmoid(score)

def _floor_bucket(score, b, h, q_idx, kv_idx):  # floor division of negative numbers
    return score + ((kv_idx - q_idx) // 7) * 0.05

def _pow_decay(score, b, h, q_idx, kv_idx):
    return score + 0.9 ** torch.abs(q_idx - kv_idx) - torch.clamp(score, min=-1.0, max=1.0) ** 2

def _position_only(score, b, h, q_idx, kv_idx):  # ignores the score
    return torch.maximum((q_idx - kv_idx) * 0.03, torch.zeros_like(score) - 0.5)


SCORE_MODS = [_identity, _times_two, _squared, _causal, _inverse_causal, _rel_bias, _rel_causal,
              _generate_alibi_bias(8), _head_offset, _trig, _trig2, _generate_tanh_softcap(2.0),
              _generate_windowed(16), _silu, _floor_bucket, _pow_decay, _position_only]
GRAD_SCORE_MODS = [_identity, _times_two, _squared, _rel_causal, _head_offset, _trig2,
                   _generate_tanh_softcap(2.0), _pow_decay, _position_only]

def _name(f):
    return getattr(f, "__name__", str(f))


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("score_mod", SCORE_MODS, ids=_name)
def test_score_mod(score_mod, dtype):
    check(*make_qkv(B=2, Hq=4, L=137, E=32, dtype=dtype, seed=1), score_mod=score_mod)


@pytest.mark.parametrize("score_mod", GRAD_SCORE_MODS, ids=_name)
def test_score_mod_grads(score_mod):
    check(*make_qkv(B=2, Hq=4, L=100, E=16, Ev=32, seed=2, grad=True), score_mod=score_mod,
          grads=True)


@pytest.mark.parametrize("L,S", [(64, 200), (200, 64), (1, 130)])
@pytest.mark.parametrize("score_mod", [_rel_causal, _generate_alibi_bias(8), _head_offset],
                         ids=_name)
def test_score_mod_seq_lengths(score_mod, L, S):
    check(*make_qkv(B=1, Hq=4, L=L, S=S, E=64, seed=3, grad=True), score_mod=score_mod,
          grads=True)


def test_score_mod_masks_whole_rows():
    """_inverse_causal with more queries than keys: rows past the keys are all -inf."""
    out, lse = check(*make_qkv(B=1, Hq=2, L=150, S=100, E=16, seed=4), score_mod=_inverse_causal)
    assert (out[:, :, 100:] == 0).all() and torch.isneginf(lse[:, :, 100:]).all()


# ---- mask_mods --------------------------------------------------------------------------------------
def _causal_mask(b, h, token_q, token_kv):
    return token_q >= token_kv

def _inverse_causal_mask(b, h, token_q, token_kv):
    return token_q <= token_kv


SLIDING_WINDOW, PREFIX_LENGTH = 24, 40

def _sliding_window_causal(b, h, q_idx, kv_idx):
    causal_mask = q_idx >= kv_idx
    window_mask = q_idx - kv_idx <= SLIDING_WINDOW
    return causal_mask & window_mask

def _prefix_lm_causal(b, h, q_idx, kv_idx):
    return (kv_idx <= PREFIX_LENGTH) | (q_idx >= kv_idx)


DOC_IDS = torch.repeat_interleave(torch.arange(6), torch.tensor([40, 7, 63, 90, 1, 99]))

def _document_mask(b, h, q_idx, kv_idx):
    return DOC_IDS[q_idx] == DOC_IDS[kv_idx]

def _block_diagonal(b, h, q_idx, kv_idx):
    return q_idx // 32 == kv_idx // 32

def _strided(b, h, q_idx, kv_idx):  # % of negative numbers floors as in Python
    return (kv_idx - q_idx) % 5 < 2

def _head_specific(b, h, q_idx, kv_idx):
    return torch.where(h % 2 == 0, q_idx >= kv_idx, kv_idx >= q_idx)

def _padded(lengths):
    def padded_mask(b, h, q_idx, kv_idx):
        return (q_idx < lengths[b]) & (kv_idx < lengths[b])
    return padded_mask

def _no_q_info(b, h, q_idx, kv_idx):
    return kv_idx < 70

def _batch_or_causal(b, h, q_idx, kv_idx):
    return (b == 0) | ~(q_idx < kv_idx)


MASK_MODS = [_causal_mask, _inverse_causal_mask, _sliding_window_causal, _prefix_lm_causal,
             _document_mask, _block_diagonal, _strided, _head_specific,
             _padded(torch.tensor([90, 150])), _no_q_info, _batch_or_causal,
             flexattn.and_masks(_causal_mask, _sliding_window_causal),
             flexattn.or_masks(_prefix_lm_causal, _document_mask)]


@pytest.mark.parametrize("L,S", [(128, 128), (96, 200), (200, 96)])
@pytest.mark.parametrize("mask_mod", MASK_MODS, ids=_name)
def test_mask_mod(mask_mod, L, S):
    q, k, v = make_qkv(B=2, Hq=4, L=L, S=S, E=32, seed=5, grad=True)
    bm = flexattn.create_block_mask(mask_mod, 2, 4, L, S, device="cpu", BLOCK_SIZE=64)
    assert bm.shape == (2, 4, L, S) and bm.BLOCK_SIZE == (64, 64) and bm.mask_mod is mask_mod
    check(q, k, v, mask_mod=mask_mod, block_mask=bm, grads=True)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("mask_mod", [_sliding_window_causal, _document_mask], ids=_name)
def test_mask_mod_half(mask_mod, dtype):
    bm = flexattn.create_block_mask(mask_mod, None, None, 300, 300, device="cpu")
    check(*make_qkv(B=1, Hq=2, L=300, E=64, dtype=dtype, seed=6), mask_mod=mask_mod,
          block_mask=bm)


SCORE_MASK_PAIRS = [(_causal, _causal_mask), (_inverse_causal, _inverse_causal_mask),
                    (_rel_causal, _causal_mask), (_generate_alibi_bias(8), _causal_mask),
                    (_head_offset, _document_mask), (_times_two, _sliding_window_causal)]


@pytest.mark.parametrize("score_mod,mask_mod", SCORE_MASK_PAIRS,
                         ids=[f"{_name(s)}-{_name(m)}" for s, m in SCORE_MASK_PAIRS])
def test_score_and_mask_mod(score_mod, mask_mod):
    q, k, v = make_qkv(B=2, Hq=4, L=160, E=32, seed=8, grad=True)
    bm = flexattn.create_block_mask(mask_mod, 1, 1, 160, 160, device="cpu", BLOCK_SIZE=32)
    check(q, k, v, score_mod=score_mod, mask_mod=mask_mod, block_mask=bm, grads=True)


STOCK_CASES = [(None, flexattn.causal), (None, flexattn.sliding_window(20)),
               (None, flexattn.prefix_lm(40)), (None, flexattn.document(DOC_IDS)),
               (None, flexattn.and_masks(flexattn.causal, flexattn.document(DOC_IDS))),
               (None, flexattn.noop_mask), (flexattn.alibi(4), flexattn.causal),
               (flexattn.softcap(2.0), None), (flexattn.alibi(4), flexattn.sliding_window(20)),
               (flexattn.relative_position, flexattn.prefix_lm(40)),
               (flexattn.softcap(2.0), flexattn.causal), (flexattn.alibi(4), _causal_mask),
               (flexattn.softcap(2.0), _causal_mask)]


@pytest.mark.parametrize("score_mod,mask_mod", STOCK_CASES)
def test_stock_mods(score_mod, mask_mod):
    q, k, v = make_qkv(B=2, Hq=4, L=150, S=170, E=32, seed=9, grad=True)
    bm = None if mask_mod is None else flexattn.create_block_mask(mask_mod, 2, 4, 150, 170,
                                                                  device="cpu", BLOCK_SIZE=32)
    check(q, k, v, score_mod=score_mod, mask_mod=mask_mod, block_mask=bm, grads=True)


# ---- block sizes, broadcast, sparsity ----------------------------------------------------------------
@pytest.mark.parametrize("block_size", [128, 64, 16, (32, 64), (64, 32), (128, 16)], ids=str)
def test_block_size(block_size):
    q, k, v = make_qkv(B=1, Hq=2, L=257, S=200, E=16, seed=10, grad=True)
    bm = flexattn.create_block_mask(_sliding_window_causal, 1, 2, 257, 200, device="cpu",
                                    BLOCK_SIZE=block_size)
    bs = (block_size, block_size) if isinstance(block_size, int) else block_size
    assert bm.BLOCK_SIZE == tuple(bs)
    check(q, k, v, mask_mod=_sliding_window_causal, block_mask=bm, grads=True)


@pytest.mark.parametrize("BH", [(None, None), (2, None), (None, 4), (2, 4)], ids=str)
def test_block_mask_broadcast(BH):
    B, H = BH
    bm = flexattn.create_block_mask(_prefix_lm_causal, B, H, 130, 130, device="cpu", BLOCK_SIZE=32)
    assert bm.shape == (B or 1, H or 1, 130, 130)
    check(*make_qkv(B=2, Hq=4, L=130, E=32, seed=11), mask_mod=_prefix_lm_causal, block_mask=bm)

def _torch_flex():
    return pytest.importorskip("torch.nn.attention.flex_attention")


@pytest.mark.parametrize("mask_mod,L,block", [(_causal_mask, 256, 128), (_causal_mask, 256, 64),
                                              (_sliding_window_causal, 300, 32),
                                              (_document_mask, 300, 64), (_no_q_info, 200, 16)])
def test_sparsity_matches_torch(mask_mod, L, block):
    tfa = _torch_flex()
    bm = flexattn.create_block_mask(mask_mod, None, None, L, L, device="cpu", BLOCK_SIZE=block)
    tbm = tfa.create_block_mask(mask_mod, None, None, L, L, device="cpu", BLOCK_SIZE=block)
    assert bm.sparsity() == pytest.approx(tbm.sparsity(), abs=1e-6)
    if mask_mod is _causal_mask and block == 128:
        assert bm.sparsity() == pytest.approx(25.0)
    assert isinstance(bm.to_string(), str) and bm.to_string()


# ---- captured tensors ----------------------------------------------------------------------------
def _bias_mod(rank):
    g = torch.Generator().manual_seed(20 + rank)
    bias = torch.randn((2, 4, 140, 150)[4 - rank:], generator=g)
    if rank == 1:
        return lambda score, b, h, q_idx, kv_idx: score + bias[q_idx]
    if rank == 2:
        return lambda score, b, h, q_idx, kv_idx: score + bias[q_idx, kv_idx]
    if rank == 3:
        return lambda score, b, h, q_idx, kv_idx: score + bias[h, q_idx, kv_idx]
    return lambda score, b, h, q_idx, kv_idx: score + bias[b, h, q_idx, kv_idx]


REL_BIAS = torch.randn(2 * 150, generator=torch.Generator().manual_seed(30))
SCALE_T = torch.ones((), dtype=torch.int32)
HEAD_SCALE = torch.rand(4, generator=torch.Generator().manual_seed(31)) + 0.5
BATCH_BIAS = torch.tensor([0.25, -0.5])

def _load_rel_bias(score, b, h, q_idx, kv_idx):  # an index expression into a capture
    return score + REL_BIAS[q_idx - kv_idx + 150]

def _captured_scalar(score, b, h, q_idx, kv_idx):
    return score + SCALE_T

def _two_captures(score, b, h, q_idx, kv_idx):
    return score * HEAD_SCALE[h] + BATCH_BIAS[b]


CAPTURE_MODS = [_bias_mod(1), _bias_mod(2), _bias_mod(3), _bias_mod(4), _load_rel_bias,
                _captured_scalar, _two_captures]


@pytest.mark.parametrize("score_mod", CAPTURE_MODS,
                         ids=["bias_q", "bias_qkv", "bias_hqkv", "bias_bhqkv", "rel_bias",
                              "scalar", "two_captures"])
def test_captured_tensor(score_mod):
    check(*make_qkv(B=2, Hq=4, L=140, S=150, E=32, seed=12, grad=True), score_mod=score_mod,
          grads=True)


def test_captured_tensor_updated_in_place():
    bias = torch.randn(4, 100)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[h, kv_idx]

    q, k, v = make_qkv(B=1, Hq=4, L=100, E=16, seed=13)
    check(q, k, v, score_mod=score_mod)
    bias.mul_(-3.0).add_(1.0)
    check(q, k, v, score_mod=score_mod)


# ---- GQA, scale, lse, fully masked rows ------------------------------------------------------------
@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (4, 1), (8, 2)], ids=str)
@pytest.mark.parametrize("score_mod", [None, _head_offset, _generate_alibi_bias(8)], ids=_name)
def test_gqa(score_mod, Hq, Hkv):
    q, k, v = make_qkv(B=2, Hq=Hq, Hkv=Hkv, L=120, S=90, E=32, Ev=16, seed=14, grad=True)
    bm = flexattn.create_block_mask(_causal_mask, None, None, 120, 90, device="cpu", BLOCK_SIZE=32)
    check(q, k, v, score_mod=score_mod, mask_mod=_causal_mask, block_mask=bm, grads=True,
          enable_gqa=True)


@pytest.mark.parametrize("scale", [None, 0.3, 1.0, 2.5])
def test_scale_and_lse(scale):
    q, k, v = make_qkv(B=1, Hq=2, L=150, E=64, seed=15, grad=True)
    bm = flexattn.create_block_mask(_document_mask, None, None, 150, 150, device="cpu")
    check(q, k, v, score_mod=_rel_causal, mask_mod=_document_mask, block_mask=bm, grads=True,
          scale=scale)


def test_fully_masked_rows():
    mask_mod = _padded(torch.tensor([0, 70]))  # batch 0 sees nothing, batch 1 rows >= 70 neither
    q, k, v = make_qkv(B=2, Hq=2, L=100, E=16, seed=16, grad=True)
    bm = flexattn.create_block_mask(mask_mod, 2, None, 100, 100, device="cpu", BLOCK_SIZE=32)
    out, lse = check(q, k, v, mask_mod=mask_mod, block_mask=bm, grads=True)
    assert (out[0] == 0).all() and torch.isneginf(lse[0]).all()
    assert (out[1, :, 70:] == 0).all() and torch.isneginf(lse[1, :, 70:]).all()
    assert torch.isfinite(lse[1, :, :70]).all()
    out, lse = flexattn.flex_attention(q, k, v, block_mask=bm, return_lse=True)
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()
    assert (dq[1, :, 70:] == 0).all() and (dk[1, :, 70:] == 0).all()


def test_matches_sdpa():
    q, k, v = make_qkv(B=2, Hq=4, L=200, E=64, seed=17)
    bm = flexattn.create_block_mask(flexattn.causal, None, None, 200, 200, device="cpu")
    want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                            is_causal=True)
    assert_close(flexattn.flex_attention(q, k, v, block_mask=bm), want)


# ---- against torch.nn.attention.flex_attention in eager mode ---------------------------------------
H_Q_BIAS = torch.randn(4, 160, generator=torch.Generator().manual_seed(40))

def _bias_chained(score, b, h, q_idx, kv_idx):  # chained indexing: not on broadcast grids
    return score + H_Q_BIAS[h][q_idx]


EAGER_CASES = {
    "alibi-causal": (_generate_alibi_bias(8), _causal_mask, 160, 160, 1),
    "head_offset-document": (_head_offset, _document_mask, 160, 160, 1),
    "bias_chained": (_bias_chained, None, 160, 130, 1),
    "padded-gqa": (_two_captures, _padded(torch.tensor([50, 160])), 160, 140, 2),
    "inverse_causal_dead_rows": (_inverse_causal, _inverse_causal_mask, 160, 100, 1),
}


@pytest.mark.parametrize("case", list(EAGER_CASES))
def test_against_torch_eager(case):
    tfa = _torch_flex()
    score_mod, mask_mod, L, S, group = EAGER_CASES[case]
    q, k, v = make_qkv(B=2, Hq=4, Hkv=4 // group, L=L, S=S, E=32, seed=18)
    gqa = group > 1
    bm = tbm = None
    if mask_mod is not None:
        bm = flexattn.create_block_mask(mask_mod, 2, 4, L, S, device="cpu", BLOCK_SIZE=32)
        tbm = tfa.create_block_mask(mask_mod, 2, 4, L, S, device="cpu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want, want_lse = tfa.flex_attention(q.double(), k.double(), v.double(), score_mod,
                                                tbm, enable_gqa=gqa, return_lse=True)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torch's eager flex_attention fails on the CPU here: {e!r}")
    out, lse = flexattn.flex_attention(q, k, v, score_mod, bm, enable_gqa=gqa, return_lse=True)
    assert_close(out, want)
    torch.testing.assert_close(lse.double(), want_lse.double(), atol=1e-3, rtol=1e-4)
    if case != "bias_chained":  # the broadcast reference agrees with torch's eager mode too
        ref, ref_lse = reference(q, k, v, score_mod, mask_mod, enable_gqa=gqa)
        assert_close(want, ref)


# ---- what cannot be traced ------------------------------------------------------------------------
def _if_score(score, b, h, q_idx, kv_idx):
    if score > 0:
        return score
    return score * 0.5

def _and_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx and kv_idx >= 0

def _chained_compare(b, h, q_idx, kv_idx):
    return 0 <= q_idx - kv_idx <= 8


def test_if_on_traced_value_raises():
    q, k, v = make_qkv(B=1, Hq=1, L=32, E=16)
    with pytest.raises(flexattn.UnsupportedConstruct, match="bool"):
        flexattn.flex_attention(q, k, v, score_mod=_if_score)
    assert issubclass(flexattn.UnsupportedConstruct, TypeError)


@pytest.mark.parametrize("mask_mod", [_and_mask, _chained_compare], ids=_name)
def test_python_boolean_ops_in_mask_raise(mask_mod):
    with pytest.raises(flexattn.UnsupportedConstruct, match="and"):
        flexattn.create_block_mask(mask_mod, None, None, 64, 64, device="cpu")
