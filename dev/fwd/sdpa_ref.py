# SDPA FlashAttention-2 / cuDNN forward timings on the same shapes as fwd_dev's bench (bf16).
import sys, torch
from torch.nn.attention import sdpa_kernel, SDPBackend
import torch.nn.functional as F
D = int(sys.argv[1]) if len(sys.argv) > 1 else 128
L = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
B = int(sys.argv[3]) if len(sys.argv) > 3 else 1
H = 16
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
    for causal in (False, True):
        with sdpa_kernel(be):
            f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            for _ in range(3): f()
            torch.cuda.synchronize()
            ts = []
            for _ in range(20):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record(); f(); e1.record(); torch.cuda.synchronize(); ts.append(e0.elapsed_time(e1))
            ms = sorted(ts)[len(ts) // 2]
            dens = (L * (L + 1) / 2) / (L * L) if causal else 1.0
            print(f"sdpa-{name:5s} {'causal' if causal else 'noop':6s} D={D} L={L} {ms:.3f} ms "
                  f"{4 * B * H * L * L * D * dens / ms / 1e9:.1f} TFLOP/s")
