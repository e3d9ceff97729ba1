"""flexattn's Python API against the float64 oracle: stock and traced mods, forward and backward,
GQA, Lq != Lkv, DLPack inputs, the runtime cache's promises, and the errors."""

import numpy as np
import pytest
import torch

import flexattn
from oracle import devices, rand, reference

TOL = {torch.float32: (2e-4, 2e-4), torch.float16: (2e-2, 2e-2), torch.bfloat16: (4e-2, 4e-2)}

# Mods PyTorch users write by hand: traced into runtime variants.
bias_h = torch.randn(8) * 0.5


def my_alibi_like(score, b, h, q_idx, kv_idx):
    return score + bias_h[h] * (kv_idx - q_idx) * 0.1


def my_softcap(score, b, h, q_idx, kv_idx):
    return 20.0 * torch.tanh(score / 20.0)


def my_window_causal(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 37)


def my_checker(b, h, q_idx, kv_idx):
    return ((q_idx // 16 + kv_idx // 16 + h) % 2 == 0) | (q_idx == kv_idx)


STOCK = {  # name: (score_mod, mask_mod)
    "noop": (None, None),
    "causal": (None, flexattn.causal),
    "sliding_window": (None, flexattn.sliding_window(45)),
    "prefix_lm": (None, flexattn.prefix_lm(70)),
    "alibi_causal": (flexattn.alibi(4), flexattn.causal),
    "softcap": (flexattn.softcap(30.0), None),
    # stock mods in pairs without prebuilt kernels: traced like a user's functions
    "softcap_causal": (flexattn.softcap(10.0), flexattn.causal),
    "relpos_window": (flexattn.relative_position, flexattn.sliding_window(20)),
}
CUSTOM = {
    "alibi_like_causal": (my_alibi_like, flexattn.causal),
    "softcap_window": (my_softcap, my_window_causal),
    "checker": (None, my_checker),
}


def run(q, k, v, score_mod, mask_mod, device, gqa=False, block=128, **kw):
    bm = None
    if mask_mod is not None:
        bm = flexattn.create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2],
                                        device=device, BLOCK_SIZE=block)
    return flexattn.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=gqa,
                                   return_lse=True, **kw)


def check_close(out, lse, ref_out, ref_lse, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), ref_out.cpu(), atol=atol, rtol=rtol)
    finite = torch.isfinite(ref_lse.cpu())
    torch.testing.assert_close(lse.double().cpu()[finite], ref_lse.cpu()[finite], atol=1e-3,
                               rtol=1e-4)
    assert torch.isneginf(lse.cpu()[~finite]).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(STOCK) + list(CUSTOM))
def test_forward_matches_float64(name, dtype, device):
    score_mod, mask_mod = {**STOCK, **CUSTOM}[name]
    g = torch.Generator().manual_seed(hash(name) % 1000)
    q = rand(2, 4, 190, 64, dtype=dtype, device=device, generator=g)
    k = rand(2, 4, 230, 64, dtype=dtype, device=device, generator=g)
    v = rand(2, 4, 230, 64, dtype=dtype, device=device, generator=g)
    out, lse = run(q, k, v, score_mod, mask_mod, device)
    assert out.shape == (2, 4, 190, 64) and out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = reference(q, k, v, score_mod, mask_mod)
    check_close(out, lse, ref_out, ref_lse, dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", ["causal", "alibi_causal", "softcap_causal", "alibi_like_causal",
                                  "softcap_window", "noop"])
def test_backward_matches_float64(name, device):
    score_mod, mask_mod = {**STOCK, **CUSTOM}[name]
    g = torch.Generator().manual_seed(7)
    q, k, v = (rand(1, 4, n, 32, device=device, requires_grad=True, generator=g)
               for n in (150, 170, 170))
    dout = rand(1, 4, 150, 32, device=device, generator=g)
    out, _ = run(q, k, v, score_mod, mask_mod, device, block=64)
    out.backward(dout)
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, _ = reference(q2, k2, v2, score_mod, mask_mod)
    ref_out.backward(dout.double())
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(got.double().cpu(), want.cpu(), atol=5e-4, rtol=5e-4)


@pytest.mark.parametrize("device", devices())
def test_gqa_and_scale(device):
    q = rand(2, 8, 96, 32, device=device)
    k, v = rand(2, 2, 96, 32, device=device), rand(2, 2, 96, 32, device=device)
    out, lse = run(q, k, v, my_alibi_like, flexattn.causal, device, gqa=True, scale=0.3)
    ref_out, ref_lse = reference(q, k, v, my_alibi_like, flexattn.causal, scale=0.3,
                                 enable_gqa=True)
    check_close(out, lse, ref_out, ref_lse, torch.float32)
    with pytest.raises(flexattn.FlexAttentionError):
        flexattn.flex_attention(q, k, v)  # Hq != Hkv without enable_gqa


def test_strided_inputs_no_copy_needed():
    # [B, L, H, D] activations viewed as [B, H, L, D]: last dim contiguous, other strides odd.
    base = rand(2, 100, 4, 3 * 32)
    q, k, v = (base[..., i * 32:(i + 1) * 32].transpose(1, 2) for i in range(3))
    out = flexattn.flex_attention(q, k, v, score_mod=my_softcap)
    ref_out, _ = reference(q, k, v, my_softcap)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-4, rtol=2e-4)


def test_fully_masked_rows_give_zero_and_neg_inf():
    def none_before_50(b, h, q_idx, kv_idx):
        return q_idx >= 50

    q, k, v = rand(1, 2, 80, 16), rand(1, 2, 80, 16), rand(1, 2, 80, 16)
    out, lse = run(q, k, v, None, none_before_50, "cpu")
    assert (out[:, :, :50] == 0).all() and torch.isneginf(lse[:, :, :50]).all()
    ref_out, ref_lse = reference(q, k, v, None, none_before_50)
    check_close(out, lse, ref_out, ref_lse, torch.float32)


def test_numpy_inputs_forward():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 64, 32)).astype(np.float32) for _ in range(3))
    out = flexattn.flex_attention(q, k, v, score_mod=my_softcap)
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 64, 32)
    ref_out, _ = reference(*(torch.from_numpy(x) for x in (q, k, v)), my_softcap)
    np.testing.assert_allclose(out, ref_out.numpy(), atol=2e-4, rtol=2e-4)


def test_block_mask_attributes_and_sparsity():
    bm = flexattn.create_block_mask(flexattn.causal, 2, None, 512, 512, device="cpu",
                                    BLOCK_SIZE=(64, 128))
    assert bm.shape == (2, 1, 512, 512) and bm.BLOCK_SIZE == (64, 128)
    assert bm.mask_mod is flexattn.causal
    # 8 x 4 tiles; a 64 x 128 tile is skipped when every key is after every query of it.
    skipped = sum(1 for i in range(8) for j in range(4) if j * 128 > i * 64 + 63)
    assert bm.sparsity() == pytest.approx(100.0 * skipped / 32)
    assert "█" in bm.to_string() and "BlockMask" in str(bm)
    traced = flexattn.create_block_mask(my_window_causal, 1, 1, 512, 512, device="cpu",
                                        BLOCK_SIZE=64)
    assert 0.0 < traced.sparsity() < 100.0


def test_stock_prebuilt_pairs_need_no_compiler():
    before = flexattn.runtime_cache_stats()
    q, k, v = rand(1, 4, 64, 32), rand(1, 4, 64, 32), rand(1, 4, 64, 32)
    for name in ("noop", "causal", "sliding_window", "prefix_lm", "alibi_causal", "softcap"):
        run(q, k, v, *STOCK[name], "cpu")
    ids = torch.tensor([0] * 30 + [1] * 34)
    run(q, k, v, None, flexattn.document(ids), "cpu")
    run(q, k, v, None, flexattn.and_masks(flexattn.causal, flexattn.document(ids)), "cpu")
    assert flexattn.runtime_cache_stats() == before


def test_new_shapes_do_not_recompile():
    def shifted(score, b, h, q_idx, kv_idx):
        return score - 0.125 * torch.abs(q_idx - kv_idx)

    run(rand(1, 2, 40, 32), rand(1, 2, 40, 32), rand(1, 2, 40, 32), shifted, None, "cpu")
    compiled = flexattn.runtime_cache_stats()[0:2]
    for L, B in ((200, 2), (77, 3)):
        q, k, v = rand(B, 2, L, 32), rand(B, 2, L + 5, 32), rand(B, 2, L + 5, 32)
        out, lse = run(q, k, v, shifted, None, "cpu")
        check_close(out, lse, *reference(q, k, v, shifted), torch.float32)
    assert flexattn.runtime_cache_stats()[0:2] == compiled


def test_captured_tensor_updates_are_seen():
    scale_by_head = torch.ones(2)

    def head_scaled(score, b, h, q_idx, kv_idx):
        return score * scale_by_head[h]

    q, k, v = rand(1, 2, 50, 16), rand(1, 2, 50, 16), rand(1, 2, 50, 16)
    first = flexattn.flex_attention(q, k, v, score_mod=head_scaled)
    scale_by_head.mul_(3.0)  # in place: same tensor, new values
    second = flexattn.flex_attention(q, k, v, score_mod=head_scaled)
    torch.testing.assert_close(second.double(), reference(q, k, v, head_scaled)[0], atol=2e-4,
                               rtol=2e-4)
    assert not torch.allclose(first, second)


def test_rebound_closure_is_retraced():
    def make(offset_table):
        def mod(score, b, h, q_idx, kv_idx):
            return score + offset_table[q_idx]
        return mod

    q, k, v = rand(1, 1, 30, 16), rand(1, 1, 30, 16), rand(1, 1, 30, 16)
    for table in (torch.zeros(30).uniform_(-1, 1), torch.arange(30, dtype=torch.int64)):
        mod = make(table)
        out = flexattn.flex_attention(q, k, v, score_mod=mod)
        torch.testing.assert_close(out.double(), reference(q, k, v, mod)[0], atol=2e-4,
                                   rtol=2e-4)


def test_poisoned_outputs_are_overwritten():
    q, k, v = rand(1, 2, 70, 32), rand(1, 2, 70, 32), rand(1, 2, 70, 32)
    out = torch.full((1, 2, 70, 32), float("nan"))
    lse = torch.full((1, 2, 70), float("nan"))
    bm = flexattn.create_block_mask(flexattn.causal, 1, 1, 70, 70, device="cpu")
    plan = flexattn._api._plan(None, bm, torch.device("cpu"), None, False, True)
    flexattn._C.forward(q, k, v, out, lse, plan.score, plan.mask, plan.lists, plan.scale,
                        plan.gqa, 0)
    check_close(out, lse, *reference(q, k, v, None, flexattn.causal), torch.float32)


def test_unsupported_constructs_name_themselves():
    q, k, v = rand(1, 1, 16, 16), rand(1, 1, 16, 16), rand(1, 1, 16, 16)

    def branchy(score, b, h, q_idx, kv_idx):
        return score if q_idx > kv_idx else -score

    def anded(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx and kv_idx > 2

    def sliced(score, b, h, q_idx, kv_idx):
        return score + bias_h  # a whole tensor, not an element

    def unknown_fn(score, b, h, q_idx, kv_idx):
        return torch.erf(score)

    with pytest.raises(flexattn.UnsupportedConstruct, match="Python bool"):
        flexattn.flex_attention(q, k, v, score_mod=branchy)
    with pytest.raises(flexattn.UnsupportedConstruct, match="Python bool"):
        flexattn.create_block_mask(anded, 1, 1, 16, 16, device="cpu")
    with pytest.raises(flexattn.UnsupportedConstruct, match="as a value"):
        flexattn.flex_attention(q, k, v, score_mod=sliced)
    with pytest.raises(flexattn.UnsupportedConstruct, match="erf"):
        flexattn.flex_attention(q, k, v, score_mod=unknown_fn)


def test_bad_inputs_raise_flexattention_error():
    q = rand(1, 2, 16, 16)
    with pytest.raises(flexattn.FlexAttentionError, match="4 dims"):
        flexattn.flex_attention(q[0], q[0], q[0])
    with pytest.raises(flexattn.FlexAttentionError):
        flexattn.flex_attention(q.double(), q.double(), q.double())
    with pytest.raises(flexattn.FlexAttentionError):
        flexattn.flex_attention(q, rand(1, 2, 16, 8), rand(1, 2, 16, 8))
    bm = flexattn.create_block_mask(flexattn.causal, 1, 1, 32, 32, device="cpu")
    with pytest.raises(flexattn.FlexAttentionError):  # block mask for 32 x 32, call is 16 x 16
        flexattn.flex_attention(q, q, q, block_mask=bm)
    # the error class is both a ValueError and a RuntimeError, as PyTorch raises either
    assert issubclass(flexattn.FlexAttentionError, ValueError)
    assert issubclass(flexattn.FlexAttentionError, RuntimeError)
    if not torch.cuda.is_available():
        with pytest.raises(flexattn.FlexAttentionError, match="CUDA"):
            flexattn.create_block_mask(flexattn.causal, 1, 1, 32, 32, device="cuda")



def test_return_aux_and_default_device():
    from torch.nn.attention.flex_attention import AuxRequest as TorchAuxRequest

    q, k, v = rand(1, 2, 40, 16), rand(1, 2, 40, 16), rand(1, 2, 40, 16)
    ref_out, ref_lse = reference(q, k, v, my_softcap)
    for request in (flexattn.AuxRequest(lse=True), TorchAuxRequest(lse=True)):
        out, aux = flexattn.flex_attention(q, k, v, score_mod=my_softcap, return_aux=request)
        assert aux.max_scores is None
        check_close(out, aux.lse, ref_out, ref_lse, torch.float32)
    out, aux = flexattn.flex_attention(q, k, v, return_aux=flexattn.AuxRequest())
    assert aux.lse is None
    with pytest.raises(flexattn.FlexAttentionError, match="max_scores"):
        flexattn.flex_attention(q, k, v, return_aux=flexattn.AuxRequest(max_scores=True))
    with pytest.raises(flexattn.FlexAttentionError, match="not both"):
        flexattn.flex_attention(q, k, v, return_lse=True, return_aux=flexattn.AuxRequest())
    # device=None: the current CUDA device when PyTorch sees one, else the CPU (as PyTorch)
    bm = flexattn.create_block_mask(flexattn.causal, None, None, 40, 40)
    assert bm.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_mixed_devices_and_dtypes_are_refused():
    q = rand(1, 2, 16, 16)
    with pytest.raises(flexattn.FlexAttentionError, match="dtype"):
        flexattn.flex_attention(q, q.bfloat16(), q)
    if torch.cuda.is_available():
        with pytest.raises(flexattn.FlexAttentionError, match="device"):
            flexattn.flex_attention(q, q.cuda(), q.cuda())


def test_inference_mode_captures_and_unknown_methods():
    with torch.inference_mode():
        table = torch.randn(40)

        def tabled(score, b, h, q_idx, kv_idx):
            return score + torch.zeros_like(score, dtype=score.dtype) + table[kv_idx]

        q, k, v = rand(1, 1, 40, 16), rand(1, 1, 40, 16), rand(1, 1, 40, 16)
        out = flexattn.flex_attention(q, k, v, score_mod=tabled)
        torch.testing.assert_close(out.double(), reference(q, k, v, tabled)[0], atol=2e-4,
                                   rtol=2e-4)

    def erf_method(score, b, h, q_idx, kv_idx):
        return score.erf()

    with pytest.raises(flexattn.UnsupportedConstruct, match="erf"):
        flexattn.flex_attention(q, k, v, score_mod=erf_method)


def test_non_unit_last_stride_is_copied_and_differentiable():
    base = rand(1, 2, 16, 50, requires_grad=True)
    q = base.transpose(2, 3)  # [1, 2, 50, 16] with last stride 50
    k, v = rand(1, 2, 50, 16), rand(1, 2, 50, 16)
    out = flexattn.flex_attention(q, k, v, score_mod=my_softcap)
    out.sum().backward()
    q2 = q.detach().double().requires_grad_()
    ref_out, _ = reference(q2, k, v, my_softcap)
    ref_out.sum().backward()
    torch.testing.assert_close(out.double(), ref_out, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(base.grad.double(), q2.grad.transpose(2, 3), atol=5e-4,
                               rtol=5e-4)


def test_pytorch_block_masks_are_accepted():
    from torch.nn.attention import flex_attention as tfa

    def near(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= 20

    q, k, v = rand(2, 2, 130, 16), rand(2, 2, 150, 16), rand(2, 2, 150, 16)
    for mask in (near, flexattn.causal):
        torch_bm = tfa.create_block_mask(mask, 2, None, 130, 150, device="cpu", BLOCK_SIZE=32)
        out, lse = flexattn.flex_attention(q, k, v, block_mask=torch_bm, return_lse=True)
        check_close(out, lse, *reference(q, k, v, None, mask), torch.float32)
    lists_only = tfa.BlockMask.from_kv_blocks(torch.ones(1, 1, 1, dtype=torch.int32),
                                              torch.zeros(1, 1, 1, 2, dtype=torch.int32),
                                              BLOCK_SIZE=128, seq_lengths=(130, 150))
    if lists_only.sparsity() > 0:
        with pytest.raises(flexattn.FlexAttentionError, match="block lists"):
            flexattn.flex_attention(q, k, v, block_mask=lists_only)
    with pytest.raises(flexattn.FlexAttentionError, match="BlockMask"):
        flexattn.flex_attention(q, k, v, block_mask="causal")


def test_empty_queries_or_keys():
    for qs, ks in (((1, 2, 0, 16), (1, 2, 8, 16)), ((0, 2, 8, 16), (0, 2, 8, 16)),
                   ((1, 2, 8, 16), (1, 2, 0, 16))):
        q, k = rand(*qs, requires_grad=True), rand(*ks, requires_grad=True)
        v = rand(*ks[:3], 24, requires_grad=True)
        out, lse = flexattn.flex_attention(q, k, v, return_lse=True)
        assert out.shape == (*qs[:3], 24) and lse.shape == qs[:3]
        assert (out == 0).all() and torch.isneginf(lse).all()
        out.sum().backward()
        assert all(t.grad is not None and (t.grad == 0).all() for t in (q, k, v))
    with pytest.raises(flexattn.FlexAttentionError, match="D"):
        flexattn.flex_attention(rand(1, 1, 4, 0), rand(1, 1, 4, 0), rand(1, 1, 4, 0))


def test_learnable_captured_tensors_get_gradients():
    torch.manual_seed(5)
    table = (torch.randn(4, 32) * 0.5).requires_grad_()
    gate = torch.randn(60, dtype=torch.float64).requires_grad_()  # read as float32

    def rel_bias(score, b, h, q_idx, kv_idx):
        d = torch.clamp(q_idx - kv_idx, -15, 16) + 15
        return score * torch.sigmoid(gate[kv_idx]) + table[h, d]

    q, k, v = (rand(2, 4, n, 16, requires_grad=True) for n in (50, 60, 60))
    bm = flexattn.create_block_mask(flexattn.causal, None, None, 50, 60, device="cpu")
    dout = rand(2, 4, 50, 16)
    flexattn.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm).backward(dout)
    got = [t.grad.clone() for t in (q, k, v, table, gate)]
    for t in (q, k, v, table, gate):
        t.grad = None
    ref_out, _ = reference(q, k, v, rel_bias, flexattn.causal)
    ref_out.backward(dout.double())
    for name, g, t in zip("q k v table gate".split(), got, (q, k, v, table, gate)):
        assert g.dtype == t.dtype, name
        torch.testing.assert_close(g.double(), t.grad.double(), atol=5e-4, rtol=5e-4,
                                   msg=lambda m: f"{name}: {m}")
    assert (got[4][50:] == 0).all()  # keys no query attends (causal, 50 queries) get nothing
    # under no_grad the same mod runs with the capture as a constant
    with torch.no_grad():
        out = flexattn.flex_attention(q, k, v, score_mod=rel_bias, block_mask=bm)
    torch.testing.assert_close(out.double(), ref_out.detach(), atol=2e-4, rtol=2e-4)
