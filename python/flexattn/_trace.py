"""Tracing a Python score_mod / mask_mod into the C++ source of a runtime variant.

The user's function is called once with symbolic arguments (`Sym`): every operation on them
appends one statement `const auto tN = ...;` to a function body, and the returned value becomes
its `return`. The body is handed to the library as a runtime mod (C++ runtime.h), which compiles
it into the same kernels a compiled-in functor gets, forward and backward (the score is a float
in the forward and a dual number in the backward: the emitted code is generic in it).

Supported: arithmetic (+ - * / // % **, unary -), comparisons, & | ^ ~ (logical on booleans,
bitwise on integers), << >>, Python int / float / bool constants, torch.where, exp, exp2, log,
log2, tanh, sigmoid, abs, sqrt, sin, cos, minimum, maximum, clamp, pow, neg, logical_and / or /
not / xor, floor_divide, remainder, zeros_like / ones_like / full_like, the same as Tensor
methods, and captured tensors (closure or global variables) indexed by integer expressions:
`bias[h, q_idx]`, `bias[h][q_idx]`, `doc_ids[kv_idx]`; a 0-dim tensor is read as a number.
Anything else raises UnsupportedConstruct (a TypeError) naming what the function did.

Types follow PyTorch's promotion for these scalars: indices are int32, the score is float32,
int op float is float, `/` is always float, `//` and `%` on integers floor as Python does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MAX_CAPTURES = 8  # the library's limit per mod (runtime.h)


class UnsupportedConstruct(TypeError):
    """A score_mod / mask_mod did something the tracer cannot turn into kernel code."""


@dataclass
class TraceResult:
    source: str  # C++ function body for RuntimeScoreMod / RuntimeMaskMod
    captures: list = field(default_factory=list)  # [(name, torch.Tensor as captured)]


_INT, _FLOAT, _BOOL = "int", "float", "bool"
_INF = "::flexattn::math_detail::inf()"


def _float_literal(x: float) -> str:
    if math.isnan(x):
        return f"({_INF} - {_INF})"
    if math.isinf(x):
        return _INF if x > 0 else f"(-{_INF})"
    text = "%.9g" % x
    if "e" not in text and "." not in text and "n" not in text:
        text += ".0"
    return f"{text}f"


class _Tracer:
    def __init__(self, what: str):
        self.what = what  # "score_mod" / "mask_mod", for messages
        self.lines: list[str] = []
        self.captures: list[tuple[str, torch.Tensor, str]] = []  # name, tensor, kind
        self._by_id: dict[int, int] = {}

    def unsupported(self, construct: str):
        raise UnsupportedConstruct(
            f"flexattn: the {self.what} uses {construct}, which cannot be traced into a kernel "
            "(supported: arithmetic, comparisons, & | ~, torch.where, exp, tanh, log, sigmoid, "
            "abs, minimum/maximum, captured tensors indexed by index expressions, Python numbers)")

    def emit(self, kind: str, expr: str) -> "Sym":
        name = f"t{len(self.lines)}"
        ctype = {"int": "int", "bool": "bool", "float": "auto"}[kind]
        self.lines.append(f"const {ctype} {name} = {expr};")
        return Sym(self, name, kind)

    def capture(self, t: torch.Tensor):
        """The capture slot of tensor `t`: (name, kind, rank)."""
        key = id(t)
        if key not in self._by_id:
            if len(self.captures) == MAX_CAPTURES:
                self.unsupported(f"more than {MAX_CAPTURES} captured tensors")
            if t.dim() > 4:
                self.unsupported(f"a captured tensor with {t.dim()} dims (at most 4)")
            if t.is_complex():
                self.unsupported("a complex captured tensor")
            if t.dtype == torch.bool:
                kind = _BOOL
            elif t.is_floating_point():
                kind = _FLOAT
            else:
                kind = _INT
            self._by_id[key] = len(self.captures)
            self.captures.append((f"cap{len(self.captures)}", t, kind))
        name, t, kind = self.captures[self._by_id[key]]
        return name, kind, max(t.dim(), 1)

    # ---- operands -------------------------------------------------------------------------------
    def lift(self, x):
        """A Sym for an operand: a Sym, a Python number or a 0-dim tensor."""
        if isinstance(x, Sym):
            return x
        if isinstance(x, bool):
            return Sym(self, "true" if x else "false", _BOOL)
        if isinstance(x, int):
            if not -(2**31) <= x < 2**31:
                self.unsupported(f"the integer constant {x} (beyond int32)")
            return Sym(self, f"({x})", _INT)
        if isinstance(x, float):
            return Sym(self, _float_literal(x), _FLOAT)
        if isinstance(x, torch.Tensor):
            if x.dim() == 0:
                name, kind, _ = self.capture(x)
                return self._read(name, kind, 1, ["0"])
            self.unsupported(f"a captured tensor of shape {tuple(x.shape)} as a value "
                             "(index it with the index arguments)")
        if isinstance(x, _Partial):
            self.unsupported(f"a captured tensor indexed with {len(x.indices)} of its "
                             f"{x.rank} dims")
        self.unsupported(f"a value of type {type(x).__name__}")

    def _read(self, name, kind, rank, indices):
        expr = f"{name}[{indices[0]}]" if rank == 1 else f"{name}({', '.join(indices)})"
        if kind == _BOOL:
            return self.emit(_BOOL, f"({expr} != 0)")
        return self.emit(kind, expr)

    def index(self, t: torch.Tensor, idx):
        name, kind, rank = self.capture(t)
        part = _Partial(self, t, name, kind, rank, [])
        return part.add(idx)


class _Partial:
    """A captured tensor indexed by fewer indices than it has dims (`bias[h]` of a 2-D bias)."""

    def __init__(self, tracer, tensor, name, kind, rank, indices):
        self.tracer, self.tensor, self.name, self.kind = tracer, tensor, name, kind
        self.rank, self.indices = rank, indices

    def add(self, idx):
        tr = self.tracer
        items = idx if isinstance(idx, tuple) else (idx,)
        indices = list(self.indices)
        for item in items:
            if len(indices) == self.rank:
                tr.unsupported(f"more indices than the captured tensor's {self.rank} dims")
            if isinstance(item, (slice, type(Ellipsis))) or item is None:
                tr.unsupported("slicing of a captured tensor (index it by integers)")
            if isinstance(item, torch.Tensor) and item.dim() == 0 and not item.is_floating_point():
                item = int(item)
            if isinstance(item, bool) or (isinstance(item, Sym) and item.kind == _BOOL):
                tr.unsupported("a boolean index into a captured tensor")
            if isinstance(item, int):
                size = self.tensor.shape[len(indices)] if self.tensor.dim() else 1
                if not -size <= item < size:
                    tr.unsupported(f"the constant index {item} out of range for a dim of {size}")
                indices.append(str(item % size))
            elif isinstance(item, Sym) and item.kind == _INT:
                indices.append(item.expr)
            else:
                tr.unsupported(f"an index of type {type(item).__name__} into a captured tensor")
        if len(indices) == self.rank:
            return tr._read(self.name, self.kind, self.rank, indices)
        return _Partial(tr, self.tensor, self.name, self.kind, self.rank, indices)

    def __getitem__(self, idx):
        return self.add(idx)

    def _refuse(self, *_, **__):
        self.tracer.lift(self)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = __and__ = __or__ = _refuse
    __bool__ = __index__ = _refuse


# ---- the symbolic value -------------------------------------------------------------------------
def _f(x: "Sym") -> str:
    """x as a float expression."""
    return x.expr if x.kind == _FLOAT else f"float({x.expr})"


def _v(x: "Sym") -> str:
    """x as a plain number for a comparison (a dual number compares by its value)."""
    return f"::flexattn::value_of({x.expr})" if x.kind == _FLOAT else x.expr


def _i(x: "Sym") -> str:
    """x as an int expression (booleans are 0 / 1)."""
    return f"int({x.expr})" if x.kind == _BOOL else x.expr


def _arith(a: "Sym", b: "Sym", op: str) -> "Sym":
    tr = a.tracer
    if _FLOAT in (a.kind, b.kind):
        return tr.emit(_FLOAT, f"{_f(a)} {op} {_f(b)}")
    return tr.emit(_INT, f"{_i(a)} {op} {_i(b)}")


def _truediv(a, b):
    return a.tracer.emit(_FLOAT, f"{_f(a)} / {_f(b)}")


def _floordiv(a, b):
    if _FLOAT in (a.kind, b.kind):
        a.tracer.unsupported("// on floating-point values")
    x, y = _i(a), _i(b)
    # C++ truncates toward zero; Python and PyTorch floor.
    return a.tracer.emit(_INT, f"{x} / {y} - ({x} % {y} != 0 && (({x} < 0) != ({y} < 0)))")


def _mod(a, b):
    if _FLOAT in (a.kind, b.kind):
        a.tracer.unsupported("% on floating-point values")
    x, y = _i(a), _i(b)
    r = a.tracer.emit(_INT, f"{x} % {y}")
    return a.tracer.emit(_INT, f"{r.expr} + ({r.expr} != 0 && (({r.expr} < 0) != ({y} < 0)) ? {y} : 0)")


def _pow(a, b, b_raw):
    tr = a.tracer
    if isinstance(b_raw, Sym):
        tr.unsupported("** with a traced exponent")
    if a.kind != _FLOAT and isinstance(b_raw, int) and not isinstance(b_raw, bool) and 0 <= b_raw <= 8:
        return tr.emit(_INT, " * ".join([_i(a)] * b_raw) if b_raw else "1")
    return tr.emit(_FLOAT, f"pow({_f(a)}, {_float_literal(float(b_raw))})")


def _compare(a, b, op):
    if _FLOAT in (a.kind, b.kind):
        x = _v(a) if a.kind == _FLOAT else _f(a)
        y = _v(b) if b.kind == _FLOAT else _f(b)
        return a.tracer.emit(_BOOL, f"{x} {op} {y}")
    return a.tracer.emit(_BOOL, f"{_i(a)} {op} {_i(b)}")


def _logical(a, b, op):
    tr = a.tracer
    if _FLOAT in (a.kind, b.kind):
        tr.unsupported(f"{op} on floating-point values")
    if a.kind == _BOOL and b.kind == _BOOL:
        cop = {"&": "&&", "|": "||", "^": "!="}[op]
        return tr.emit(_BOOL, f"{a.expr} {cop} {b.expr}")
    return tr.emit(_INT, f"{_i(a)} {op} {_i(b)}")


def _invert(a):
    if a.kind == _BOOL:
        return a.tracer.emit(_BOOL, f"!{a.expr}")
    if a.kind == _INT:
        return a.tracer.emit(_INT, f"~{a.expr}")
    a.tracer.unsupported("~ on a floating-point value")


def _neg(a):
    return a.tracer.emit(_FLOAT if a.kind == _FLOAT else _INT,
                         f"-{a.expr}" if a.kind == _FLOAT else f"-{_i(a)}")


def _unary_fn(name):
    def fn(a):
        return a.tracer.emit(_FLOAT, f"{name}({_f(a)})")
    return fn


def _abs(a):
    if a.kind == _FLOAT:
        return a.tracer.emit(_FLOAT, f"abs({a.expr})")
    x = _i(a)
    return a.tracer.emit(_INT, f"{x} < 0 ? -{x} : {x}")


def _minmax(a, b, which):
    tr = a.tracer
    if _FLOAT in (a.kind, b.kind):
        return tr.emit(_FLOAT, f"{which}({_f(a)}, {_f(b)})")
    x, y = _i(a), _i(b)
    return tr.emit(_INT, f"{x} {'<' if which == 'min' else '>'} {y} ? {x} : {y}")


def _where(c, a, b):
    tr = c.tracer
    cond = c.expr if c.kind == _BOOL else f"{_v(c)} != 0"
    if _FLOAT in (a.kind, b.kind):
        return tr.emit(_FLOAT, f"where({cond}, {_f(a)}, {_f(b)})")
    if a.kind == _BOOL and b.kind == _BOOL:
        return tr.emit(_BOOL, f"{cond} ? {a.expr} : {b.expr}")
    return tr.emit(_INT, f"{cond} ? {_i(a)} : {_i(b)}")


def _clamp(a, lo=None, hi=None):
    out = a
    if lo is not None:
        out = _minmax(out, a.tracer.lift(lo), "max")
    if hi is not None:
        out = _minmax(out, a.tracer.lift(hi), "min")
    return out


def _to_kind(a, kind):
    if kind == a.kind:
        return a
    if kind == _FLOAT:
        return a.tracer.emit(_FLOAT, _f(a))
    if kind == _BOOL:
        return a.tracer.emit(_BOOL, f"{_v(a)} != 0")
    if a.kind == _FLOAT:  # float -> int truncates, as Tensor.to(torch.int32)
        return a.tracer.emit(_INT, f"int({_v(a)})")
    return a.tracer.emit(_INT, _i(a))


def _kind_of_dtype(dtype, tr):
    if dtype == torch.bool:
        return _BOOL
    if dtype.is_floating_point:
        return _FLOAT
    if dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return _INT
    tr.unsupported(f"a conversion to {dtype}")


class Sym:
    """A traced scalar: a C++ expression (`expr`) of kind int, float or bool."""

    __slots__ = ("tracer", "expr", "kind")

    def __init__(self, tracer, expr, kind):
        self.tracer, self.expr, self.kind = tracer, expr, kind

    def _other(self, x):
        return self.tracer.lift(x)

    # arithmetic
    def __add__(self, o): return _arith(self, self._other(o), "+")
    def __radd__(self, o): return _arith(self._other(o), self, "+")
    def __sub__(self, o): return _arith(self, self._other(o), "-")
    def __rsub__(self, o): return _arith(self._other(o), self, "-")
    def __mul__(self, o): return _arith(self, self._other(o), "*")
    def __rmul__(self, o): return _arith(self._other(o), self, "*")
    def __truediv__(self, o): return _truediv(self, self._other(o))
    def __rtruediv__(self, o): return _truediv(self._other(o), self)
    def __floordiv__(self, o): return _floordiv(self, self._other(o))
    def __rfloordiv__(self, o): return _floordiv(self._other(o), self)
    def __mod__(self, o): return _mod(self, self._other(o))
    def __rmod__(self, o): return _mod(self._other(o), self)
    def __pow__(self, o): return _pow(self, self._other(o), o)
    def __rpow__(self, o):
        self._other(o)  # refuses an operand of another type, naming it
        if isinstance(o, (int, float)) and not isinstance(o, bool) and o > 0:
            # c ** x = exp2(x * log2(c)) for a positive constant base
            return self.tracer.emit(_FLOAT, f"exp2({_f(self)} * {_float_literal(math.log2(o))})")
        return self.tracer.unsupported("** with a traced exponent")
    def __neg__(self): return _neg(self)
    def __pos__(self): return self
    def __abs__(self): return _abs(self)
    # comparisons
    def __lt__(self, o): return _compare(self, self._other(o), "<")
    def __le__(self, o): return _compare(self, self._other(o), "<=")
    def __gt__(self, o): return _compare(self, self._other(o), ">")
    def __ge__(self, o): return _compare(self, self._other(o), ">=")
    def __eq__(self, o): return _compare(self, self._other(o), "==")
    def __ne__(self, o): return _compare(self, self._other(o), "!=")
    __hash__ = None
    # logic / bits
    def __and__(self, o): return _logical(self, self._other(o), "&")
    def __rand__(self, o): return _logical(self._other(o), self, "&")
    def __or__(self, o): return _logical(self, self._other(o), "|")
    def __ror__(self, o): return _logical(self._other(o), self, "|")
    def __xor__(self, o): return _logical(self, self._other(o), "^")
    def __rxor__(self, o): return _logical(self._other(o), self, "^")
    def __invert__(self): return _invert(self)
    def __lshift__(self, o): return _shift(self, self._other(o), "<<")
    def __rshift__(self, o): return _shift(self, self._other(o), ">>")

    # what a traced value cannot do
    def __bool__(self):
        self.tracer.unsupported("a traced value as a Python bool (`if`, `and`, `or`, `not`, a "
                                "chained comparison such as a < b < c); use &, |, ~ and "
                                "torch.where")
    def __index__(self): self.tracer.unsupported("a traced value as a Python int (int(), range)")
    def __int__(self): self.tracer.unsupported("int() of a traced value")
    def __float__(self): self.tracer.unsupported("float() of a traced value")
    def __len__(self): self.tracer.unsupported("len() of a traced value")
    def __iter__(self): self.tracer.unsupported("iteration over a traced value")
    def __getitem__(self, _): self.tracer.unsupported("indexing a traced value")
    def item(self): self.tracer.unsupported(".item() of a traced value")
    def tolist(self): self.tracer.unsupported(".tolist() of a traced value")

    # Tensor-like methods
    def exp(self): return _unary_fn("exp")(self)
    def exp2(self): return _unary_fn("exp2")(self)
    def log(self): return _unary_fn("log")(self)
    def log2(self): return _unary_fn("log2")(self)
    def tanh(self): return _unary_fn("tanh")(self)
    def sigmoid(self): return _unary_fn("sigmoid")(self)
    def sqrt(self): return _unary_fn("sqrt")(self)
    def sin(self): return _unary_fn("sin")(self)
    def cos(self): return _unary_fn("cos")(self)
    def abs(self): return _abs(self)
    def neg(self): return _neg(self)
    def clamp(self, min=None, max=None): return _clamp(self, min, max)
    clip = clamp
    def minimum(self, o): return _minmax(self, self._other(o), "min")
    def maximum(self, o): return _minmax(self, self._other(o), "max")
    def pow(self, o): return _pow(self, self._other(o), o)
    def logical_not(self): return _invert(_to_kind(self, _BOOL))
    def logical_and(self, o): return _logical(_to_kind(self, _BOOL), _to_kind(self._other(o), _BOOL), "&")
    def logical_or(self, o): return _logical(_to_kind(self, _BOOL), _to_kind(self._other(o), _BOOL), "|")
    def float(self): return _to_kind(self, _FLOAT)
    def int(self): return _to_kind(self, _INT)
    def long(self): return _to_kind(self, _INT)
    def bool(self): return _to_kind(self, _BOOL)
    def to(self, dtype=None, *args, **kwargs):
        dtype = kwargs.get("dtype", dtype)
        if isinstance(dtype, torch.dtype):
            return _to_kind(self, _kind_of_dtype(dtype, self.tracer))
        return self  # .to(device): a traced scalar lives wherever the kernel runs
    def type(self, dtype): return self.to(dtype)
    def where(self, cond, other): return _where(self._other(cond), self, self._other(other))
    def __repr__(self): return f"Sym({self.kind}: {self.expr})"

    @property
    def dtype(self):
        return {_INT: torch.int32, _FLOAT: torch.float32, _BOOL: torch.bool}[self.kind]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tracer = next(a.tracer for a in _flatten(args, kwargs) if isinstance(a, Sym))
        handler = _TORCH_FUNCTIONS.get(func)
        if handler is None:
            name = getattr(func, "__name__", repr(func))
            tracer.unsupported(f"torch function {name}")
        return handler(tracer, *args, **kwargs)


def _shift(a, b, op):
    if _FLOAT in (a.kind, b.kind):
        a.tracer.unsupported(f"{op} on floating-point values")
    return a.tracer.emit(_INT, f"{_i(a)} {op} {_i(b)}")


def _flatten(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (tuple, list)):
            yield from a
        else:
            yield a


def _binary(fn):
    return lambda tr, a, b, **kw: fn(tr.lift(a), tr.lift(b))


def _unary(fn):
    return lambda tr, a, **kw: fn(tr.lift(a))


def _getitem(tr, t, idx):
    if isinstance(t, torch.Tensor):
        return tr.index(t, idx)
    tr.unsupported("indexing a traced value")


def _full_like(tr, a, value, dtype=None, **kw):
    s = tr.lift(value)
    kind = _kind_of_dtype(dtype, tr) if dtype is not None else tr.lift(a).kind
    return _to_kind(s, kind)


def _torch_where(tr, c, a=None, b=None):
    if a is None:
        tr.unsupported("torch.where with one argument")
    return _where(tr.lift(c), tr.lift(a), tr.lift(b))


def _torch_clamp(tr, a, min=None, max=None, **kw):
    return _clamp(tr.lift(a), min, max)


_T = torch.Tensor
_TORCH_FUNCTIONS = {
    torch.where: _torch_where,
    torch.clamp: _torch_clamp, torch.clip: _torch_clamp, _T.clamp: _torch_clamp, _T.clip: _torch_clamp,
    torch.minimum: _binary(lambda a, b: _minmax(a, b, "min")),
    torch.maximum: _binary(lambda a, b: _minmax(a, b, "max")),
    torch.pow: lambda tr, a, b: (_pow(tr.lift(a), tr.lift(b), b) if isinstance(a, Sym)
                                 else Sym.__rpow__(tr.lift(b), a)),
    torch.logical_and: _binary(lambda a, b: _logical(_to_kind(a, _BOOL), _to_kind(b, _BOOL), "&")),
    torch.logical_or: _binary(lambda a, b: _logical(_to_kind(a, _BOOL), _to_kind(b, _BOOL), "|")),
    torch.logical_xor: _binary(lambda a, b: _logical(_to_kind(a, _BOOL), _to_kind(b, _BOOL), "^")),
    torch.logical_not: _unary(lambda a: _invert(_to_kind(a, _BOOL))),
    torch.floor_divide: _binary(_floordiv), torch.remainder: _binary(_mod),
    torch.abs: _unary(_abs), torch.neg: _unary(_neg), torch.negative: _unary(_neg),
    torch.zeros_like: lambda tr, a, dtype=None, **kw: _full_like(tr, a, 0, dtype),
    torch.ones_like: lambda tr, a, dtype=None, **kw: _full_like(tr, a, 1, dtype),
    torch.full_like: _full_like,
    _T.__getitem__: _getitem,
    _T.add: _binary(lambda a, b: _arith(a, b, "+")), _T.__add__: _binary(lambda a, b: _arith(a, b, "+")),
    _T.__radd__: _binary(lambda a, b: _arith(b, a, "+")),
    _T.sub: _binary(lambda a, b: _arith(a, b, "-")), _T.__sub__: _binary(lambda a, b: _arith(a, b, "-")),
    _T.__rsub__: _binary(lambda a, b: _arith(b, a, "-")),
    _T.mul: _binary(lambda a, b: _arith(a, b, "*")), _T.__mul__: _binary(lambda a, b: _arith(a, b, "*")),
    _T.__rmul__: _binary(lambda a, b: _arith(b, a, "*")),
    _T.div: _binary(_truediv), _T.__truediv__: _binary(_truediv),
    _T.__rtruediv__: _binary(lambda a, b: _truediv(b, a)),
    _T.__and__: _binary(lambda a, b: _logical(a, b, "&")), _T.__or__: _binary(lambda a, b: _logical(a, b, "|")),
    _T.eq: _binary(lambda a, b: _compare(a, b, "==")), _T.__eq__: _binary(lambda a, b: _compare(a, b, "==")),
    _T.ne: _binary(lambda a, b: _compare(a, b, "!=")), _T.__ne__: _binary(lambda a, b: _compare(a, b, "!=")),
    _T.lt: _binary(lambda a, b: _compare(a, b, "<")), _T.__lt__: _binary(lambda a, b: _compare(a, b, "<")),
    _T.le: _binary(lambda a, b: _compare(a, b, "<=")), _T.__le__: _binary(lambda a, b: _compare(a, b, "<=")),
    _T.gt: _binary(lambda a, b: _compare(a, b, ">")), _T.__gt__: _binary(lambda a, b: _compare(a, b, ">")),
    _T.ge: _binary(lambda a, b: _compare(a, b, ">=")), _T.__ge__: _binary(lambda a, b: _compare(a, b, ">=")),
}
for _name in ("exp", "exp2", "log", "log2", "tanh", "sigmoid", "sqrt", "sin", "cos"):
    _TORCH_FUNCTIONS[getattr(torch, _name)] = _unary(_unary_fn(_name))
_TORCH_FUNCTIONS[torch.special.expit] = _unary(_unary_fn("sigmoid"))
_TORCH_FUNCTIONS[torch.special.exp2] = _unary(_unary_fn("exp2"))
for _fn in (torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge):
    _op = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[_fn.__name__]
    _TORCH_FUNCTIONS[_fn] = _binary(lambda a, b, _op=_op: _compare(a, b, _op))
for _fn, _op in ((torch.add, "+"), (torch.sub, "-"), (torch.mul, "*")):
    _TORCH_FUNCTIONS[_fn] = _binary(lambda a, b, _op=_op: _arith(a, b, _op))
_TORCH_FUNCTIONS[torch.div] = _binary(_truediv)
_TORCH_FUNCTIONS[torch.true_divide] = _binary(_truediv)


# ---- entry point ----------------------------------------------------------------------------------
def trace(fn, what: str) -> TraceResult:
    """Traces a score_mod (what="score_mod") or mask_mod (what="mask_mod") into a C++ body."""
    tr = _Tracer(what)
    idx = [Sym(tr, name, _INT) for name in ("b", "h", "q_idx", "kv_idx")]
    args = idx if what == "mask_mod" else [Sym(tr, "score", _FLOAT)] + idx
    try:
        result = fn(*args)
    except UnsupportedConstruct:
        raise
    except AttributeError as e:  # a tensor method the tracer does not know
        raise UnsupportedConstruct(f"flexattn: the {what} uses {e}") from e
    except TypeError as e:
        if "argument" in str(e):
            sig = "(b, h, q_idx, kv_idx)" if what == "mask_mod" else "(score, b, h, q_idx, kv_idx)"
            raise UnsupportedConstruct(f"flexattn: a {what} takes {sig}: {e}") from e
        raise UnsupportedConstruct(f"flexattn: tracing the {what} failed: {e}") from e
    if isinstance(result, torch.Tensor) and result.dim() == 0:
        result = tr.lift(result)
    out = tr.lift(result) if not isinstance(result, Sym) else result
    if what == "mask_mod":
        ret = out.expr if out.kind == _BOOL else f"{_v(out)} != 0"
    else:
        # A float result may be a plain float where the score is a dual number (a score_mod that
        # ignores the score): the return converts it, with derivative 0.
        ret = _f(out) if out.kind != _BOOL else f"float({out.expr})"
    body = "\n".join(tr.lines + [f"return {ret};"])
    caps = [(name, t) for name, t, _ in tr.captures]
    return TraceResult(source=body, captures=caps)
