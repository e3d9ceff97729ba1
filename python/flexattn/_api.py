"""flex_attention and create_block_mask with PyTorch's names and signatures, over flexattn._C."""

from __future__ import annotations

import contextlib
import weakref
from typing import NamedTuple, Optional

import torch

from . import _C
from ._mods import PREBUILT_PAIRS
from ._runtime_mods import _prepare_capture, _traced

FlexAttentionError = _C.FlexAttentionError

_DEVICE_CODE = {"cpu": 0, "cuda": 1}


def _device_code(device: torch.device) -> int:
    code = _DEVICE_CODE.get(device.type)
    if code is None:
        raise FlexAttentionError(f"flexattn: tensors on {device} are not supported; expected cpu "
                                 "or cuda")
    return code


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _stock_of(fn):
    return getattr(fn, "_flexattn_stock", None) if fn is not None else ("noop", None)


_stock_scores = {}


def _stock_score(tag):
    name, param = tag
    obj = _stock_scores.get(tag)
    if obj is None:
        obj = _C.stock_score(name, num_heads=param if name == "alibi" else 0,
                             cap=param if name == "softcap" else 0.0)
        _stock_scores[tag] = obj
    return obj


# ---- BlockMask --------------------------------------------------------------------------------------
class BlockMask:
    """The block-sparse structure of a mask_mod (as PyTorch's BlockMask), made by create_block_mask.

    shape: (B, H, Q_LEN, KV_LEN) as given (None -> 1: broadcast over that dim);
    BLOCK_SIZE: (Q_BLOCK_SIZE, KV_BLOCK_SIZE); mask_mod: the function it was built from.
    """

    def __init__(self, data, mask_mod, device, stock_mask, keep):
        self._data = data
        self.mask_mod = mask_mod
        self.device = device
        self._stock_mask = stock_mask  # (_C.Mask, stock name) or None
        self._keep = keep  # tensors the C++ objects read
        self._runtime_mask = None

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def BLOCK_SIZE(self):
        return tuple(self._data.block_size)

    @property
    def seq_lengths(self):
        return self.shape[2], self.shape[3]

    def sparsity(self) -> float:
        """Percent of tiles skipped."""
        return self._data.sparsity()

    def to_string(self, grid_size=(20, 20), limit=4):
        if isinstance(grid_size, int):
            grid_size = (grid_size, grid_size)
        return self._data.to_string(grid_size[0], grid_size[1], limit)

    def __str__(self):
        return (f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%,\n"
                f"{self.to_string()})")

    __repr__ = __str__

    def _mask_for(self, score_stock_name):
        """The C++ mask to run with a score_mod: the stock functor when the pair is prebuilt,
        else the traced mask_mod (the lists stay those built here)."""
        if self._stock_mask is not None and (score_stock_name, self._stock_mask[1]) in PREBUILT_PAIRS:
            return self._stock_mask[0], True
        if self._stock_mask is not None and self._stock_mask[1] == "noop":
            return _C.stock_mask("noop"), False
        if self._runtime_mask is None:
            self._runtime_mask = _traced(self.mask_mod, "mask_mod")
        return self._runtime_mask.cpp(self.device)[0], False


def _norm_device(device) -> torch.device:
    if isinstance(device, torch.device) and (device.type == "cpu" or device.index is not None):
        return device  # the common case, a tensor's device: nothing to resolve
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlexAttentionError(f"flexattn: device {device} was asked for, but PyTorch sees no "
                                 "CUDA device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _stock_mask_obj(tag, device, keep):
    name, param = tag
    if name in ("document", "causal_document"):
        ids = _prepare_capture(param, device)
        keep.append(ids)
        return _C.stock_mask(name, 0, ids)
    return _C.stock_mask(name, param or 0)


def create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device=None, BLOCK_SIZE=128,
                      _compile=False, separate_full_blocks=True, compute_dq_write_order=False,
                      dq_kv_order=True):
    """Builds the BlockMask of mask_mod(b, h, q_idx, kv_idx) for a [B, H, Q_LEN, KV_LEN] score
    grid (B or H None: 1, broadcast), in tiles of BLOCK_SIZE (an int, or (Q, KV)), on `device`
    (None: the current CUDA device when PyTorch sees one, else the CPU, as PyTorch does).
    mask_mod None keeps everything. `_compile`, `separate_full_blocks`, `compute_dq_write_order`
    and `dq_kv_order` are accepted for PyTorch compatibility and ignored.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if mask_mod is None:
        from ._mods import noop_mask as mask_mod
    device = _norm_device(device)
    bq, bkv = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
    B = 1 if B is None else B
    H = 1 if H is None else H
    tag = _stock_of(mask_mod)
    keep = []
    stock = None
    if tag is not None:
        stock = (_stock_mask_obj(tag, device, keep), tag[0])
        builder = stock[0]
    else:
        builder = _traced(mask_mod, "mask_mod").cpp(device)[0]
    stream = _stream(device)
    with _on_device(device):
        data = _C.create_block_mask(builder, B, H, Q_LEN, KV_LEN, bq, bkv, _device_code(device),
                                    stream)
    return BlockMask(data, mask_mod, device, stock, keep)


class _CudaDevice:
    """Makes a CUDA device current for a call (the library allocates on the current one)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        self.ctx = None
        if self.device.index != torch.cuda.current_device():
            self.ctx = torch.cuda.device(self.device)
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


_NO_DEVICE_SWITCH = contextlib.nullcontext()


def _on_device(device):
    return _CudaDevice(device) if device.type == "cuda" else _NO_DEVICE_SWITCH


# ---- flex_attention ----------------------------------------------------------------------------------
class _Plan:
    """What one call runs: the C++ score and mask objects, the lists, the options."""

    __slots__ = ("score", "mask", "lists", "scale", "gqa", "deterministic", "keep", "learnables")

    def __init__(self, score, mask, lists, scale, gqa, deterministic, keep, learnables):
        self.score, self.mask, self.lists = score, mask, lists
        self.scale, self.gqa, self.deterministic, self.keep = scale, gqa, deterministic, keep
        # [(captured tensor that requires grad, the f32 buffer the backward fills)]
        self.learnables = learnables


_NOOP_SCORE = None
_NOOP_MASK = None


_from_torch = weakref.WeakKeyDictionary()


def _from_torch_block_mask(bm) -> BlockMask:
    """flexattn's BlockMask for one of PyTorch's (made by its create_block_mask): rebuilt from
    its mask_mod, geometry and device, once per object. One made from block lists
    (BlockMask.from_kv_blocks, no mask_mod) cannot be rebuilt and is refused."""
    ours = _from_torch.get(bm) if _is_torch_block_mask(bm) else None
    if ours is not None:
        return ours
    if not _is_torch_block_mask(bm):
        raise FlexAttentionError("flexattn: block_mask must be a BlockMask (from "
                                 f"flexattn.create_block_mask); got {type(bm).__name__}")
    from torch.nn.attention.flex_attention import noop_mask as torch_noop

    if bm.mask_mod is torch_noop and bm.sparsity() > 0.0:
        raise FlexAttentionError("flexattn: a PyTorch BlockMask made from block lists (no "
                                 "mask_mod) cannot be used; make it with create_block_mask")
    B, H, q_len, kv_len = bm.shape
    ours = create_block_mask(bm.mask_mod, B, H, q_len, kv_len, device=bm.kv_num_blocks.device,
                             BLOCK_SIZE=tuple(bm.BLOCK_SIZE))
    _from_torch[bm] = ours
    return ours


def _is_torch_block_mask(bm) -> bool:
    cls = type(bm)
    return cls.__name__ == "BlockMask" and cls.__module__.startswith("torch.")


def _plan(score_mod, block_mask, device, scale, enable_gqa, deterministic) -> _Plan:
    global _NOOP_SCORE, _NOOP_MASK
    if _NOOP_SCORE is None:
        _NOOP_SCORE, _NOOP_MASK = _C.stock_score("noop"), _C.stock_mask("noop")
    stock = _stock_of(score_mod)
    learnables = []
    mask_name = "noop"  # the mask's stock name; None for a traced one
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            block_mask = _from_torch_block_mask(block_mask)
        if block_mask.device != device:
            raise FlexAttentionError(f"flexattn: block_mask is on {block_mask.device}, the query "
                                     f"on {device}")
        mask_name = block_mask._stock_mask[1] if block_mask._stock_mask is not None else None
    if stock is not None and (stock[0], mask_name) in PREBUILT_PAIRS:
        score = _NOOP_SCORE if stock[0] == "noop" else _stock_score(stock)
        score_name = stock[0]
    elif stock is not None and stock[0] == "noop":
        score, score_name = _NOOP_SCORE, "noop"
    else:
        score, learnables = _traced(score_mod, "score_mod").cpp(device, torch.is_grad_enabled())
        score_name = None
    if block_mask is None:
        mask, lists = _NOOP_MASK, None
    else:
        mask, _ = block_mask._mask_for(score_name)
        lists = block_mask._data
    if scale is None:
        scale = 0.0  # the library's default, 1 / sqrt(head dim)
    elif scale == 0.0:
        scale = 1e-45  # the library reads 0 as "default"; the smallest float is 0 in effect
    return _Plan(score, mask, lists, float(scale), bool(enable_gqa), deterministic, block_mask,
                 learnables)


def _forward(q, k, v, plan):
    B, Hq, Lq = q.shape[0], q.shape[1], q.shape[2]
    _device_code(q.device)
    out = q.new_empty((B, Hq, Lq, v.shape[-1]))
    lse = q.new_empty((B, Hq, Lq), dtype=torch.float32)
    with _on_device(q.device):
        _C.forward(q, k, v, out, lse, plan.score, plan.mask, plan.lists, plan.scale, plan.gqa,
                   _stream(q.device))
    return out, lse


class _FlexAttentionFn(torch.autograd.Function):
    # The plan's learnable captures follow it as inputs, so autograd gives them gradients.
    @staticmethod
    def forward(ctx, q, k, v, plan, *captures):
        out, lse = _forward(q, k, v, plan)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        _refuse_lse_grad(grad_lse)
        plan = ctx.plan
        if grad_out is None:
            return (None,) * (4 + len(plan.learnables))
        dq, dk, dv = _backward(*ctx.saved_tensors, grad_out, plan)
        # The buffers belong to the cached C++ mod and the next backward overwrites them: copy.
        dcaps = [buf.reshape(t.shape).to(dtype=t.dtype, device=t.device, copy=True)
                 for t, buf in plan.learnables]
        return (dq, dk, dv, None, *dcaps)


class _EmptyAttentionFn(torch.autograd.Function):
    """No query rows or no keys (the library takes neither): every row has no key to attend,
    so out = 0 and lse = -inf, and every gradient is 0, as for fully masked rows."""

    @staticmethod
    def forward(ctx, q, k, v):
        B, Hq, Lq = q.shape[0], q.shape[1], q.shape[2]
        ctx.inputs = (q, k, v)  # only their shapes, dtypes and devices are used
        return (q.new_zeros((B, Hq, Lq, v.shape[-1])),
                q.new_full((B, Hq, Lq), float("-inf"), dtype=torch.float32))

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return tuple(torch.zeros_like(t) for t in ctx.inputs)


def _refuse_lse_grad(grad_lse):
    if grad_lse is None:
        return
    if bool(torch.any(grad_lse != 0)):
        raise FlexAttentionError("flexattn: gradients through the returned lse are not "
                                 "supported; use lse detached")


def _backward(q, k, v, out, lse, grad_out, plan):
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with _on_device(q.device):
        _C.backward(q, k, v, out, lse, grad_out, dq, dk, dv, plan.score, plan.mask,
                    plan.lists, plan.scale, plan.gqa, _stream(q.device), plan.deterministic)
    return dq, dk, dv


# ---- torch.compile: the same call as opaque custom ops ---------------------------------------------
# Under torch.compile the plan (traced mods, C++ objects, lists) is made once at trace time and
# kept in _PLANS; the graph holds only its key, a string, and calls the ops below, whose fake
# implementations give the output shapes. Eager calls skip the dispatcher (it costs more than
# the whole call's overhead budget) and use _FlexAttentionFn directly.
_PLANS = {}


def _plan_key(score_mod, block_mask, device, scale, enable_gqa, deterministic) -> str:
    plan = _plan(score_mod, block_mask, device, scale, enable_gqa, deterministic)
    if plan.learnables:
        raise FlexAttentionError("flexattn: captured tensors that require grad (learnable "
                                 "biases) are not supported under torch.compile yet; call "
                                 "flex_attention outside the compiled region")
    key = f"plan{len(_PLANS)}"
    _PLANS[key] = plan
    return key


# What torch.compiler.assume_constant_result(_plan_key) does (dynamo calls the function at trace
# time and bakes its result into the graph), without importing torch._dynamo here: that import
# costs ~2 s, and a program that never compiles should not pay it. test_compile.py's fullgraph
# test fails if a PyTorch release stops honouring the marker.
_plan_key._dynamo_marked_constant = True


@torch.library.custom_op("flexattn::flex_attention", mutates_args=())
def _op_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                plan_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, _PLANS[plan_key])


@_op_forward.register_fake
def _(q, k, v, plan_key):
    B, Hq, Lq = q.shape[0], q.shape[1], q.shape[2]
    return (q.new_empty((B, Hq, Lq, v.shape[-1])),
            q.new_empty((B, Hq, Lq), dtype=torch.float32))


@torch.library.custom_op("flexattn::flex_attention_backward", mutates_args=())
def _op_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, grad_out: torch.Tensor, grad_lse: Optional[torch.Tensor],
                 plan_key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _refuse_lse_grad(grad_lse)  # here the values are real, also under torch.compile
    return _backward(q, k, v, out, lse, grad_out, _PLANS[plan_key])


@_op_backward.register_fake
def _(q, k, v, out, lse, grad_out, grad_lse, plan_key):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _op_setup_context(ctx, inputs, output):
    q, k, v, plan_key = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.plan_key = plan_key


def _op_autograd(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _op_backward(q, k, v, out, lse, grad_out, grad_lse, ctx.plan_key)
    return dq, dk, dv, None


_op_forward.register_autograd(_op_autograd, setup_context=_op_setup_context)


def _as_torch(x, name):
    if isinstance(x, torch.Tensor):
        return x, None
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x), type(x)
    raise FlexAttentionError(f"flexattn: {name} must be a torch.Tensor or a DLPack array; got "
                             f"{type(x).__name__}")


def _back_to(kind, t):
    """A result as the caller's array type (NumPy, CuPy, JAX, ...) through DLPack."""
    module = __import__(kind.__module__.split(".")[0])
    if kind.__module__.startswith("jax"):
        import jax.dlpack
        return jax.dlpack.from_dlpack(t)
    return module.from_dlpack(t)


class AuxRequest(NamedTuple):
    """Which auxiliary outputs flex_attention returns (PyTorch's AuxRequest)."""
    lse: bool = False
    max_scores: bool = False


class AuxOutput(NamedTuple):
    """flex_attention's auxiliary outputs (PyTorch's AuxOutput); None where not requested."""
    lse: Optional[torch.Tensor] = None
    max_scores: Optional[torch.Tensor] = None


def flex_attention(query, key, value, score_mod=None, block_mask=None, scale=None,
                   enable_gqa=False, return_lse=False, kernel_options=None, *,
                   return_aux=None, deterministic=True):
    """PyTorch's flex_attention: softmax(score_mod(scale * q k^T) masked by block_mask) v.

    query [B, Hq, L, E], key [B, Hkv, S, E], value [B, Hkv, S, Ev]; torch tensors (or DLPack
    arrays, forward only) of float32, float16 or bfloat16 on the CPU or a CUDA device. Returns
    the output [B, Hq, L, Ev] in query's dtype, and with return_lse=True also the logsumexp
    [B, Hq, L] (float32, natural log). Differentiable in query, key and value through flexattn's
    backward (deterministic=False lets the GPU use atomics). kernel_options is accepted for
    PyTorch compatibility and ignored.
    """
    if return_aux is not None:
        if return_lse:
            raise FlexAttentionError("flexattn: give return_lse or return_aux, not both")
        if getattr(return_aux, "max_scores", False):
            raise FlexAttentionError("flexattn: return_aux.max_scores is not supported")
    q, kind = _as_torch(query, "query")
    k, _ = _as_torch(key, "key")
    v, _ = _as_torch(value, "value")
    for name, t in (("query", q), ("key", k), ("value", v)):  # devices: checked by the library
        if t.dim() != 4:
            raise FlexAttentionError(f"flexattn: {name} must have 4 dims [B, H, L, D]; got "
                                     f"shape {tuple(t.shape)}")
    # The kernels read any strides but a non-unit last one: such an operand is copied (autograd
    # sees the copy, so gradients still reach the caller's tensor).
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    device = _norm_device(q.device)
    if q.shape[0] * q.shape[1] * q.shape[2] == 0 or k.shape[2] == 0:
        out, lse = _EmptyAttentionFn.apply(q, k, v)
        return _results(out, lse, return_lse, return_aux)
    if torch.compiler.is_compiling():
        key = _plan_key(score_mod, block_mask, device, scale, enable_gqa, deterministic)
        out, lse = torch.ops.flexattn.flex_attention(q, k, v, key)
        return _results(out, lse, return_lse, return_aux)
    plan = _plan(score_mod, block_mask, device, scale, enable_gqa, deterministic)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or
                                              v.requires_grad or bool(plan.learnables))
    if needs_grad:
        out, lse = _FlexAttentionFn.apply(q, k, v, plan, *[t for t, _ in plan.learnables])
    else:
        out, lse = _forward(q, k, v, plan)
    if kind is not None:
        out, lse = _back_to(kind, out), _back_to(kind, lse)
    return _results(out, lse, return_lse, return_aux)


def _results(out, lse, return_lse, return_aux):
    if return_aux is not None:
        return out, AuxOutput(lse=lse if getattr(return_aux, "lse", False) else None)
    return (out, lse) if return_lse else out
