"""Host time of one SDPA call per backend, on the shapes of a demo training step with a new length every call:
`python training/gpu/attention_backends.py` (a GPU; torch alone, nothing to carry).

Why: the first GPU profile (training.profile, 2026-11-27) showed aten::_cudnn_attention_forward taking 6.6 ms of
host time a call (backward 5.7 ms) against 0.1-0.2 ms on the device: half of a step's host time. cuDNN builds a
graph for each new shape, and every batch here has new lengths. This measures each backend the same way.
"""

import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

SHAPES = {"decoder": (8, 9, 3, 64, 400, 900), "encoder": (160, 12, 12, 32, 60, 140)}  # B, heads, kv heads, dim, L range


def one_call(batch, heads, kv_heads, dim, length, generator):
    """Forward + backward on a (B, 1, L, L) boolean mask (causal for GQA, padding otherwise); host ms of each."""
    q = torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(batch, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator).cuda()
    keep = torch.arange(length, device="cuda")[None, :] < lengths[:, None]  # (B, L)
    mask = keep[:, None, None, :].expand(batch, 1, length, length)
    if kv_heads != heads:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device="cuda").tril()
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads != heads)
    forward = time.perf_counter()
    out.sum().backward()
    backward = time.perf_counter()
    torch.cuda.synchronize()
    return (forward - start) * 1e3, (backward - forward) * 1e3, (time.perf_counter() - start) * 1e3


def main():
    generator = torch.Generator().manual_seed(0)
    print(torch.__version__, torch.cuda.get_device_name())
    print("| part | backend | lengths | host fwd ms | host bwd ms | total ms (synced) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for part, (batch, heads, kv_heads, dim, low, high) in SHAPES.items():
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            for varying in (True, False):
                times = []
                with sdpa_kernel([backend]):
                    for call in range(12):
                        length = int(torch.randint(low, high, (1,), generator=generator)) if varying else high
                        try:
                            times.append(one_call(batch, heads, kv_heads, dim, length, generator))
                        except RuntimeError as error:
                            times = [f"unsupported: {str(error).splitlines()[0][:80]}"]
                            break
                if isinstance(times[0], str):
                    print(f"| {part} | {backend.name} | | {times[0]} | | |")
                    break
                median = [sorted(t[i] for t in times[2:])[len(times[2:]) // 2] for i in range(3)]
                print(f"| {part} | {backend.name} | {'new each call' if varying else 'same'} | {median[0]:.2f} | "
                      f"{median[1]:.2f} | {median[2]:.2f} |")


if __name__ == "__main__":
    main()
