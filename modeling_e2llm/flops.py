"""FLOP counts of E2LLM's parts and the device's measured matmul rate, shared by the efficiency benchmark
(evaluation/) and the training step benchmark (training/).

Counts are matrix-multiply FLOPs (2 per multiply-add) over the real (unpadded) tokens; embeddings, norms,
softmax and activations are left out (a few percent). Training costs 3x the forward (the backward computes
gradients of the inputs and of the weights, 2x the forward): the usual "model FLOPs" convention of MFU
figures. With LoRA on frozen weights the hardware does somewhat less (no gradients of frozen weights), so
a share of the matmul rate computed from these counts is an upper estimate of the work done, not of the speed.
"""

import time

import torch

TRAINING_FACTOR = 3  # forward + backward (2x forward)


def encoder_flops(encoder_config, lengths: list[int]) -> int:
    """Forward FLOPs of a BERT-style encoder over chunks of `lengths` tokens.

    Per layer and chunk of s tokens, hidden h, intermediate i: the q, k, v and output projections
    4 * 2*s*h*h, the feed-forward 2 * 2*s*h*i, attention scores QK^T 2*s*s*h and their weighted sum
    2*s*s*h.
    """
    h, i = encoder_config.hidden_size, encoder_config.intermediate_size
    per_layer = sum(8 * s * h * h + 4 * s * h * i + 4 * s * s * h for s in lengths)
    return encoder_config.num_hidden_layers * per_layer


def decoder_flops(text_config, lengths: list[int]) -> int:
    """Forward FLOPs of a Llama-family decoder (grouped-query attention, gated MLP) and its LM head over
    sequences of `lengths` tokens.

    Per layer and token, hidden h, query width q = heads * head_dim, key/value width kv, intermediate i:
    projections 2*h*q (query) + 2 * 2*h*kv (key, value) + 2*q*h (output), MLP 3 * 2*h*i; per sequence of s
    tokens attention 4*s*s*q (scores and weighted sum, counted in full although the mask is causal). The LM
    head adds 2*h*vocab per token.
    """
    c = text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q = c.num_attention_heads * head_dim
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    per_token = 4 * c.hidden_size * q + 4 * c.hidden_size * kv * head_dim + 6 * c.hidden_size * c.intermediate_size
    tokens = sum(lengths)
    attention = sum(4 * s * s * q for s in lengths)
    return c.num_hidden_layers * (per_token * tokens + attention) + 2 * c.hidden_size * c.vocab_size * tokens


def linear_flops(module: torch.nn.Module, rows: int) -> int:
    """Forward FLOPs of every nn.Linear in `module` applied to `rows` vectors (the adapter: one row per chunk)."""
    return sum(2 * rows * layer.in_features * layer.out_features
               for layer in module.modules() if isinstance(layer, torch.nn.Linear))


def matmul_flops_per_s(size: int = 4096, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       repeats: int = 5) -> float:
    """Best FLOP/s of torch.mm on two size x size matrices of `dtype` on `device` (the measured peak that
    achieved FLOP/s are compared with)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.mm(a, b)  # warm-up: thread pool, BLAS buffers, kernel selection
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
