"""Traced score_mods / mask_mods as the library's runtime variants: traced once per function
(retraced when what it reads is rebound), their captures made readable by the library, and the
C++ objects kept per device."""

import weakref

import torch

from . import _C
from ._trace import trace

FlexAttentionError = _C.FlexAttentionError


def _fingerprint(fn, depth=0):
    """What a traced function's code depends on: its code and the identity of what it reads from
    closures, globals and defaults (functions recursively). A rebound tensor means a retrace."""
    code = getattr(fn, "__code__", None)
    if code is None or depth > 4:
        return (id(fn),)
    parts = [code]
    for cell in fn.__closure__ or ():
        try:
            parts.append(_fp_value(cell.cell_contents, depth))
        except ValueError:  # empty cell
            parts.append(None)
    g = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name in g:
            parts.append(_fp_value(g[name], depth))
    parts.append(_fp_value(getattr(fn, "__defaults__", None), depth))
    return tuple(parts)


def _fp_value(v, depth):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        return tuple(_fp_value(x, depth) for x in v)
    if isinstance(v, torch.Tensor):
        return ("t", id(v))
    if callable(v) and hasattr(v, "__code__"):
        return _fingerprint(v, depth + 1)
    return ("o", id(v))


_CAPTURE_DTYPES = {torch.float32: torch.float32, torch.float16: torch.float16,
                   torch.bfloat16: torch.bfloat16, torch.int32: torch.int32}


def _prepare_capture(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A capture as the library reads it: on `device`, contiguous, f32/f16/bf16/i32, rank >= 1."""
    t = t.detach()
    if t.dim() == 0:
        t = t.reshape(1)
    dtype = _CAPTURE_DTYPES.get(t.dtype)
    if dtype is None:
        if t.is_floating_point():
            dtype = torch.float32
        else:
            if t.numel() and (t.min() < -2**31 or t.max() >= 2**31):
                raise FlexAttentionError("flexattn: a captured integer tensor has values beyond "
                                         "int32")
            dtype = torch.int32
    return t.to(device=device, dtype=dtype).contiguous()


def _version_of(t: torch.Tensor):
    """What tells a changed capture: its version counter (in-place updates bump it). Tensors
    made under torch.inference_mode have none and cannot be updated in place outside it: their
    storage identity is enough."""
    try:
        return t._version
    except RuntimeError:
        return ("inference", t.data_ptr())


class _Traced:
    """One traced score_mod / mask_mod and its C++ objects per device."""

    def __init__(self, fn, what):
        self.what = what
        self.fingerprint = _fingerprint(fn)
        self.result = trace(fn, what)
        self._per_device = {}

    def cpp(self, device: torch.device, learn: bool = False):
        """The C++ mod on `device`. learn (score_mods, autograd on): the captures that require
        grad are learnable (runtime.h's Capture::grad); returns (mod, [(capture, grad buffer)])."""
        caps = self.result.captures
        flags = tuple(learn and t.requires_grad for _, t in caps)
        versions = tuple(_version_of(t) for _, t in caps)
        entry = self._per_device.get((device, flags))
        if entry is None or entry[0] != versions:
            prepared, learnables = [], []
            for (name, t), flag in zip(caps, flags):
                value = _prepare_capture(t, device)
                if flag:
                    grad = torch.empty(value.shape, dtype=torch.float32, device=device)
                    prepared.append((name, value, grad))
                    learnables.append((t, grad))
                else:
                    prepared.append((name, value))
            make = _C.runtime_score if self.what == "score_mod" else _C.runtime_mask
            # `prepared` stays referenced beside the C++ object: it reads their memory.
            entry = (versions, make(self.result.source, prepared), prepared, learnables)
            self._per_device[(device, flags)] = entry
        return entry[1], entry[3]


_traced_weak = weakref.WeakKeyDictionary()
_traced_strong = {}


def _traced(fn, what) -> _Traced:
    try:
        cache, key = _traced_weak, fn
        hit = cache.get(key)
    except TypeError:  # not weak-referenceable
        cache, key = _traced_strong, id(fn)
        hit = cache.get(key)
    if hit is not None and hit.what == what and hit.fingerprint == _fingerprint(fn):
        return hit
    t = _Traced(fn, what)
    cache[key] = t
    return t


