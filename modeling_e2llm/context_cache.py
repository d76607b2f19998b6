"""Context cache: encode a long document once, then ask it many questions without re-encoding.

A cache holds the document's chunk tokens (after the adapter), the vectors that rank its chunks (one window
vector per `hybrid_window_stride` tokens of each chunk), the chunks' encoder token ids and the chunk offsets,
keyed by a hash of the text (with the chunking settings) and of the encoder and adapter weights, and by the
compression and window settings, so that a cache made from other text, other weights or other settings is
refused, never used.

Once `generate` has used it, it also holds the decoder's keys and values of the prompt's question-independent
prefix (chat header, instruction start, chunk tokens), keyed by the prefix's token ids and a hash of the
decoder weights: later questions prefill only what follows the chunk tokens (`decoder_cache_of_prefixes`). Keys
and values made for another prefix or by other decoder weights are computed again, never used.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, GenerationConfig, PreTrainedModel

CACHE_FORMAT = "e2llm-context-cache-3"
# Format 1 (before encoder ids and decoder keys/values) still loads: ranking then tokenizes the chunk texts again,
# and the first question computes the prefix keys/values. Formats 1 and 2 (before ranking windows) hold one
# vector per chunk, which ranks as one window, the whole chunk, as it did. Each new number makes older code,
# which cannot read the new tensors or would rank windows as chunks, refuse a new file with its "not an E2LLM
# context cache" message.
READABLE_FORMATS = ("e2llm-context-cache-1", "e2llm-context-cache-2", CACHE_FORMAT)
_PREFIX_KV = "prefix_kv"  # saved as prefix_kv.{layer}.keys / .values


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
    pooled: the ranking encoder's vectors that rank chunks against a question (`E2LLMForCausalLM.chunk_scores`):
        (n_chunks, W, enc_hidden) the mean of each window of the chunk's token states, with `window_mask`
        (n_chunks, W) True for each chunk's real windows; or (n_chunks, enc_hidden), one per chunk (the model's
        hybrid_window_tokens=None, and every cache saved before windows). None in a one-call cache that ranks
        nothing.
    ranking_windows: (hybrid_window_tokens, hybrid_window_stride) of the windows in `pooled`; None: one vector
        per chunk.
    offsets: (n_chunks, 2) character spans of the chunks in the text.
    text: the document itself (hybrid recall quotes chunks from it).
    encoder_tokens_per_chunk_token: the model's compression setting when it was made (None in a cache saved
        before the setting existed: one chunk token per chunk, which is what those models made).
    chunk_input_ids, chunk_attention_mask: (n_chunks, L) the chunks' encoder ids as encoded (special tokens
        included) and their mask: hybrid recall's BM25 reads them instead of tokenizing every chunk again for
        every question. None in a cache saved before they were kept.
    prefix_ids: (P,) decoder ids of the prompt up to its last chunk placeholder, which no question changes;
        prefix_kv: per decoder layer, (keys, values) of those P tokens, each (1, kv_heads, P, head_dim);
        decoder_hash: hash of the decoder weights that made them. Filled by `generate` on first use; None/"" before.
    """

    chunk_features: torch.Tensor
    pooled: torch.Tensor | None
    offsets: torch.Tensor
    text: str
    text_hash: str
    weights_hash: str
    encoder_tokens_per_chunk_token: int | None = None
    window_mask: torch.Tensor | None = None
    ranking_windows: tuple[int, int] | None = None
    chunk_input_ids: torch.Tensor | None = None
    chunk_attention_mask: torch.Tensor | None = None
    prefix_ids: torch.Tensor | None = None
    prefix_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    decoder_hash: str = ""

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

    def has_prefix_kv(self, prefix_ids: torch.Tensor, decoder_hash: str, dtype: torch.dtype) -> bool:
        """Whether the stored prefix keys/values were made for exactly these (P,) prefix ids by the decoder weights
        of `decoder_hash` in `dtype`: anything else (another template, tokenizer or decoder) must recompute them."""
        return (self.prefix_kv is not None and decoder_hash == self.decoder_hash
                and self.prefix_kv[0][0].dtype == dtype and torch.equal(self.prefix_ids, prefix_ids.cpu()))

    def prefill_prefix(self, model: PreTrainedModel, prefix_ids: torch.Tensor, decoder_hash: str) -> bool:
        """Run `model`'s decoder (an E2LLMForCausalLM; `decoder_hash` its `decoder_fingerprint()`) over a prompt
        prefix (P,) with this cache's chunk tokens and keep the keys and values here; False (nothing kept) if some
        layer keeps fewer than P positions (a sliding window)."""
        decoder = model.model
        # Filled in place; given rather than read from the output, whose field name changed in transformers 5.24.
        decoder_cache = DynamicCache(config=decoder.language_model.config)
        decoder(input_ids=prefix_ids[None].to(model.device), chunk_features=self.chunk_features.to(model.device),
                cache=decoder_cache, use_cache=True)
        kv = tuple((layer.keys, layer.values) for layer in decoder_cache.layers)  # each (1, kv_heads, P, head_dim)
        if any(keys.shape[-2] != len(prefix_ids) for keys, _ in kv):
            return False
        self.prefix_ids, self.prefix_kv, self.decoder_hash = prefix_ids.cpu(), kv, decoder_hash
        return True

    def save(self, path: str | Path, prefix_kv: bool = False) -> None:
        """Write the cache as one safetensors file. `prefix_kv`: also the decoder's prefix keys and values, if
        `generate` has made them. They are large: 2 x layers x kv_heads x head_dim x P values, 46 KB per prefix
        token for SmolLM2-135M in fp32 (about 40 MB for the ~850-token prefix of a 100K-token document, some 10x
        the rest of the cache), and recomputing them costs one prefill of the prefix (seconds on a CPU) the first
        time a loaded cache is used; so they are left out unless asked for."""
        tensors = {"chunk_features": self.chunk_features, "pooled": self.pooled, "offsets": self.offsets,
                   "text_utf8": torch.frombuffer(bytearray(self.text.encode("utf-8")), dtype=torch.uint8)}
        if self.chunk_input_ids is not None:
            tensors.update(chunk_input_ids=self.chunk_input_ids, chunk_attention_mask=self.chunk_attention_mask)
        if self.window_mask is not None:
            tensors["window_mask"] = self.window_mask
        metadata = {"format": CACHE_FORMAT, "text_hash": self.text_hash, "weights_hash": self.weights_hash}
        if prefix_kv and self.prefix_kv is not None:
            tensors["prefix_ids"] = self.prefix_ids
            for layer, (keys, values) in enumerate(self.prefix_kv):
                tensors.update({f"{_PREFIX_KV}.{layer}.keys": keys, f"{_PREFIX_KV}.{layer}.values": values})
            metadata["decoder_hash"] = self.decoder_hash
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata["content_hash"] = content_fingerprint(tensors)
        if self.encoder_tokens_per_chunk_token is not None:  # absent: the default, as in caches saved before it
            metadata["encoder_tokens_per_chunk_token"] = str(self.encoder_tokens_per_chunk_token)
        if self.ranking_windows is not None:  # absent: one vector per chunk, as in caches saved before windows
            metadata["hybrid_window_tokens"], metadata["hybrid_window_stride"] = map(str, self.ranking_windows)
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
        if metadata.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{path} is not an E2LLM context cache (format {metadata.get('format')!r}): {remake}.")
        if metadata.get("content_hash") != content_fingerprint(tensors):
            raise ValueError(f"The context cache {path} does not hold what was saved (the file was changed or "
                             f"damaged, or saved before caches carried a content hash): {remake}.")
        text = bytes(tensors.pop("text_utf8").numpy()).decode("utf-8")
        layers = sum(name.startswith(f"{_PREFIX_KV}.") for name in tensors) // 2
        prefix_kv = tuple((tensors.pop(f"{_PREFIX_KV}.{layer}.keys"), tensors.pop(f"{_PREFIX_KV}.{layer}.values"))
                          for layer in range(layers))
        k = metadata.get("encoder_tokens_per_chunk_token")
        windows = (None if "hybrid_window_tokens" not in metadata else
                   (int(metadata["hybrid_window_tokens"]), int(metadata["hybrid_window_stride"])))
        return cls(**tensors, text=text, text_hash=metadata["text_hash"], weights_hash=metadata["weights_hash"],
                   encoder_tokens_per_chunk_token=None if k is None else int(k), ranking_windows=windows,
                   prefix_kv=prefix_kv or None, decoder_hash=metadata.get("decoder_hash", ""))

    def check(self, weights_hash: str, text_hash: str | None = None,
              encoder_tokens_per_chunk_token: int | None = None,
              ranking_windows: tuple[int, int] | None = None) -> None:
        """Refuse a stale cache: made with other encoder/adapter weights, for another text, with another
        compression setting (its chunk tokens would be a sequence the model never reads), or with ranking windows
        other than the model's `ranking_windows` (it would rank by windows the model does not use). A cache of one
        vector per chunk, such as every cache saved before windows, ranks whole chunks, as it always did."""
        if self.ranking_windows is not None and self.ranking_windows != ranking_windows:
            made, used = (_windows_in_words(windows) for windows in (self.ranking_windows, ranking_windows))
            raise ValueError(f"This context cache ranks chunks by {made} but the model by {used}. Re-encode the text "
                             "with model.encode_context(text), or set the model's config back to the cache's windows.")
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


def _windows_in_words(windows: tuple[int, int] | None) -> str:
    if windows is None:
        return "one vector per chunk (hybrid_window_tokens=None)"
    return "windows of hybrid_window_tokens={}, hybrid_window_stride={}".format(*windows)


def is_context_cache(value) -> bool:
    """Whether `value` is a ContextCache, by its fields rather than its class: a model loaded with
    trust_remote_code has its own copy of this class, and a cache made by either copy must work with both."""
    return hasattr(value, "chunk_features")


def as_caches(context_cache) -> list[ContextCache]:
    """A ContextCache, or a list of them, as a list (a file name is refused: it has to be loaded first)."""
    caches = list(context_cache) if isinstance(context_cache, (list, tuple)) else [context_cache]
    for cache in caches:
        if not is_context_cache(cache):
            raise TypeError(f"context_cache takes ContextCache objects, got {type(cache).__name__} {cache!r:.80}: "
                            "load a saved one with ContextCache.load(path).")
    return caches


def can_start_from_a_prefix(generation_config: GenerationConfig, generate_kwargs: dict) -> bool:
    """Whether a generation with these settings (`generate_kwargs` over `generation_config`) can start from the
    prefix keys and values of context caches: one sequence per prompt (GenerationMixin expands a batch for beams and
    returned sequences, but not a decoder cache it is given), with a decoder cache, and none of the caller's own."""

    def setting(name: str):
        return generate_kwargs.get(name, getattr(generation_config, name, None))
    return ((setting("num_beams") or 1) == 1 and (setting("num_return_sequences") or 1) == 1
            and setting("use_cache") is not False and setting("assistant_model") is None
            and setting("prompt_lookup_num_tokens") is None
            and all(generate_kwargs.get(name) is None for name in ("cache", "past_key_values")))


def decoder_cache_of_prefixes(model: PreTrainedModel, caches: list[ContextCache], input_ids: torch.Tensor,
                              attention_mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor, torch.Tensor] | None:
    """The decoder cache of every row's prompt prefix (up to its last chunk placeholder), each row's from its
    context cache (prefilled there by `model`, an E2LLMForCausalLM, unless it holds this prefix already), and the
    (B, T) prompts laid out for it: prefix first, then the left padding, then the rest (positions come from the
    mask, so a padded gap changes nothing). None (take the plain path) when the rows' prefixes differ in length,
    or the decoder cannot keep a whole prefix (a sliding window shorter than it)."""
    rows = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]  # real tokens of each row
    lengths = {int((row == model.config.chunk_token_id).nonzero().max()) + 1 for row in rows}
    if len(lengths) > 1:
        return None
    length = lengths.pop()
    decoder_hash, row_kv = model.decoder_fingerprint(), []
    for cache, row in zip(caches, rows):
        if not cache.has_prefix_kv(row[:length], decoder_hash, model.dtype) and not cache.prefill_prefix(
                model, row[:length], decoder_hash):
            return None
        row_kv.append(cache.prefix_kv)  # now: a later row of the same cache with another prefix replaces it
    layers = zip(*row_kv)  # per layer: each row's (keys, values)
    # Built anew for every call: generation appends to it, and the cache's own tensors must stay the prefix's.
    decoder_cache = DynamicCache(ddp_cache_data=[tuple(torch.cat(kv).to(model.device) for kv in zip(*layer))
                                                 for layer in layers], config=model.config.text_config)
    pads = (attention_mask == 0).sum(dim=1).tolist()
    order = torch.stack([torch.cat([torch.arange(pad, pad + length), torch.arange(pad),
                                    torch.arange(pad + length, input_ids.shape[1])]) for pad in pads])  # (B, T)
    return decoder_cache, input_ids.gather(1, order), attention_mask.gather(1, order)


__all__ = ["ContextCache", "as_caches", "can_start_from_a_prefix", "decoder_cache_of_prefixes", "text_fingerprint",
           "weights_fingerprint"]
