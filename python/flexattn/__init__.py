"""flexattn: FlexAttention with PyTorch's API, on flexattn's C++ kernels (CPU and CUDA).

    import flexattn
    block_mask = flexattn.create_block_mask(flexattn.causal, None, None, L, L, device="cpu")
    out = flexattn.flex_attention(q, k, v, score_mod=my_score_mod, block_mask=block_mask)

score_mod(score, b, h, q_idx, kv_idx) and mask_mod(b, h, q_idx, kv_idx) are the same functions
torch.nn.attention.flex_attention takes: flexattn traces them once into C++ and compiles them at
run time (cached in memory and on disk), the stock ones (causal, sliding_window, ...) excepted,
which run kernels built into the package.
"""

import os as _os

import torch as _torch  # noqa: F401  (loaded first: the tensors passed in are torch's)

_headers = _os.path.join(_os.path.dirname(__file__), "include")
if _os.path.isdir(_headers):
    # Runtime variants compile against the headers installed with the package.
    _os.environ.setdefault("FLEXATTN_INCLUDE_DIR", _headers)

from . import _C  # noqa: E402
from ._api import (AuxOutput, AuxRequest, BlockMask, FlexAttentionError,  # noqa: E402
                   create_block_mask, flex_attention)
from ._mods import (alibi, and_masks, causal, document, noop_mask, noop_score,  # noqa: E402
                    or_masks, prefix_lm, relative_position, sliding_window, softcap)
from ._trace import UnsupportedConstruct  # noqa: E402

__version__ = "0.1.0"


def runtime_cache_stats():
    """(compiled, loaded_from_disk, memory_hits) of the runtime-variant cache since start."""
    return tuple(_C.runtime_cache_stats())


runtime_cache_dir = _C.runtime_cache_dir
cuda_available = _C.cuda_available

__all__ = ["AuxOutput", "AuxRequest", "BlockMask", "FlexAttentionError", "UnsupportedConstruct", "alibi", "and_masks",
           "causal", "create_block_mask", "cuda_available", "document", "flex_attention",
           "noop_mask", "noop_score", "or_masks", "prefix_lm", "relative_position",
           "runtime_cache_dir", "runtime_cache_stats", "sliding_window", "softcap"]
