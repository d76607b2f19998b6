"""E2LLM configuration: a sentence encoder, an MLP adapter and a decoder-only LLM."""

import os
import re
from typing import Literal

from transformers import AutoConfig, PreTrainedConfig

POOLING_MODES = ("mean", "cls")
HYBRID_SCORING = ("tuned", "base")
HYBRID_RANKINGS = ("dense", "fused")


class E2LLMConfig(PreTrainedConfig):
    r"""Configuration of an [`E2LLMForCausalLM`].

    Args:
        encoder_config: config of the BERT-family chunk encoder (`model_type` picks the class).
        text_config: config of the decoder-only LLM.
        chunk_token_id: decoder vocabulary id of the placeholder that each chunk vector replaces.
        pooling: how an encoded chunk becomes one vector, `"mean"` over tokens or the `"cls"` token.
        encoder_tokens_per_chunk_token: the compression knob. None (default, the paper's): one chunk token per
            chunk. An integer k: a chunk of n encoder tokens becomes ceil(n / k) chunk tokens, each the mean of k
            consecutive token states (the last one shorter), so the decoder can read detail that one vector per
            ~128-token chunk averages away (working systems use 4-32), at k/128-ish times more decoder tokens.
            Needs `pooling="mean"`; the processor must hold the same value (it writes the placeholders).
        adapter_num_layers: Linear layers in the adapter (1-3), GELU between them.
        adapter_hidden_size: width of the adapter's hidden layers (default: the decoder's hidden size).
        encoder_batch_size: chunks per encoder forward; bounds encoding memory for any context length
            (8 chunks of ~128 tokens run as fast as 32 on CPU, with a third of the activation memory).
        encoder_batch_tokens: if set, chunks per encoder forward come from this token budget instead (padded
            width x chunks <= budget, at least one chunk), so that a training step's chunks run in a few large
            forwards that keep a GPU busy; None (default) keeps `encoder_batch_size`, which bounds CPU memory.
        lora_rank / lora_alpha / lora_dropout: LoRA settings shared by encoder and decoder.
        encoder_lora_layers: how many of the encoder's *last* layers get LoRA (paper: the last layers).
        encoder_lora_modules / decoder_lora_modules: linear-layer names that get LoRA.
        hybrid_scoring: which encoder hybrid recall ranks chunks with. `"tuned"`: the chunk encoder itself.
            `"base"`: the pretrained encoder, because LoRA tuned for chunk tokens can make the encoder a worse
            retriever: its frozen lower layers, shared with the chunk encoder (they run once), and frozen
            pretrained copies of the top `encoder_lora_layers` layers (`model.ranking_layers`). Composing a new
            E2LLM picks `"base"`; a model holding the copies can switch between the two at any time.
        hybrid_ranking: how hybrid recall scores a chunk against the question. `"dense"`: the cosine alone of
            the question's pooled encoder vector and the chunk's (its best window, see hybrid_window_tokens).
            `"fused"` (default; also for checkpoints saved before this setting existed): that cosine plus
            BM25 over the encoder tokenizer's ids, each standardized over the context's chunks, so that a
            chunk holding the question's rare words (a name, a place) wins even when the rest of it is off topic.
        hybrid_window_tokens / hybrid_window_stride: what the ranking's cosine compares the question with. An
            integer w (and stride s, 1 <= s <= w): every window of w consecutive ranking-encoder token states of a
            chunk, starting every s tokens, is mean-pooled to its own vector, and a chunk scores by its best window,
            so that one short sentence (a needle) is not diluted by the rest of its ~128-token chunk. The windows
            come from the token states the ranking encoder computes anyway (no extra encoder pass); a chunk
            shorter than w tokens is one window of what it has. None: one vector per chunk (the whole-chunk
            mean). Default 16 / 8, also for checkpoints saved before the setting existed, because on needles asked
            in other words it put more needles' chunks in the top 5 than whole chunks did (fused: 119 of 125 single
            needles against 116, 22 of 25 triples against 9), as well as stride 4 at half the windows, and better
            than 32-token windows (evaluation/results/hybrid-ranking). Not used with `pooling="cls"`, whose one
            [CLS] vector per text has no windows.
    """

    model_type = "e2llm"
    # The plain `sub_configs` mapping works with every transformers 5 release (5.20 added `sub_configs_defaults`).
    # There are deliberately no default sub-configs: BERT-base + a 7B Llama would be built for any folder that
    # is not an E2LLM checkpoint, so a config must name both models.
    sub_configs = {"encoder_config": AutoConfig, "text_config": AutoConfig}
    has_no_defaults_at_init = True

    encoder_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    chunk_token_id: int = 0
    pooling: Literal["mean", "cls"] = "mean"
    encoder_tokens_per_chunk_token: int | None = None
    adapter_num_layers: int = 2
    adapter_hidden_size: int | None = None
    encoder_batch_size: int = 8
    encoder_batch_tokens: int | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    encoder_lora_layers: int = 2
    encoder_lora_modules: list[str] | None = None
    decoder_lora_modules: list[str] | None = None
    hybrid_scoring: Literal["tuned", "base"] = "tuned"
    hybrid_ranking: Literal["dense", "fused"] = "fused"
    hybrid_window_tokens: int | None = 16
    hybrid_window_stride: int | None = 8
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # transformers would fill a missing sub-config with BERT-base and a 7B-shaped Llama, and building
        # that random model can take tens of GB: an E2LLM is always composed from a real encoder and decoder.
        missing = [name for name in self.sub_configs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"E2LLMConfig needs both encoder_config and text_config; {' and '.join(missing)} "
                             "missing. Compose a model with E2LLMForCausalLM.from_encoder_decoder_pretrained("
                             "encoder_path, decoder_path), or load a folder saved by its save_pretrained.")
        for name in self.sub_configs:
            sub_config = getattr(self, name)
            if isinstance(sub_config, dict):
                if "model_type" not in sub_config:
                    raise ValueError(f"{name} names no model_type: give the sub-config of a saved model.")
                setattr(self, name, AutoConfig.for_model(**sub_config))
        super().__post_init__(**kwargs)
        # The decoder's own flag decides whether lm_head shares the input embeddings; without this copy a
        # tied decoder's head would load untied.
        self.tie_word_embeddings = self.tie_word_embeddings or bool(self.text_config.tie_word_embeddings)
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}.")
        check_encoder_tokens_per_chunk_token(self.encoder_tokens_per_chunk_token)
        if self.encoder_tokens_per_chunk_token is not None and self.pooling == "cls":
            raise ValueError(f"encoder_tokens_per_chunk_token={self.encoder_tokens_per_chunk_token} pools each chunk "
                             'in segments of token states, which pooling="cls" (one [CLS] vector per chunk) cannot: '
                             'set pooling="mean", or encoder_tokens_per_chunk_token=None.')
        if self.hybrid_scoring not in HYBRID_SCORING:
            raise ValueError(f"hybrid_scoring must be one of {HYBRID_SCORING}, got {self.hybrid_scoring!r}.")
        if self.hybrid_ranking not in HYBRID_RANKINGS:
            raise ValueError(f"hybrid_ranking must be one of {HYBRID_RANKINGS}, got {self.hybrid_ranking!r}.")
        check_hybrid_windows(self.hybrid_window_tokens, self.hybrid_window_stride)
        if not 1 <= self.adapter_num_layers <= 3:
            raise ValueError(f"adapter_num_layers must be 1, 2 or 3, got {self.adapter_num_layers}.")
        if self.encoder_batch_size < 1:
            raise ValueError(f"encoder_batch_size must be at least 1, got {self.encoder_batch_size}.")
        if self.encoder_batch_tokens is not None and self.encoder_batch_tokens < 1:
            raise ValueError(f"encoder_batch_tokens must be at least 1 (None: use encoder_batch_size), got "
                             f"{self.encoder_batch_tokens}.")
        if self.encoder_lora_modules is None:
            self.encoder_lora_modules = ["query", "key", "value", "dense"]
        if self.decoder_lora_modules is None:
            self.decoder_lora_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """The saved config, refused unless it is an E2LLM's (a folder without config.json, or a plain
        decoder's, would otherwise become a default-sized random model)."""
        source = check_source(pretrained_model_name_or_path)
        config_dict, kwargs = super().get_config_dict(source, **kwargs)
        if not config_dict:
            raise OSError(f"{source!r} holds no config.json, so it is not a saved E2LLM: load a folder written by "
                          "E2LLMForCausalLM.save_pretrained, or compose one with from_encoder_decoder_pretrained.")
        found = config_dict.get("model_type")
        if found != cls.model_type:
            raise ValueError(f"{source!r} holds a {found!r} model, not an E2LLM. Use it as the encoder or decoder "
                             "of E2LLMForCausalLM.from_encoder_decoder_pretrained(encoder_path, decoder_path).")
        return config_dict, kwargs


def check_encoder_tokens_per_chunk_token(value) -> None:
    """Refuse a compression setting that is neither None nor an integer >= 1 (a float or "4" would fail deep
    inside pooling, 0 would divide by zero); the config and the processor both check it here."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"encoder_tokens_per_chunk_token must be None (one chunk token per chunk) or an integer "
                         f">= 1 (encoder tokens pooled into each chunk token, e.g. 4, 8, 16), got {value!r}.")


def check_hybrid_windows(window_tokens, stride) -> None:
    """Refuse a ranking window that is neither None nor an integer >= 1, or a stride that is not an integer from
    1 to the window (a larger one would skip tokens that no window sees)."""
    if window_tokens is None:
        return
    if isinstance(window_tokens, bool) or not isinstance(window_tokens, int) or window_tokens < 1:
        raise ValueError(f"hybrid_window_tokens must be None (one ranking vector per chunk) or an integer >= 1 "
                         f"(encoder tokens per ranking window, e.g. 16), got {window_tokens!r}.")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window_tokens:
        raise ValueError(f"hybrid_window_stride must be an integer from 1 to hybrid_window_tokens={window_tokens} "
                         f"(tokens between window starts, e.g. {max(1, window_tokens // 2)}), got {stride!r}.")


def check_source(source) -> str:
    """`source` as a string, refused when it is neither an existing path nor shaped like a Hub id: the Hub's
    own complaint ("Repo id must be in the form 'repo_name'") hides a mistyped folder path."""
    source = str(source)
    if not os.path.exists(source) and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source):
        raise OSError(f"{source!r} is not a folder here, nor a Hub id (ORG/NAME): check the path.")
    return source


E2LLMConfig.register_for_auto_class()

__all__ = ["E2LLMConfig"]
