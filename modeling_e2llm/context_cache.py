"""Context cache: encode a long document once, then ask it many questions without re-encoding.

A cache holds the document's chunk tokens (after the adapter), the pooled encoder vectors and the
chunk offsets, keyed by a hash of the text (with the chunking settings) and of the encoder and
adapter weights, so that a cache made from other text or other weights is refused, never used.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

CACHE_FORMAT = "e2llm-context-cache-1"


def text_fingerprint(text: str, processor) -> str:
    """sha256 of the text and of the settings that decide its chunks."""
    settings = [processor.chunk_size, processor.chunk_overlap, processor.max_chunk_tokens]
    digest = hashlib.sha256(json.dumps(settings).encode())
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def weights_fingerprint(modules: list[torch.nn.Module]) -> str:
    """sha256 over the parameters and buffers of `modules`, in name order."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ContextCache:
    """One encoded document.

    chunk_features: (n_chunks, dec_hidden) chunk tokens, ready for the decoder.
    pooled: (n_chunks, enc_hidden) pooled outputs of the scoring encoder, for ranking chunks against a
        question (`E2LLMForCausalLM.chunk_scores`); None in a one-call cache that ranks nothing.
    offsets: (n_chunks, 2) character spans of the chunks in the text.
    text: the document itself (hybrid recall quotes chunks from it).
    """

    chunk_features: torch.Tensor
    pooled: torch.Tensor | None
    offsets: torch.Tensor
    text: str
    text_hash: str
    weights_hash: str

    @property
    def num_chunks(self) -> int:
        return self.chunk_features.shape[0]

    def save(self, path: str | Path) -> None:
        tensors = {"chunk_features": self.chunk_features, "pooled": self.pooled, "offsets": self.offsets,
                   "text_utf8": torch.frombuffer(bytearray(self.text.encode("utf-8")), dtype=torch.uint8)}
        metadata = {"format": CACHE_FORMAT, "text_hash": self.text_hash, "weights_hash": self.weights_hash}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "ContextCache":
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not an E2LLM context cache (format {metadata.get('format')!r}); "
                             "make one with model.encode_context(text) and cache.save(path).")
        tensors = load_file(str(path))
        text = bytes(tensors.pop("text_utf8").numpy()).decode("utf-8")
        return cls(**tensors, text=text, text_hash=metadata["text_hash"], weights_hash=metadata["weights_hash"])

    def check(self, weights_hash: str, text_hash: str | None = None) -> None:
        """Refuse a stale cache: made with other encoder/adapter weights, or for another text."""
        if weights_hash != self.weights_hash:
            raise ValueError("This context cache was made with other encoder or adapter weights: it would give "
                             "wrong chunk tokens. Re-encode the text with model.encode_context(text).")
        if text_hash is not None and text_hash != self.text_hash:
            raise ValueError("This context cache was made from another text (or other chunking settings) than "
                             "the context given. Re-encode it with model.encode_context(text), or pass no context.")


__all__ = ["ContextCache", "text_fingerprint", "weights_fingerprint"]
