"""Context cache: encode a long document once, then ask it many questions without re-encoding.

A cache holds the document's chunk tokens (after the adapter), the pooled encoder vectors and the
chunk offsets, keyed by a hash of the text (with the chunking settings) and of the encoder and
adapter weights, and by the compression setting (`encoder_tokens_per_chunk_token`), so that a cache made
from other text, other weights or another setting is refused, never used.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

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


def content_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a saved cache's tensors: the text and weight hashes say what a cache was made from, this
    one that its file still holds what was saved (no flipped bytes, no edited text)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ContextCache:
    """One encoded document.

    chunk_features: (n_chunk_tokens, dec_hidden) chunk tokens, ready for the decoder, chunk by chunk (one per
        chunk, or ceil(n_i / k) with the model's encoder_tokens_per_chunk_token k).
    pooled: (n_chunks, enc_hidden) pooled outputs of the scoring encoder, one per chunk, for ranking chunks
        against a question (`E2LLMForCausalLM.chunk_scores`); None in a one-call cache that ranks nothing.
    offsets: (n_chunks, 2) character spans of the chunks in the text.
    text: the document itself (hybrid recall quotes chunks from it).
    encoder_tokens_per_chunk_token: the model's compression setting when it was made (None in a cache saved
        before the setting existed: one chunk token per chunk, which is what those models made).
    """

    chunk_features: torch.Tensor
    pooled: torch.Tensor | None
    offsets: torch.Tensor
    text: str
    text_hash: str
    weights_hash: str
    encoder_tokens_per_chunk_token: int | None = None

    @property
    def num_chunks(self) -> int:
        return self.offsets.shape[0]

    @property
    def num_chunk_tokens(self) -> int:
        """The decoder tokens (placeholders) the chunks take: num_chunks, or more with the compression knob."""
        return self.chunk_features.shape[0]

    @property
    def chunk_texts(self) -> list[str]:
        """The text of every chunk, in order (hybrid recall's lexical score reads them)."""
        return [self.text[start:end] for start, end in self.offsets.tolist()]

    def save(self, path: str | Path) -> None:
        tensors = {"chunk_features": self.chunk_features, "pooled": self.pooled, "offsets": self.offsets,
                   "text_utf8": torch.frombuffer(bytearray(self.text.encode("utf-8")), dtype=torch.uint8)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {"format": CACHE_FORMAT, "text_hash": self.text_hash, "weights_hash": self.weights_hash,
                    "content_hash": content_fingerprint(tensors)}
        if self.encoder_tokens_per_chunk_token is not None:  # absent: the default, as in caches saved before it
            metadata["encoder_tokens_per_chunk_token"] = str(self.encoder_tokens_per_chunk_token)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "ContextCache":
        remake = "make it again with model.encode_context(text) and cache.save(path)"
        if not Path(path).is_file():
            raise FileNotFoundError(f"No context cache file at {path}: {remake}.")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except SafetensorError as error:  # "header too large", "incomplete metadata": not readable safetensors
            raise ValueError(f"{path} is not a readable safetensors file ({error}): {remake}.") from None
        if metadata.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not an E2LLM context cache (format {metadata.get('format')!r}): {remake}.")
        if metadata.get("content_hash") != content_fingerprint(tensors):
            raise ValueError(f"The context cache {path} does not hold what was saved (the file was changed or "
                             f"damaged, or saved before caches carried a content hash): {remake}.")
        text = bytes(tensors.pop("text_utf8").numpy()).decode("utf-8")
        k = metadata.get("encoder_tokens_per_chunk_token")
        return cls(**tensors, text=text, text_hash=metadata["text_hash"], weights_hash=metadata["weights_hash"],
                   encoder_tokens_per_chunk_token=None if k is None else int(k))

    def check(self, weights_hash: str, text_hash: str | None = None,
              encoder_tokens_per_chunk_token: int | None = None) -> None:
        """Refuse a stale cache: made with other encoder/adapter weights, for another text, or with another
        compression setting (its chunk tokens would be a sequence the model never reads)."""
        if encoder_tokens_per_chunk_token != self.encoder_tokens_per_chunk_token:
            raise ValueError(f"This context cache was made with encoder_tokens_per_chunk_token="
                             f"{self.encoder_tokens_per_chunk_token} but the model uses "
                             f"{encoder_tokens_per_chunk_token}. Re-encode the text with model.encode_context(text).")
        if weights_hash != self.weights_hash:
            raise ValueError("This context cache was made with other encoder or adapter weights: it would give "
                             "wrong chunk tokens. Re-encode the text with model.encode_context(text).")
        if text_hash is not None and text_hash != self.text_hash:
            raise ValueError("This context cache was made from another text (or other chunking settings) than "
                             "the context given. Re-encode it with model.encode_context(text), or pass no context.")


def as_caches(context_cache) -> list[ContextCache]:
    """A ContextCache, or a list of them, as a list (a file name is refused: it has to be loaded first)."""
    caches = list(context_cache) if isinstance(context_cache, (list, tuple)) else [context_cache]
    for cache in caches:
        # By its fields, not its class: a model loaded with trust_remote_code has its own copy of this class.
        if not hasattr(cache, "chunk_features"):
            raise TypeError(f"context_cache takes ContextCache objects, got {type(cache).__name__} {cache!r:.80}: "
                            "load a saved one with ContextCache.load(path).")
    return caches


__all__ = ["ContextCache", "as_caches", "text_fingerprint", "weights_fingerprint"]
