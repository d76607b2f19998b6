"""E2LLM: a sentence encoder compresses each text chunk into one vector (or, with
`config.encoder_tokens_per_chunk_token` k, one vector per k encoder tokens), an MLP adapter maps it into the
decoder's embedding space, and a decoder-only LLM reads these chunk tokens in place of the raw text.

Layout follows LLaVA: `E2LLMModel` holds encoder, adapter and decoder backbone and merges chunk
features into `inputs_embeds` in one place; `E2LLMForCausalLM` adds the LM head, loss and generation.
"""

import contextlib
import copy
import functools
import inspect
import json
import os
import warnings

import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging as transformers_logging

from .configuration_e2llm import HYBRID_RANKINGS, HYBRID_SCORING, E2LLMConfig, check_source
from .context_cache import (ContextCache, as_caches, can_start_from_a_prefix, decoder_cache_of_prefixes,
                            is_context_cache, text_fingerprint, weights_fingerprint)
from .processing_e2llm import (E2LLMProcessor, _as_list, _broadcast, add_chunk_token, check_processor_matches,
                               chunk_token_counts, lexical_scores, split_sentences)

# The fused ranking's weight of the standardized BM25 score against the standardized cosine. On NIAH grids of
# needles asked in other words (evaluation/results/hybrid-ranking) 0.2 put the most needles' chunks in the top 5:
# a larger weight lets common words of a synonym question ("number", "day") pull in chunks that merely use them.
LEXICAL_WEIGHT = 0.2
_HUB_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only")
# transformers 5.24 renamed the decoder's key/value cache argument and output field from `past_key_values` to
# `cache` and warns on the old name; earlier 5.x releases know only the old one. The model accepts either name
# from its callers and speaks the installed version's to the decoder and to GenerationMixin.
_CACHE = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
          else "past_key_values")


def attention_kernels() -> contextlib.AbstractContextManager:
    """The SDPA kernels now enabled, less cuDNN's: it builds a graph for each new input shape, 50-100 ms of host
    time a call when every batch brings new lengths, as training and generation do, against under 1 ms for
    the memory-efficient kernel, which takes the same boolean masks (an H200 with torch 2.11:
    training/gpu/attention_backends.py in the repository). cuDNN was torch's first choice there."""
    enabled = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
               SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
               SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled()}
    if not torch.backends.cuda.cudnn_sdp_enabled() or not any(enabled.values()):
        return contextlib.nullcontext()
    return sdpa_kernel([backend for backend, on in enabled.items() if on])


def _attending_without_cudnn(method):
    """`method` run under `attention_kernels()`."""
    @functools.wraps(method)
    def attending(*args, **kwargs):
        with attention_kernels():
            return method(*args, **kwargs)
    return attending


class ContextTooLong(ValueError):
    """Chunk tokens, prompt and new tokens together overflow the decoder's window (nothing is truncated)."""


class E2LLMAdapter(nn.Module):
    """MLP from the encoder's hidden size to the decoder's: Linear (-> GELU -> Linear) x (num_layers - 1)."""

    def __init__(self, config: E2LLMConfig):
        super().__init__()
        enc, dec = config.encoder_config.hidden_size, config.text_config.hidden_size
        hidden = config.adapter_hidden_size or dec
        sizes = [enc] + [hidden] * (config.adapter_num_layers - 1) + [dec]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.GELU()] if i else []
            layers.append(nn.Linear(n_in, n_out))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)  # (..., enc_hidden) -> (..., dec_hidden)


class Int8Linear(nn.Module):
    """A frozen `nn.Linear` for CPU inference: int8 weights (one scale per output channel) times inputs quantized
    to 8 bits on each call (one scale per call), by torch's own dynamic-quantization kernel (fbgemm/x86). Made by
    `E2LLMForCausalLM.quantize_encoder`; (..., in) -> (..., out)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127  # (out,) symmetric: zero point 0
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings():
            # torch 2.13 deprecates its quantized tensors in favour of torchao, which a model file may not import;
            # torch 2.11 to 2.13 all still ship these kernels.
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                    category=UserWarning)
            qweight = torch.quantize_per_channel(weight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0,
                                                 torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        # The same weights as plain tensors, so that state_dict (and a context cache's weights fingerprint) sees them.
        self.register_buffer("weight_int8", qweight.int_repr())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Full 8-bit inputs: torch's DynamicQuantizedLinear takes 7 (reduce_range, against an int16 overflow on
        # CPUs without VNNI), which took all-MiniLM-L6-v2's pooled vectors from cosine 0.985 to 0.958 of fp32.
        return torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=False).to(x.dtype)


class E2LLMPreTrainedModel(PreTrainedModel):
    config: E2LLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [_CACHE]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class E2LLMModel(E2LLMPreTrainedModel):
    """Encoder + adapter + decoder backbone (no LM head)."""

    def __init__(self, config: E2LLMConfig, encoder: PreTrainedModel | None = None,
                 language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else _encoder_from_config(config.encoder_config)
        # Hybrid recall ranks chunks with the encoder as it was before training tuned it. LoRA tunes only the top
        # `config.encoder_lora_layers` layers, so the layers below them (the trunk) are the pretrained ones and
        # serve both: the model keeps frozen pretrained copies of the top layers alone and runs them on the
        # trunk's output (`_encoder_states`). A checkpoint's weights load over these copies. Sharing the memo
        # keeps the copies on the encoder's own config, so they follow its attention implementation.
        self.ranking_layers = (nn.ModuleList(copy.deepcopy(layer, {id(self.encoder.config): self.encoder.config})
                                             for layer in _tuned_layers(self.encoder, config)).requires_grad_(False)
                               if config.hybrid_scoring == "base" else None)
        self.adapter = E2LLMAdapter(config)
        self.language_model = language_model if language_model is not None else AutoModel.from_config(config.text_config)
        self.post_init()

    def pool_chunks(self, chunk_input_ids: torch.Tensor, chunk_attention_mask: torch.Tensor,
                    progress: bool = False, for_scoring: bool = False, scoring: str | None = None) -> torch.Tensor:
        """Encoder output of every text (a chunk, or a question to rank chunks by) pooled to one vector:
        (n, L) -> (n, enc_hidden). `for_scoring`: with the encoder hybrid recall ranks by (`scoring`, default
        `config.hybrid_scoring`), one vector per text (a question's; chunks are ranked by their windows, see
        `pool_chunks_and_ranking`). Chunk tokens with `config.encoder_tokens_per_chunk_token` k:
        (n, L) -> (n, S, enc_hidden), S = ceil(L / k), the mean of each k consecutive tokens, zeros past a chunk's
        end (`chunk_tokens` keeps the real ones)."""
        chunk_vectors, ranking_vectors, _ = self.pool_chunks_and_ranking(
            chunk_input_ids, chunk_attention_mask, progress, chunk_tokens=not for_scoring,
            scoring=self.checked_scoring(scoring) if for_scoring else None, ranking_windows=False)
        return ranking_vectors if for_scoring else chunk_vectors

    def pool_chunks_and_ranking(self, chunk_input_ids: torch.Tensor, chunk_attention_mask: torch.Tensor,
                                progress: bool = False, chunk_tokens: bool = True, scoring: str | None = None,
                                ranking_windows: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                                       torch.Tensor | None]:
        """`pool_chunks` for chunk tokens (None unless `chunk_tokens`), and the vectors that rank the same chunks
        with the `scoring` encoder ("base" or "tuned"; None: no ranking) with their window mask, from one pass of
        the encoder's shared lower layers: (n, L) -> (n[, S], enc_hidden), ranking vectors and window mask.

        Ranking vectors: with `ranking_windows` and `config.hybrid_window_tokens` w (mean pooling), (n, W,
        enc_hidden) the mean of every window of w tokens starting every `config.hybrid_window_stride` tokens, W
        from the full width L, and (n, W) bool, True for each chunk's real windows; otherwise (n, enc_hidden) one
        vector per text, and None.

        Chunks run in batches of `config.encoder_batch_size` (or as many as `config.encoder_batch_tokens` holds at
        the padded width), longest first, each batch trimmed to its own longest chunk on the CPU: memory stays
        bounded for any number of chunks and little goes to padding. On an accelerator batches keep the full
        width, since reading a length back would stall the forward.
        """
        if scoring is not None:
            self.checked_scoring(scoring)  # refuse a name, or "base" without the ranking layers, before any work
        segment_size = self.config.encoder_tokens_per_chunk_token
        # S and W from the full width, not each batch's trimmed one, so that every batch pools to the same shape.
        num_segments = None if segment_size is None else -(-chunk_input_ids.shape[1] // segment_size)
        windows = self.ranking_windows() if ranking_windows else None
        num_windows = None if windows is None else int(window_counts(chunk_input_ids.shape[1], *windows))
        lengths = chunk_attention_mask.sum(dim=1)  # (n,)
        order = torch.argsort(lengths, descending=True)
        on_cpu = _reads_back_freely(lengths)
        budget = self.config.encoder_batch_tokens
        # From the padded width, known on the host: sizing batches by the real lengths would wait for the device.
        per_batch = self.config.encoder_batch_size if budget is None else max(1, budget // chunk_input_ids.shape[1])
        chunk_vectors = ranking_vectors = None
        for index in transformers_logging.tqdm(order.split(per_batch), desc="Encoding chunks", unit="batch",
                                               disable=not progress):
            width = int(lengths[index].max()) if on_cpu else chunk_input_ids.shape[1]
            mask = chunk_attention_mask[index, :width]  # (batch, width)
            tuned, ranking = self._encoder_states(chunk_input_ids[index, :width], mask, chunk_tokens, scoring)
            if tuned is not None:
                vectors = _pool(tuned, mask, self.config.pooling, segment_size, num_segments)
                chunk_vectors = _placed(chunk_vectors, index, vectors, len(order))
            if ranking is not None:
                vectors = (_pool(ranking, mask, self.config.pooling) if windows is None
                           else _pool_windows(ranking, mask, *windows, num_windows))
                ranking_vectors = _placed(ranking_vectors, index, vectors, len(order))
        window_mask = None
        if ranking_vectors is not None and windows is not None:
            window_mask = torch.arange(num_windows, device=lengths.device) < window_counts(lengths, *windows)[:, None]
            # Windows are kept in float16 (their cosine is still taken in fp32): at 1M tokens, ~9,000 chunks of 15
            # windows (16 / 8) are ~100 MB rather than ~200 MB, and on the NIAH grids every needle's chunk ranked
            # where fp32 windows put it (evaluation/results/hybrid-ranking).
            ranking_vectors = ranking_vectors.to(torch.float16)
        return chunk_vectors, ranking_vectors, window_mask

    def ranking_windows(self) -> tuple[int, int] | None:
        """(tokens, stride) of the windows chunks are ranked by, or None: one vector per chunk (no window
        setting, or `pooling="cls"`, whose one [CLS] vector per text has no windows)."""
        if self.config.hybrid_window_tokens is None or self.config.pooling != "mean":
            return None
        return self.config.hybrid_window_tokens, self.config.hybrid_window_stride

    @_attending_without_cudnn
    def _encoder_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tuned: bool,
                        scoring: str | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Last hidden states (batch, width, enc_hidden) of the chunk encoder (when `tuned`) and of the ranking
        encoder (`scoring`; None: not wanted), the encoder's lower layers run once for both.

        "base" ranking runs the pretrained copies of the top layers on the input of the first tuned layer, with
        the attention mask and arguments the encoder itself prepared for that layer (a forward pre-hook takes
        them, whatever the transformers version calls them); a pass for the ranking alone stops there. BERT-family
        encoders return their last layer's output as is, so the copies' output is the ranking encoder's."""
        attention_mask = _mask_for(self.encoder, attention_mask, causal=False)
        if scoring != "base" or len(self.ranking_layers) == 0:  # the tuned encoder ranks, or nothing is tuned
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return (hidden if tuned else None), (hidden if scoring is not None else None)
        trunk = {}

        def take_trunk_output(layer, args, kwargs):
            trunk["args"], trunk["kwargs"] = args, kwargs
            if not tuned:
                raise _TrunkDone  # the tuned top layers' output is not wanted: skip them

        first_tuned = _tuned_layers(self.encoder, self.config)[0]
        handle = first_tuned.register_forward_pre_hook(take_trunk_output, with_kwargs=True)
        try:
            tuned_hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        except _TrunkDone:
            tuned_hidden = None
        finally:
            handle.remove()
        hidden, *layer_args = trunk["args"]  # (batch, width, enc_hidden), then the prepared mask and the rest
        with torch.no_grad():  # the ranking copies never train
            for layer in self.ranking_layers:
                hidden = layer(hidden, *layer_args, **trunk["kwargs"])
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # some layer classes return a tuple
        return tuned_hidden, hidden

    def checked_scoring(self, scoring: str | None = None) -> str:
        """The encoder hybrid recall ranks chunks with (`scoring`, default `config.hybrid_scoring`): "base", the
        pretrained encoder (the shared trunk and `ranking_layers`), or "tuned", the chunk encoder itself."""
        scoring = self.config.hybrid_scoring if scoring is None else scoring
        if scoring not in HYBRID_SCORING:
            raise ValueError(f"scoring must be one of {HYBRID_SCORING}, got {scoring!r}.")
        if scoring == "base" and self.ranking_layers is None:
            raise ValueError('hybrid_scoring="base" needs the pretrained copies of the encoder\'s top layers, which '
                             'this model was built without: set config.hybrid_scoring="tuned", or compose the model '
                             'with from_encoder_decoder_pretrained (which keeps them).')
        return scoring

    def get_chunk_features(self, chunk_input_ids: torch.Tensor, chunk_attention_mask: torch.Tensor,
                           progress: bool = False) -> torch.Tensor:
        """Chunk tokens for the decoder: (n_chunks, L) encoder ids -> (n_chunk_tokens, dec_hidden), chunk by
        chunk (see `chunk_tokens`; n_chunk_tokens = n_chunks by default)."""
        pooled = self.pool_chunks(chunk_input_ids, chunk_attention_mask, progress=progress)
        return self.adapter(self.chunk_tokens(pooled, chunk_attention_mask))

    def chunk_tokens(self, pooled: torch.Tensor, chunk_attention_mask: torch.Tensor,
                     num_chunk_tokens: int | None = None) -> torch.Tensor:
        """`pool_chunks`' output as a sequence of chunk tokens in (chunk, segment) order, the order of the
        placeholders: (n, enc_hidden) as it is; (n, S, enc_hidden) -> (n_chunk_tokens, enc_hidden), the
        ceil(n_i / k) real segments of each chunk.

        The real segments are counted on the device. Reading that count back would stall an accelerator, so
        there, unless the caller knows it on the host (`num_chunk_tokens`, as the processor counted them), the
        result keeps all n * S rows, the chunk tokens first and the empty segments after them: `masked_scatter`
        reads only as many rows as there are placeholders (`count_chunk_tokens` gives the count to check them
        against).
        """
        if pooled.dim() == 2:
            return pooled
        counts = self.count_chunk_tokens(chunk_attention_mask, per_chunk=True)  # (n,)
        real = torch.arange(pooled.shape[1], device=pooled.device) < counts.unsqueeze(1)  # (n, S)
        order = torch.argsort((~real).flatten().to(torch.uint8), stable=True)  # real segments first, in order
        if num_chunk_tokens is None and _reads_back_freely(counts):
            num_chunk_tokens = int(counts.sum())
        return pooled.flatten(0, 1)[order[:num_chunk_tokens]]  # (n_chunk_tokens, enc_hidden)

    def count_chunk_tokens(self, chunk_attention_mask: torch.Tensor, per_chunk: bool = False) -> torch.Tensor:
        """Chunk tokens the chunks become (the processor writes as many placeholders): the total, a 0-d tensor
        on the mask's device, or (n_chunks,) with `per_chunk`."""
        counts = chunk_token_counts(chunk_attention_mask.sum(dim=1), self.config.encoder_tokens_per_chunk_token)
        return counts if per_chunk else counts.sum()

    def get_placeholder_mask(self, input_ids: torch.Tensor, chunk_features: torch.Tensor,
                             num_chunk_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) bool mask of the chunk placeholders; their count must equal the number of chunk tokens,
        `num_chunk_tokens` (0-d, see `count_chunk_tokens`) or else the rows of `chunk_features`."""
        mask = input_ids == self.config.chunk_token_id
        expected = chunk_features.shape[0] if num_chunk_tokens is None else num_chunk_tokens
        message = (f"The prompts' chunk placeholders (id {self.config.chunk_token_id}) do not match the chunk "
                   "tokens encoded; build inputs with the model's E2LLMProcessor (same encoder_tokens_per_chunk_token "
                   f"as the model, {self.config.encoder_tokens_per_chunk_token}).")
        if _reads_back_freely(mask):
            if int(mask.sum()) != int(expected):
                raise ValueError(f"{message} The prompts hold {int(mask.sum())} placeholders for {int(expected)} "
                                 "chunk tokens.")
        else:  # reading the count back would stall the forward until the device caught up: check it there
            torch._assert_async(mask.sum() == expected, message)
        return mask

    def embed_inputs(self, input_ids: torch.Tensor, chunk_input_ids: torch.Tensor | None = None,
                     chunk_attention_mask: torch.Tensor | None = None, chunk_features: torch.Tensor | None = None,
                     progress: bool = False, chunk_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input embeddings (B, T, dec_hidden), chunk tokens written over their placeholders.

        The chunks of sample 0 fill its placeholders first, then those of sample 1, ... (row-major).
        """
        inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, T, dec_hidden)
        num_chunk_tokens = None  # precomputed chunk_features hold exactly the chunk tokens
        if chunk_features is None and chunk_pooled is not None:  # a frozen encoder's output, pooled once: adapter only
            chunk_features = self.adapter(chunk_pooled)
        if chunk_features is None and chunk_input_ids is not None:
            chunk_features = self.get_chunk_features(chunk_input_ids, chunk_attention_mask, progress=progress)
            num_chunk_tokens = self.count_chunk_tokens(chunk_attention_mask)
        if chunk_features is None:
            # A one-token decoding step never holds a placeholder (generation suppresses it): only check longer input.
            if input_ids.shape[1] > 1 and (input_ids == self.config.chunk_token_id).any():
                raise ValueError("input_ids hold chunk placeholders but no chunks were given: pass chunk_input_ids "
                                 "and chunk_attention_mask (or chunk_features) from the model's E2LLMProcessor.")
            return inputs_embeds
        mask = self.get_placeholder_mask(input_ids, chunk_features, num_chunk_tokens).unsqueeze(-1)  # (B, T, 1)
        return inputs_embeds.masked_scatter(mask, chunk_features.to(inputs_embeds.dtype))

    def check_window(self, input_ids: torch.Tensor, new_tokens: int = 0) -> None:
        """Refuse (never truncate) a prompt that, with `new_tokens` to generate, overflows the decoder's
        window, saying how far over it is and what would fit."""
        window = getattr(self.config.text_config, "max_position_embeddings", None)
        if window is None or input_ids.shape[1] + new_tokens <= window:
            return
        chunks = int((input_ids == self.config.chunk_token_id).sum(dim=1).max())
        room = window - new_tokens - (input_ids.shape[1] - chunks)
        fix = (f"{self.fewer_chunk_tokens_fix(chunks / room)} (the window holds {room} chunk tokens with this prompt)."
               if room > 0 else
               "Ask for fewer new tokens, or shorten the prompt or the hybrid passages (smaller hybrid_token_budget).")
        raise ContextTooLong(f"The decoder input is {input_ids.shape[1]} tokens ({chunks} chunk tokens) + {new_tokens} "
                             f"new tokens but the decoder's window is {window} tokens. {fix}")

    def fewer_chunk_tokens_fix(self, factor: float) -> str:
        """How to make `factor` times fewer chunk tokens, for an error message."""
        k = self.config.encoder_tokens_per_chunk_token
        if k is None:
            return f"Use a chunk_size about {factor:.1f}x larger in the processor, or a shorter context"
        return (f"Use an encoder_tokens_per_chunk_token about {factor:.1f}x larger than {k} (model config and "
                "processor; the model must be trained with it), or a shorter context")

    @_attending_without_cudnn
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.FloatTensor | None = None,
                chunk_input_ids: torch.LongTensor | None = None, chunk_attention_mask: torch.Tensor | None = None,
                chunk_features: torch.FloatTensor | None = None, use_cache: bool | None = None,
                chunk_pooled: torch.FloatTensor | None = None, **kwargs) -> BaseModelOutputWithPast:
        """Chunks come as encoder ids (`chunk_input_ids`, `chunk_attention_mask`: (n_chunks, L)), already
        encoded (`chunk_features`: (n_chunk_tokens, dec_hidden), e.g. from a context cache), or pooled by the
        encoder but not yet adapted (`chunk_pooled`: (n_chunk_tokens, enc_hidden), e.g. a frozen encoder's,
        computed once for a whole training run). The decoder's key/value cache comes as `cache` or
        `past_key_values` (either transformers version)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            self.check_window(input_ids)
            inputs_embeds = self.embed_inputs(input_ids, chunk_input_ids, chunk_attention_mask, chunk_features,
                                              chunk_pooled=chunk_pooled)
        kwargs = _with_cache_name(kwargs)
        if attention_mask is not None and kwargs.get(_CACHE) is None:  # prefill or training: no cache offsets
            attention_mask = _mask_for(self.language_model, attention_mask, causal=True)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache, **kwargs)


class E2LLMForCausalLM(E2LLMPreTrainedModel, GenerationMixin):
    """E2LLM with its LM head: `forward(..., labels=)` gives the loss, `generate(context=, prompt=)` reads raw text."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # Folders saved before the shared encoder trunk hold a whole pretrained encoder copy: `from_pretrained` maps
    # its top layers onto `ranking_layers`, and the rest (equal to the trunk) is dropped without a word.
    _keys_to_ignore_on_load_unexpected = [r"^model\.scoring_encoder\."]

    def __init__(self, config: E2LLMConfig, encoder: PreTrainedModel | None = None,
                 causal_lm: PreTrainedModel | None = None):
        super().__init__(config)
        backbone = causal_lm.get_decoder() if causal_lm is not None else None
        self.model = E2LLMModel(config, encoder, backbone)
        self.lm_head = causal_lm.get_output_embeddings() if causal_lm is not None else nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._processor = None
        self._processor_kwargs = {}
        self._fingerprints = {}  # what was hashed -> (parameter versions, hash)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.FloatTensor | None = None,
                chunk_input_ids: torch.LongTensor | None = None, chunk_attention_mask: torch.Tensor | None = None,
                chunk_features: torch.FloatTensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                chunk_pooled: torch.FloatTensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """`labels` (B, T): target ids, -100 where no loss applies (prompt, chunk tokens, padding). Chunks and the
        decoder cache come as in `E2LLMModel.forward`."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, chunk_input_ids=chunk_input_ids,
                             chunk_attention_mask=chunk_attention_mask, chunk_features=chunk_features,
                             chunk_pooled=chunk_pooled, use_cache=use_cache, **_with_cache_name(kwargs))
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.text_config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, **{_CACHE: getattr(outputs, _CACHE)})

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None,
                                      chunk_input_ids=None, chunk_attention_mask=None, chunk_features=None,
                                      is_first_iteration=False, cache=None, past_key_values=None, **kwargs):
        # The decoder cache is named here so that GenerationMixin accepts one given to `generate` (a context
        # cache's prefix), under either transformers version's name.
        decoder_cache = _with_cache_name({"cache": cache, "past_key_values": past_key_values})
        inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration, **_with_cache_name(kwargs), **decoder_cache)
        # Chunks are encoded once, at prefill; later steps read them from the KV cache.
        if is_first_iteration or not kwargs.get("use_cache", True):
            inputs.update(chunk_input_ids=chunk_input_ids, chunk_attention_mask=chunk_attention_mask,
                          chunk_features=chunk_features)
        return inputs

    # --- raw text in --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, *args,
                 context: str | list[str] | None = None, prompt: str | list[str] | None = None,
                 processor: E2LLMProcessor | None = None, context_cache: ContextCache | list | None = None,
                 hybrid_top_k: int | None = None, hybrid_token_budget: int | None = None,
                 progress: bool = False, reuse_prefix: bool = True, **kwargs):
        """`GenerationMixin.generate`, plus raw text: `generate(context=long_text, prompt=question, ...)`.

        With `context` (or a `context_cache` from `encode_context`, which skips re-encoding), the result
        holds only the new tokens: the prompt was never the caller's. `prompt` of None asks for a
        restatement. Token inputs (`input_ids` + `chunk_input_ids`/`chunk_attention_mask` from the
        processor) return prompt + new tokens as usual. Every other argument (sampling, beams, streamer,
        stopping) is passed on.

        Hybrid recall (`hybrid_top_k` > 0; default: the processor's setting): the raw text of the chunks
        most similar to the question, within `hybrid_token_budget` decoder tokens, follows the chunk
        tokens of the whole context. Without a question it is skipped (plain E2LLM).

        With a `context_cache` (and `reuse_prefix`), the decoder's keys and values of the prompt up to the last
        chunk token, which no question changes, are computed once, kept on the cache, and continued by every
        later question: only the passages, the question and the chat tail are prefilled. Greedy answers are
        the same as without it. Beams, several returned sequences, a caller's own decoder cache, or a batch whose
        prefixes differ in length take the plain path.
        """
        if context is None and context_cache is None:
            if prompt is not None:
                raise ValueError("prompt= needs context= (or context_cache=): pass the text the prompt is about.")
            return self._generate_from_tokens(inputs, generation_config, *args, progress=progress, **kwargs)
        processor = self._processor_for(processor)
        top_k, token_budget = processor.hybrid_settings(hybrid_top_k, hybrid_token_budget)
        new_tokens = kwargs.get("max_new_tokens") or (generation_config or self.generation_config).max_new_tokens or 0
        quoting = top_k > 0 and prompt is not None
        # chunk -> prompt -> window check (room kept for the passages), all before any encoder work
        chunks = None if context_cache is not None else [processor.encode_chunks([text])
                                                         for text in _as_list(context, "context")]
        sizes = ([(cache.num_chunks, cache.num_chunk_tokens) for cache in as_caches(context_cache)] if chunks is None
                 else [(text_chunks["num_chunks"][0], text_chunks["num_chunk_tokens"][0]) for text_chunks in chunks])
        counts, token_counts = (list(column) for column in zip(*sizes))
        batch = processor.encode_prompts(counts, prompt, num_chunk_tokens=token_counts)
        if kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is None:
            raise ValueError(f"max_length={kwargs['max_length']} counts the prompt, which generate(context=...) builds "
                             f"itself ({batch['input_ids'].shape[1]} tokens here): pass max_new_tokens.")
        self.model.check_window(batch["input_ids"], new_tokens + (token_budget if quoting else 0))
        # -> encode (chunk tokens, and the vectors that rank chunks when quoting) -> rank -> prompt with the passages
        caches = self._context_caches(context, context_cache, processor, progress, quoting, chunks)
        if quoting:
            passages = self._hybrid_passages(caches, prompt, processor, top_k, token_budget)
            batch = processor.encode_prompts(counts, prompt, passages=passages, num_chunk_tokens=token_counts)
            self.model.check_window(batch["input_ids"], new_tokens)
        # -> decode
        return self._generate_from_caches(caches, batch, context_cache is not None and reuse_prefix,
                                          generation_config, *args, **kwargs)

    def _generate_from_caches(self, caches: list[ContextCache], batch: dict, reuse_prefix: bool, generation_config,
                              *args, **kwargs) -> torch.Tensor:
        """`GenerationMixin.generate` on the processor's (B, T) left-padded prompts with the chunk tokens of
        `caches` (one per row), from their prefix keys and values where `reuse_prefix` and the settings allow: the
        new tokens only."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
        if reuse_prefix and can_start_from_a_prefix(generation_config or self.generation_config, kwargs):
            prefix = decoder_cache_of_prefixes(self, caches, input_ids, attention_mask)
            if prefix is not None:
                kwargs[_CACHE], input_ids, attention_mask = prefix
        features = torch.cat([cache.chunk_features for cache in caches]).to(self.device)  # (chunk tokens, dec_hidden)
        # With a prefix cache GenerationMixin prefills only the embeddings past its length.
        kwargs["inputs_embeds"] = self.model.embed_inputs(input_ids.to(self.device), chunk_features=features)
        kwargs["attention_mask"] = attention_mask.to(self.device)
        return super().generate(None, generation_config, *args, **kwargs)

    def _generate_from_tokens(self, inputs, generation_config, *args, progress: bool, **kwargs):
        """`generate` on the processor's token inputs: prompt + new tokens, as for any decoder-only model."""
        chunk_ids, chunk_mask = kwargs.pop("chunk_input_ids", None), kwargs.pop("chunk_attention_mask", None)
        if chunk_ids is not None:
            # Embed here rather than in forward: generate() repeats every tensor kwarg per beam/return
            # sequence row by row (c0,c0,c1,c1,...), which would give each expanded row the wrong chunks.
            input_ids = inputs if inputs is not None else kwargs.pop("input_ids")
            new_tokens = kwargs.get("max_new_tokens") or (generation_config or self.generation_config).max_new_tokens
            self.model.check_window(input_ids, new_tokens or 0)
            kwargs["inputs_embeds"] = self.model.embed_inputs(input_ids, chunk_ids, chunk_mask, progress=progress)
            kwargs["input_ids"], inputs = input_ids, None
        return super().generate(inputs, generation_config, *args, **kwargs)

    @torch.no_grad()
    def encode_context(self, context: str, processor: E2LLMProcessor | None = None,
                       progress: bool = False) -> ContextCache:
        """Encode a document once: its chunk tokens, ranking vectors (windows of each chunk) and chunk offsets.

        Pass the result to `generate(context_cache=..., prompt=...)` for each question; `save`/`load`
        it as safetensors. It is refused if the encoder or adapter weights change.
        """
        if not isinstance(context, str):  # a list would fail later saying lists are accepted
            raise TypeError(f"encode_context takes one text (a string), got {type(context).__name__}: "
                            "encode each text with its own call.")
        processor = self._processor_for(processor)
        cache = self._encode(context, processor, progress)
        cache.text_hash, cache.weights_hash = text_fingerprint(context, processor), self.weights_fingerprint()
        return cache

    def _encode(self, context: str, processor: E2LLMProcessor, progress: bool, rank: bool = True,
                chunks: dict | None = None) -> ContextCache:
        """An unkeyed cache for one call: hashing the weights is only worth it for a cache that is kept.
        `rank=False` skips the ranking encoder's pass (no ranking to do): `pooled` may then be None. `chunks`:
        the context's `processor.encode_chunks` output, when the caller has it already."""
        chunks = processor.encode_chunks([context]) if chunks is None else chunks
        # More chunk tokens than the whole window holds can never be read: say so before encoding them takes minutes.
        count, window = chunks["num_chunk_tokens"][0], getattr(self.config.text_config, "max_position_embeddings", None)
        if window is not None and count > window:
            raise ValueError(f"The context makes {count:,} chunk tokens, more than the decoder's whole window of "
                             f"{window} tokens: {self.model.fewer_chunk_tokens_fix(count / window)}.")
        ids, mask = chunks["chunk_input_ids"].to(self.device), chunks["chunk_attention_mask"].to(self.device)
        k = self.config.encoder_tokens_per_chunk_token
        scoring = self.model.checked_scoring() if rank else None
        pooled, ranking, window_mask = self.model.pool_chunks_and_ranking(ids, mask, progress, scoring=scoring)
        tokens = self.model.chunk_tokens(pooled, mask, count)  # (n_chunk_tokens, enc_hidden)
        features = self.model.adapter(tokens)  # (n_chunk_tokens, dec_hidden)
        return ContextCache(chunk_features=features, pooled=ranking, window_mask=window_mask,
                            ranking_windows=self.model.ranking_windows() if rank else None,
                            offsets=chunks["offsets"], text=context,
                            text_hash="", weights_hash="", encoder_tokens_per_chunk_token=k,
                            chunk_input_ids=chunks["chunk_input_ids"].to(torch.int32),  # half the bytes; ids < 2**31
                            chunk_attention_mask=chunks["chunk_attention_mask"].bool())

    @torch.no_grad()
    def hybrid_passages(self, context: str, prompt: str | None, processor: E2LLMProcessor | None = None,
                        top_k: int | None = None, token_budget: int | None = None,
                        chunks: dict | None = None) -> list[tuple[int, str]]:
        """The `(chunk index, text)` passages hybrid recall quotes for `prompt` about `context`, in document
        order (none when top_k is 0 or there is no prompt); `generate` chooses the same ones. Only the encoder
        that ranks runs: no chunk tokens are made. `chunks`: the context's `processor.encode_chunks([context])`,
        when the caller has it already."""
        processor = self._processor_for(processor)
        top_k, token_budget = processor.hybrid_settings(top_k, token_budget)
        if not top_k or prompt is None:
            return []
        chunks = processor.encode_chunks([context]) if chunks is None else chunks
        scores = self.chunk_scores(chunks, prompt, processor)  # (n_chunks,)
        return processor.select_passages(context, chunks["offsets"], scores, top_k, token_budget)

    def _hybrid_passages(self, caches: list[ContextCache], prompt, processor: E2LLMProcessor, top_k: int,
                         token_budget: int) -> list[list[tuple[int, str]]] | None:
        """Per context, the chunks to quote as raw text: the best by `chunk_scores`, within the budget (the
        settings as `processor.hybrid_settings` resolved them; None when hybrid recall is off)."""
        if not top_k:
            return None
        prompts = _broadcast(prompt, len(caches), "prompt")
        passages = []
        for cache, question in zip(caches, prompts):
            if question is None:  # nothing to rank by: plain E2LLM for a restatement
                passages.append([])
                continue
            scores = self.chunk_scores(cache, question, processor)
            passages.append(processor.select_passages(cache.text, cache.offsets, scores, top_k, token_budget))
        return passages

    @torch.no_grad()
    def chunk_scores(self, chunks: ContextCache | dict | torch.Tensor, question: str,
                     processor: E2LLMProcessor | None = None, scoring: str | None = None,
                     chunk_texts: list[str] | None = None, ranking: str | None = None,
                     window_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hybrid recall's ranking, the one used by generation, the RAG baseline, training's hybrid samples and
        the ranking report: (n_chunks,) score of each chunk for `question`, higher is better.

        `chunks`: a cache; one context's `processor.encode_chunks([context])`, pooled here by the ranking encoder
        (`scoring`, default `config.hybrid_scoring`) in windows (`config.hybrid_window_tokens`); or ranking
        vectors of the chunks, (n_chunks, enc_hidden) or windows (n_chunks, W, enc_hidden) with `window_mask`
        (n_chunks, W) of the real ones (None: all), with the chunks' texts `chunk_texts`. `ranking` (default
        `config.hybrid_ranking`): "dense", the cosine between the question's pooled vector and each chunk's best
        window (one window: the whole chunk); "fused", that cosine plus BM25 over encoder token ids, each
        standardized over the chunks. A question of several sentences (three things asked at once) scores each
        chunk by its best sentence: one vector of all of them matches none of the chunks that answer them. A
        sentence longer than a chunk may be is cut to fit the encoder."""
        processor = self._processor_for(processor)
        ranking = self.config.hybrid_ranking if ranking is None else ranking
        if ranking not in HYBRID_RANKINGS:
            raise ValueError(f"ranking must be one of {HYBRID_RANKINGS}, got {ranking!r}.")
        chunk_ids = chunk_mask = None
        if is_context_cache(chunks):
            vectors, window_mask, chunk_texts = chunks.pooled, chunks.window_mask, chunks.chunk_texts
            chunk_ids, chunk_mask = chunks.chunk_input_ids, chunks.chunk_attention_mask  # None in an older cache
        elif isinstance(chunks, dict):  # the lexical score reads the same encoder ids the dense one pools
            chunk_ids, chunk_mask = chunks["chunk_input_ids"], chunks["chunk_attention_mask"]
            _, vectors, window_mask = self.model.pool_chunks_and_ranking(
                chunk_ids.to(self.device), chunk_mask.to(self.device), chunk_tokens=False,
                scoring=self.model.checked_scoring(scoring))  # (n_chunks[, W], enc_hidden), (n_chunks, W)
        else:
            vectors = chunks
        sentences = split_sentences(question) or [question]
        tokens = processor.encoder_tokenizer(sentences, truncation=True, max_length=processor.max_chunk_tokens,
                                             padding="longest", return_tensors="pt").to(self.device)
        queries = self.model.pool_chunks(tokens["input_ids"], tokens["attention_mask"], for_scoring=True,
                                         scoring=scoring)  # (n_sentences, enc_hidden)
        dense = _best_window_cosines(vectors.to(queries.device), window_mask, queries).cpu()  # (n_chunks, n_sentences)
        if ranking == "dense":
            return dense.max(dim=1).values
        if chunk_ids is None and (chunk_texts is None or len(chunk_texts) != len(dense)):
            raise ValueError("The fused ranking reads the chunks' words: pass chunk_texts, one per pooled vector.")
        lexical = lexical_scores(processor.encoder_tokenizer, chunk_texts, sentences, chunk_ids,
                                 chunk_mask)  # (n_chunks, n_sentences)
        return (_standardized(dense) + LEXICAL_WEIGHT * _standardized(lexical)).max(dim=1).values

    def _context_caches(self, context, context_cache, processor, progress: bool, rank: bool,
                        chunks: list[dict] | None = None) -> list[ContextCache]:
        """One checked cache per context: encoded now (from its `processor.encode_chunks` output in `chunks`,
        when given), or given (and then checked against text and weights)."""
        if context_cache is None:
            texts = _as_list(context, "context")
            chunks = chunks or [None] * len(texts)
            return [self._encode(text, processor, progress, rank, text_chunks) for text, text_chunks in zip(texts, chunks)]
        caches = as_caches(context_cache)
        texts = [None] * len(caches) if context is None else _as_list(context, "context")
        if len(texts) != len(caches):
            raise ValueError(f"{len(texts)} contexts but {len(caches)} context caches: give one cache per context.")
        weights = self.weights_fingerprint()
        for cache, text in zip(caches, texts):
            cache.check(weights, None if text is None else text_fingerprint(text, processor),
                        self.config.encoder_tokens_per_chunk_token, self.model.ranking_windows())
        return caches

    def weights_fingerprint(self) -> str:
        """Hash of the weights of the encoder, the adapter and the layers that rank chunks (a cache depends
        on nothing else); recomputed only after a parameter changes."""
        ranking = [self.model.ranking_layers] if self.model.checked_scoring() == "base" else []
        return self._fingerprint("chunks", [self.model.encoder, self.model.adapter] + ranking)

    def decoder_fingerprint(self) -> str:
        """Hash of the decoder's weights (LoRA included), which a context cache's prefix keys and values depend on
        (with the chunk tokens, covered by `weights_fingerprint`); recomputed only after a parameter changes."""
        return self._fingerprint("decoder", [self.model.language_model])

    def _fingerprint(self, name: str, modules: list[nn.Module]) -> str:
        # `_version` is the counter autograd itself uses to notice in-place changes; torch offers no public one.
        key = tuple((p.data_ptr(), p._version) for module in modules for p in module.parameters())
        if name not in self._fingerprints or self._fingerprints[name][0] != key:
            self._fingerprints[name] = (key, weights_fingerprint(modules))
        return self._fingerprints[name][1]

    def quantize_encoder(self) -> "E2LLMForCausalLM":
        """The fast CPU encoder path, for inference: every linear layer of the chunk encoder and of the ranking
        layers becomes an `Int8Linear`, in place (the adapter and the decoder stay as they are). On a 2-core AVX2
        CPU all-MiniLM-L6-v2 then encoded 1M tokens 1.4x faster (157 s against 224 s), its pooled vectors at a mean
        cosine of 0.99 to fp32 (0.97-0.98 for the worst chunk), ranking the same needle chunks first.
        Irreversible: load the model again for fp32. Returns the model."""
        if self.device.type != "cpu":
            raise ValueError(f"quantize_encoder makes int8 CPU kernels, but the model is on {self.device}: "
                             "call it on a model on the CPU (on an accelerator, use a bf16 or fp16 dtype instead).")
        if self.training:
            raise ValueError("quantize_encoder is for inference and its int8 layers cannot train: call model.eval() "
                             "first, and train the fp32 model.")
        modules = [self.model.encoder] + ([self.model.ranking_layers] if self.model.ranking_layers is not None else [])
        if any(hasattr(module, "lora_A") for part in modules for module in part.modules()):
            raise ValueError("The encoder carries unmerged LoRA layers: merge them first "
                             "(peft_model.merge_and_unload()), then quantize.")
        for part in modules:
            for name, module in list(part.named_modules()):
                if isinstance(module, nn.Linear):
                    part.set_submodule(name, Int8Linear(module))
        return self

    def answer(self, context: str | list[str], prompt: str | list[str] | None = None,
               processor: E2LLMProcessor | None = None, **generate_kwargs) -> str | list[str]:
        """Text in, text out: the decoded answer(s) to `prompt` about `context` (greedy by default)."""
        generate_kwargs.setdefault("max_new_tokens", 128)
        ids = self.generate(context=context, prompt=prompt, processor=processor, **generate_kwargs)
        tokenizer = (processor if processor is not None else self.get_processor()).tokenizer
        texts = [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return texts[0] if isinstance(context, str) else texts

    def get_processor(self) -> E2LLMProcessor:
        """The processor saved beside this model (loaded once from where the model was loaded)."""
        if self._processor is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError("This model was built in memory, so no processor is saved beside it: "
                                 "pass processor=E2LLMProcessor.from_encoder_decoder_pretrained(...).")
            self._processor = E2LLMProcessor.from_pretrained(source, trust_remote_code=True, **self._processor_kwargs)
            check_processor_matches(self._processor, self.config, self.get_input_embeddings().num_embeddings)
        return self._processor

    def _processor_for(self, processor: E2LLMProcessor | None) -> E2LLMProcessor:
        """The processor a call was given (checked against this model), else the one saved beside it."""
        if processor is None:
            return self.get_processor()  # checked once, when loaded
        check_processor_matches(processor, self.config, self.get_input_embeddings().num_embeddings)
        return processor

    # --- building and loading -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        check_source(pretrained_model_name_or_path)
        with_info = kwargs.pop("output_loading_info", False)
        config = kwargs.get("config")
        if not isinstance(config, E2LLMConfig):
            config = E2LLMConfig.from_pretrained(pretrained_model_name_or_path,
                                                 **{key: kwargs[key] for key in _HUB_KWARGS if key in kwargs})
        kwargs["key_mapping"] = {**_ranking_layers_of_old_folders(config), **(kwargs.get("key_mapping") or {})}
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        except SafetensorError as error:  # "header too large", "incomplete metadata": says nothing of which file
            raise OSError(f"The weights in {pretrained_model_name_or_path} are not readable safetensors ({error}): "
                          "the file is damaged or incomplete. Save or download the folder again.") from None
        if info["missing_keys"]:  # transformers only logs them, and the model would run on random weights
            missing = sorted(info["missing_keys"])
            raise OSError(f"{pretrained_model_name_or_path} lacks {len(missing)} of the model's weights (first: "
                          f"{missing[0]}): the file is incomplete or from another model. Save it again with "
                          "model.save_pretrained(folder).")
        # Remember where the weights came from so that get_processor() finds the files saved beside them.
        model._processor_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
        return (model, info) if with_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        if os.path.isfile(save_directory):  # transformers only logs this, saves nothing and returns
            raise FileExistsError(f"{save_directory} is a file; save_pretrained writes a folder: pass a folder path.")
        if any(isinstance(module, Int8Linear) for module in self.modules()):
            raise ValueError("This model's encoder was quantized for fast CPU inference (quantize_encoder), which no "
                             "saved folder holds: save the fp32 model, and quantize it again after loading.")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_path: str, decoder_path: str, *, dtype: torch.dtype | None = None,
                                        attn_implementation: str = "sdpa", chunk_token: str = "<chunk>",
                                        encoder_name: str | None = None, decoder_name: str | None = None,
                                        **config_kwargs) -> "E2LLMForCausalLM":
        """Compose a new E2LLM from a pretrained BERT-family encoder and a causal LM (untrained adapter).

        `encoder_name` / `decoder_name`: what the sub-configs record as their origin (default: the paths), e.g.
        a Hub id for weights loaded from a local copy. `config_kwargs` go to `E2LLMConfig` (pooling,
        adapter_num_layers, LoRA settings, ...); pooling defaults to what the encoder's sentence-transformers
        config says, hybrid_scoring to "base" (a frozen copy of this pretrained encoder ranks chunks for hybrid
        recall, whatever training does to the encoder).
        """
        _check_roles(encoder_path, decoder_path)
        encoder = _encoder_from_pretrained(encoder_path, dtype)
        causal_lm = AutoModelForCausalLM.from_pretrained(decoder_path, dtype=dtype)
        encoder.config.name_or_path = encoder_name or encoder.config.name_or_path
        causal_lm.config.name_or_path = decoder_name or causal_lm.config.name_or_path
        chunk_token_id = add_chunk_token(AutoTokenizer.from_pretrained(decoder_path), chunk_token)
        _make_room_for_chunk_token(causal_lm, chunk_token_id)
        config_kwargs.setdefault("pooling", _sentence_transformers_pooling(encoder_path) or "mean")
        config_kwargs.setdefault("hybrid_scoring", "base")
        config = E2LLMConfig(encoder_config=encoder.config, text_config=causal_lm.config,
                             chunk_token_id=chunk_token_id, **config_kwargs)
        model = cls(config, encoder=encoder, causal_lm=causal_lm)
        # Built in memory, the composite would take text_config's generation defaults (a default Llama config's
        # eos and pad) rather than the decoder's generation_config.json; and a placeholder is never a word to say.
        model.generation_config = copy.deepcopy(causal_lm.generation_config)
        model.generation_config.suppress_tokens = [chunk_token_id]
        # Composing resets the shared sub-configs' attention implementation to None, with which the decoder
        # attends bidirectionally (no causal mask): set it explicitly.
        model.set_attn_implementation(attn_implementation)
        return model.to(dtype) if dtype is not None else model


def _ranking_layers_of_old_folders(config: E2LLMConfig) -> dict[str, str]:
    """`key_mapping` from a folder saved before the shared trunk, whose whole pretrained encoder copy
    (`model.scoring_encoder.*`) ranked chunks, to `ranking_layers`: the copy's top `encoder_lora_layers`
    layers become them; its embeddings and lower layers, equal to the trunk's, are left unexpected and ignored."""
    if config.hybrid_scoring != "base":
        return {}
    n = config.encoder_config.num_hidden_layers
    first = max(0, n - config.encoder_lora_layers)
    return {rf"^model\.scoring_encoder\.(?:\w+\.)*?layers?\.{i}\.": f"model.ranking_layers.{i - first}."
            for i in range(first, n)}


def _with_cache_name(kwargs: dict) -> dict:
    """`kwargs` with the decoder cache under the installed transformers' name, whichever name the caller used."""
    kwargs = dict(kwargs)
    given = [kwargs.pop(name) for name in ("cache", "past_key_values") if name in kwargs]
    caches = [cache for cache in given if cache is not None]
    if len(caches) > 1:
        raise ValueError("Both cache= and past_key_values= were given: pass the decoder cache once, as either.")
    if given:
        kwargs[_CACHE] = caches[0] if caches else None
    return kwargs


def _reads_back_freely(tensor: torch.Tensor) -> bool:
    """Whether reading a value of `tensor` back to Python costs nothing: on the CPU. On an accelerator it would
    stall the forward until the device caught up, so the code there keeps static shapes and checks on the device."""
    return tensor.device.type == "cpu"


def _mask_for(model: PreTrainedModel, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """The attention mask to hand `model` for a (B, T) padding `mask`, so that its forward never waits for the
    device: as it is on the CPU, and on an accelerator (SDPA attention) the (B, 1, 1, T) or causal (B, 1, T, T)
    boolean mask SDPA reads, which transformers takes as it is. Given (B, T), transformers first asks whether any
    position is padded, to drop the mask and let SDPA take its flash kernel: reading that answer back stalls
    every forward (seen with transformers 5.17 on an H200: two stalls per encoder batch and decoder pass)."""
    if mask.dim() != 2 or _reads_back_freely(mask) or model.config._attn_implementation != "sdpa":
        return mask
    keep = mask.bool()[:, None, None, :]  # (B, 1, 1, T): the real tokens, which every position may attend to
    if causal:
        length = mask.shape[1]
        # (B, 1, T, T); a left-padding row attends to itself alone: a row with nothing to attend to comes out
        # NaN from SDPA's memory-efficient kernel (the one attention_kernels leaves), and NaN values in a
        # masked key still poison every row (0 * NaN) of the next layer
        earlier = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (T, T)
        keep = (keep & earlier) | torch.eye(length, dtype=torch.bool, device=mask.device)
    return keep


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, segment_size: int | None = None,
          num_segments: int | None = None) -> torch.Tensor:
    """(n, L, H) token states -> (n, H): masked mean, or the first ([CLS]) token. With `segment_size` k (mean
    only): (n, num_segments, H), the masked mean of each k consecutive tokens (zeros past the real tokens);
    num_segments * k must be at least L."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (n, L, 1)
    if segment_size is not None:
        pad = num_segments * segment_size - hidden.shape[1]
        hidden = nn.functional.pad(hidden, (0, 0, 0, pad)).unflatten(1, (num_segments, segment_size))  # (n, S, k, H)
        weights = nn.functional.pad(weights, (0, 0, 0, pad)).unflatten(1, (num_segments, segment_size))  # (n, S, k, 1)
    return (hidden * weights).sum(dim=-2) / weights.sum(dim=-2).clamp(min=1.0)


def _pool_windows(hidden: torch.Tensor, mask: torch.Tensor, window_tokens: int, stride: int,
                  num_windows: int) -> torch.Tensor:
    """(n, L, H) token states -> (n, num_windows, H), the masked mean of each window of `window_tokens`
    consecutive tokens, window j starting at token j * stride; windows past a text's real tokens are zeros or
    partial (`window_counts` says which are real). (num_windows - 1) * stride + window_tokens must be >= L."""
    width = (num_windows - 1) * stride + window_tokens
    pad = (0, 0, 0, width - hidden.shape[1])
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (n, L, 1)
    sums = nn.functional.pad(hidden * weights, pad).unfold(1, window_tokens, stride).sum(dim=-1)  # (n, W, H)
    counts = nn.functional.pad(weights, pad).unfold(1, window_tokens, stride).sum(dim=-1)  # (n, W, 1)
    return sums / counts.clamp(min=1.0)


def window_counts(lengths: torch.Tensor | int, window_tokens: int, stride: int) -> torch.Tensor:
    """Ranking windows of texts of `lengths` tokens: one up to `window_tokens` tokens (a shorter text is one
    window of what it has), then one more per `stride` tokens begun, so that the last one, perhaps partial,
    reaches the text's end. (...) -> (...), a tensor."""
    excess = torch.as_tensor(lengths) - window_tokens
    return 1 + (-(-excess // stride)).clamp(min=0)


def _best_window_cosines(vectors: torch.Tensor, window_mask: torch.Tensor | None,
                         queries: torch.Tensor) -> torch.Tensor:
    """Cosine of each chunk's best window with each question sentence: ranking vectors (n, enc_hidden), one per
    chunk, or (n, W, enc_hidden) with `window_mask` (n, W) of the real windows (None: all), and queries
    (s, enc_hidden) -> (n, s). Compared in fp32 whatever the vectors are stored in."""
    if vectors.dim() == 2:
        vectors = vectors.unsqueeze(1)  # (n, 1, enc_hidden): one window, the whole chunk
    # Normalized vectors and one matmul: cosine_similarity would broadcast an (n, W, s, enc_hidden) tensor.
    cosines = (nn.functional.normalize(vectors.float(), dim=-1)
               @ nn.functional.normalize(queries.float(), dim=-1).T)  # (n, W, s)
    if window_mask is not None:
        cosines = cosines.masked_fill(~window_mask.to(cosines.device).unsqueeze(-1), -torch.inf)
    return cosines.max(dim=1).values


def _placed(into: torch.Tensor | None, index: torch.Tensor, vectors: torch.Tensor, n: int) -> torch.Tensor:
    """`into` (n, ...) (a new one when None) with the rows `index` replaced by `vectors`; out of place, which
    keeps autograd happy in training."""
    into = vectors.new_empty(n, *vectors.shape[1:]) if into is None else into
    return into.index_copy(0, index, vectors)


class _TrunkDone(Exception):
    """Stops an encoder forward at its first tuned layer: a ranking-only pass has what it needs by then."""


def _tuned_layers(encoder: PreTrainedModel, config: E2LLMConfig) -> nn.ModuleList:
    """The encoder's top `config.encoder_lora_layers` layers, those LoRA tunes (`lora.lora_config` counts them
    the same way) and hybrid recall keeps pretrained copies of: found as the list of all its layers, named
    `layer` (BERT, RoBERTa, MPNet, DistilBERT) or `layers`."""
    n = config.encoder_config.num_hidden_layers
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers") and len(module) == n:
            return module[max(0, n - config.encoder_lora_layers):]
    raise ValueError(f"{type(encoder).__name__} has no list of its {n} layers named `layer` or `layers`, which "
                     'hybrid_scoring="base" shares between chunk encoding and ranking: use hybrid_scoring="tuned".')


def _standardized(scores: torch.Tensor) -> torch.Tensor:
    """(n_chunks, ...) scores shifted and scaled to mean 0, deviation 1 over the chunks, so that a cosine and
    a BM25 sum weigh alike (a constant, e.g. one chunk, becomes zeros)."""
    return (scores - scores.mean(dim=0)) / scores.std(dim=0, correction=0).clamp(min=1e-6)


def _encoder_from_config(encoder_config) -> PreTrainedModel:
    try:  # BERT-style encoders carry a pooler that E2LLM never uses (unused weights break DDP)
        return AutoModel.from_config(encoder_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(encoder_config)


def _check_roles(encoder_path: str, decoder_path: str) -> None:
    """Refuse a causal LM as the encoder, or a model without an LM head as the decoder (paths swapped, say),
    by the architectures their configs name: loading would fail deep inside ("no attribute embed_tokens")."""
    for role, path, wanted in (("encoder", encoder_path, False), ("decoder", decoder_path, True)):
        names = PreTrainedConfig.get_config_dict(path)[0].get("architectures") or []
        if names and any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names) != wanted:
            kind = "a sentence encoder (BERT family)" if role == "encoder" else "a causal LM"
            raise ValueError(f"{role}_path {path!r} holds {names[0]}, not {kind}: call "
                             "from_encoder_decoder_pretrained(encoder_path, decoder_path), encoder first.")


def _encoder_from_pretrained(path: str, dtype) -> PreTrainedModel:
    # Sentence encoders often ship pooler weights that E2LLM drops on purpose: keep that load report quiet.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return AutoModel.from_pretrained(path, dtype=dtype, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(path, dtype=dtype)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _make_room_for_chunk_token(causal_lm: PreTrainedModel, chunk_token_id: int) -> None:
    """Grow the decoder's vocabulary to hold the placeholder, with the mean embedding as its row.

    Its input row is always overwritten by chunk vectors, but a tied LM head also scores it: a
    deterministic row (unlike resize's random one) keeps every rebuild of a checkpoint identical.
    """
    rows = causal_lm.get_input_embeddings().num_embeddings
    if chunk_token_id < rows:
        return
    causal_lm.resize_token_embeddings(chunk_token_id + 1, mean_resizing=False)
    with torch.no_grad():
        for embedding in {causal_lm.get_input_embeddings().weight, causal_lm.get_output_embeddings().weight}:
            embedding[rows:] = embedding[:rows].mean(dim=0)


def _sentence_transformers_pooling(encoder_path: str) -> str | None:
    """'cls' or 'mean' from a sentence-transformers folder's `1_Pooling/config.json`, if there is one."""
    path = os.path.join(encoder_path, "1_Pooling", "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        pooling = json.load(f)
    return "cls" if pooling.get("pooling_mode_cls_token") else "mean"


E2LLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["ContextTooLong", "E2LLMForCausalLM", "E2LLMModel", "E2LLMPreTrainedModel", "E2LLMAdapter", "Int8Linear"]
