"""E2LLM processor: splits raw text into chunks and builds the decoder prompt around chunk tokens.

Data flow: text -> `chunk()` character spans -> encoder token ids (one row per chunk) and a decoder
prompt holding one placeholder token per chunk token (one per chunk by default; ceil(n_i / k) for a chunk of
n_i encoder tokens with `encoder_tokens_per_chunk_token` k), whose embeddings the model later replaces.
Owning the encoder tokenizer, it also holds the lexical half of hybrid ranking (`lexical_scores`, BM25 over
that tokenizer's ids); the model fuses it with the dense half in `chunk_scores`.
"""

import os
import re
import string
import warnings
from itertools import takewhile

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_e2llm import E2LLMConfig, check_encoder_tokens_per_chunk_token

REASONING_TEMPLATE = "Given the contexts: {context}\nPlease follow the instruction:\nAnswer the question: {query}"
UNDERSTANDING_TEMPLATE = "Given the contexts: {context}\nPlease follow the instruction:\nRestate the aforementioned context"
# Hybrid recall: raw text of the chunks most relevant to the question, after the chunk tokens.
PASSAGES_TEMPLATE = "\nThe passages most relevant to the question, in document order:\n{passages}"
PASSAGE_TEMPLATE = "[chunk {index} of {total}] {text}\n"
DEFAULT_CHUNK_TOKEN = "<chunk>"
# A cut goes right after one of these: a sentence end (Latin marks only before white space, so that
# "3.14" or "e.g." inside a sentence stay whole; CJK marks anywhere) or a line break...
_SENTENCE_OR_LINE_END = re.compile(r"[.!?](?=\s)|[。！？]|\n")
# ...else after any white space, else the chunk is cut hard at chunk_size characters.
_WHITESPACE = re.compile(r"\s")
_UNBOUNDED_TOKENIZER_LENGTH = 100_000  # tokenizers store ~1e30 when they declare no limit
IGNORE_INDEX = -100
# What processor.save_pretrained writes beside the decoder's tokenizer.
PROCESSOR_FILES = ("processor_config.json", "encoder_tokenizer")
# Share of a context's characters the encoder may see only as unknown or no tokens before a warning.
UNSEEN_WARNING_SHARE = 0.25
# Template fields: (required, allowed). An unknown field would fail only when a prompt is built.
TEMPLATE_FIELDS = {
    "reasoning_template": ({"context", "query"}, {"context", "query"}),
    "understanding_template": ({"context"}, {"context"}),
    "passages_template": ({"passages"}, {"passages"}),
    "passage_template": ({"text"}, {"index", "total", "text"}),
}


def add_chunk_token(tokenizer, chunk_token: str = DEFAULT_CHUNK_TOKEN) -> int:
    """Add `chunk_token` to `tokenizer` as a special token unless present; return its id. Idempotent."""
    if chunk_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([chunk_token], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(chunk_token)


def chunk_token_counts(lengths: torch.Tensor, encoder_tokens_per_chunk_token: int | None) -> torch.Tensor:
    """Chunk tokens each chunk becomes: (n_chunks,) encoder token counts -> (n_chunks,) ceil(n_i / k), or ones
    when k is None. The processor writes that many placeholders and the model pools that many vectors, so both
    count with this one function (on any device: no value is read back)."""
    k = encoder_tokens_per_chunk_token
    return torch.ones_like(lengths) if k is None else (lengths + k - 1) // k


def _last_match_end(pattern: re.Pattern, text: str, start: int, end: int) -> int | None:
    """End of the last match of `pattern` in text[start:end + 1] that lies inside (start, end]."""
    best = None
    for match in pattern.finditer(text, start, min(end + 1, len(text))):
        if start < match.end() <= end:
            best = match.end()
    return best


def split_sentences(text: str) -> list[str]:
    """`text` cut after each sentence end or line break (the chunker's rule), stripped, empty pieces dropped."""
    ends = [match.end() for match in _SENTENCE_OR_LINE_END.finditer(text)]
    pieces = (text[start:end].strip() for start, end in zip([0] + ends, ends + [len(text)]))
    return [piece for piece in pieces if piece]


def split_into_chunks(text: str, chunk_size: int, overlap_chars: int = 0) -> list[tuple[int, int]]:
    """Character spans `(start, end)` of consecutive chunks of at most `chunk_size` characters.

    Each chunk is cut back to its last sentence end or line break, else its last white space, else
    cut hard. The next chunk starts `overlap_chars` characters before the previous one ended (the processor's
    `chunk_overlap` is the same as a fraction of `chunk_size`); with 0 the chunks concatenate back to exactly
    `text`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 character, got {chunk_size}.")
    if not 0 <= overlap_chars < chunk_size:
        raise ValueError(f"overlap_chars must be in [0, chunk_size={chunk_size}), got {overlap_chars}.")
    spans, start = [], 0
    while start < len(text):
        end = min(start + chunk_size, len(text))
        if end < len(text):
            end = (_last_match_end(_SENTENCE_OR_LINE_END, text, start, end)
                   or _last_match_end(_WHITESPACE, text, start, end) or end)
        spans.append((start, end))
        if end == len(text):
            break
        start = max(end - overlap_chars, start + 1)
    return spans


def bm25_scores(chunk_ids: torch.Tensor, chunk_mask: torch.Tensor, query_ids: torch.Tensor,
                k1: float = 1.2, b: float = 0.75) -> torch.Tensor:
    """Okapi BM25 of each chunk for the query's distinct token ids, document frequencies counted over these
    chunks: (n_chunks, L) ids and mask, (q,) ids -> (n_chunks,). Token ids rather than words keep the shipped
    files free of any tokenizer or retrieval library beyond the encoder's own; rare subwords still single
    out names, places and codes."""
    terms = query_ids.unique()  # (t,)
    hits = (chunk_ids.unsqueeze(-1) == terms) & chunk_mask.bool().unsqueeze(-1)  # (n_chunks, L, t)
    counts = hits.sum(dim=1).float()  # (n_chunks, t)
    lengths = chunk_mask.sum(dim=1, keepdim=True).float()  # (n_chunks, 1)
    frequency = (counts > 0).sum(dim=0).float()  # (t,)
    idf = torch.log((len(counts) - frequency + 0.5) / (frequency + 0.5) + 1)  # (t,)
    saturation = counts * (k1 + 1) / (counts + k1 * (1 - b + b * lengths / lengths.mean().clamp(min=1)))
    return (saturation * idf).sum(dim=1)


def lexical_scores(tokenizer, chunk_texts: list[str], sentences: list[str], chunk_ids: torch.Tensor | None = None,
                   chunk_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BM25 of every chunk for every question sentence, over the encoder tokenizer's ids (no special tokens):
    (n_chunks, n_sentences). The chunks' ids as encoded (`chunk_ids`, `chunk_mask`: (n_chunks, L), special
    tokens included; a context cache keeps them) are read when given, the texts tokenized again otherwise."""
    queries = tokenizer(sentences, return_special_tokens_mask=True)  # with [CLS] ... [SEP], marked
    # The special tokens tokenizing adds at each end, by position rather than by id: an [UNK] is one of a text's
    # words. Fewest over the sentences, in case one starts or ends with a special token's literal text.
    marks = queries["special_tokens_mask"]
    head = min(len(list(takewhile(bool, m))) for m in marks)
    tail = min(len(list(takewhile(bool, reversed(m)))) for m in marks)
    if chunk_ids is None:
        words = tokenizer(chunk_texts, add_special_tokens=False, padding="longest", return_tensors="pt")
        chunk_ids, chunk_mask = words["input_ids"], words["attention_mask"]
    else:
        positions = torch.arange(chunk_mask.shape[1])  # (L,)
        chunk_mask = chunk_mask.bool() & (positions >= head) & (positions < chunk_mask.sum(dim=1, keepdim=True) - tail)
    return torch.stack([bm25_scores(chunk_ids, chunk_mask, torch.tensor(ids[head:len(ids) - tail], dtype=torch.long))
                        for ids in queries["input_ids"]], dim=1)


class E2LLMProcessor(ProcessorMixin):
    r"""Chunks long text for the encoder and writes the decoder prompt with one placeholder per chunk.

    Args:
        tokenizer: the decoder's tokenizer (gets `chunk_token` added if missing).
        encoder_tokenizer: the chunk encoder's tokenizer.
        chunk_size: characters per chunk (paper: 512).
        chunk_overlap: overlap between consecutive chunks as a fraction of `chunk_size` (paper's ablation: 0.3).
        chunk_token: placeholder string; one per chunk token in the prompt.
        encoder_tokens_per_chunk_token: the model config's compression setting, which this processor needs to
            write the placeholders: None, one per chunk; k, ceil(n_i / k) for a chunk of n_i encoder tokens.
        max_chunk_tokens: encoder tokens a chunk may hold; longer chunks are split again (default: the
            encoder tokenizer's limit, at most 512).
        reasoning_template: prompt with a question; fields `{context}` (chunk tokens) and `{query}`.
        understanding_template: prompt without a question (restate task); field `{context}`.
        hybrid_top_k: hybrid recall: how many of the chunks most similar to the question also go into
            the prompt as raw text (0: off, plain E2LLM). Needs a question; without one it is skipped.
        hybrid_token_budget: decoder tokens the raw passages may take at most.
        passages_template / passage_template: how the passages follow the chunk tokens.
    """

    def __init__(self, tokenizer=None, encoder_tokenizer=None, chunk_size: int = 512,
                 chunk_overlap: float = 0.0, chunk_token: str = DEFAULT_CHUNK_TOKEN,
                 max_chunk_tokens: int | None = None, reasoning_template: str = REASONING_TEMPLATE,
                 understanding_template: str = UNDERSTANDING_TEMPLATE, hybrid_top_k: int = 0,
                 hybrid_token_budget: int = 1024, passages_template: str = PASSAGES_TEMPLATE,
                 passage_template: str = PASSAGE_TEMPLATE, encoder_tokens_per_chunk_token: int | None = None,
                 **kwargs):
        super().__init__(tokenizer, encoder_tokenizer, **kwargs)  # first: max_chunk_tokens is checked against it
        # Every setting below is checked by __setattr__, here and whenever it is changed later.
        self.chunk_size, self.chunk_overlap, self.chunk_token = chunk_size, chunk_overlap, chunk_token
        self.reasoning_template, self.understanding_template = reasoning_template, understanding_template
        self.hybrid_top_k, self.hybrid_token_budget = hybrid_top_k, hybrid_token_budget
        self.passages_template, self.passage_template = passages_template, passage_template
        self.encoder_tokens_per_chunk_token = encoder_tokens_per_chunk_token
        if max_chunk_tokens is None and encoder_tokenizer is not None:
            max_chunk_tokens = min(self._encoder_token_limit(), 512)
        self.max_chunk_tokens = max_chunk_tokens
        self.chunk_token_id = add_chunk_token(self.tokenizer, chunk_token)

    def __setattr__(self, name: str, value) -> None:
        if name in ("chunk_size", "hybrid_token_budget"):
            _check_int(name, value, 1)
        elif name == "hybrid_top_k":
            _check_int(name, value, 0, "(0: hybrid recall off)")
        elif name == "chunk_overlap":
            _check_fraction(name, value)
        elif name == "max_chunk_tokens" and value is not None:
            self._check_max_chunk_tokens(value)
        elif name == "encoder_tokens_per_chunk_token":
            check_encoder_tokens_per_chunk_token(value)
        elif name in TEMPLATE_FIELDS:
            _check_template(name, value, *TEMPLATE_FIELDS[name])
        super().__setattr__(name, value)

    def _encoder_token_limit(self) -> int:
        """The encoder tokenizer's token limit (512 when it declares none)."""
        limit = self.encoder_tokenizer.model_max_length
        return 512 if limit > _UNBOUNDED_TOKENIZER_LENGTH else limit

    def _check_max_chunk_tokens(self, value) -> None:
        # Fewer tokens than one character needs would split a chunk forever; more than the encoder's limit
        # would fail deep inside the encoder.
        low, high = self.encoder_tokenizer.num_special_tokens_to_add() + 1, self._encoder_token_limit()
        _check_int("max_chunk_tokens", value, low, "(the encoder's special tokens plus one character)")
        if value > high:
            raise ValueError(f"max_chunk_tokens must be at most {high}, the encoder tokenizer's limit, got {value}.")

    def hybrid_settings(self, top_k: int | None = None, token_budget: int | None = None) -> tuple[int, int]:
        """`(top_k, token_budget)` for one call: the values given (checked), else the processor's."""
        top_k = self.hybrid_top_k if top_k is None else top_k
        token_budget = self.hybrid_token_budget if token_budget is None else token_budget
        _check_int("hybrid_top_k", top_k, 0, "(0: hybrid recall off)")
        _check_int("hybrid_token_budget", token_budget, 1)
        return top_k, token_budget

    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_path: str, decoder_path: str, **kwargs) -> "E2LLMProcessor":
        """Build from the encoder's and the decoder's tokenizers; `kwargs` are the chunking and prompt settings."""
        return cls(AutoTokenizer.from_pretrained(decoder_path), AutoTokenizer.from_pretrained(encoder_path), **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        folder = os.path.normpath(os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or ""))
        missing = [name for name in PROCESSOR_FILES if not os.path.exists(os.path.join(folder, name))]
        if os.path.isdir(folder) and missing:  # transformers would fall back to the decoder's tokenizer
            raise OSError(
                f"{folder} lacks {' and '.join(missing)}, so no E2LLM processor can be loaded from it (the "
                "decoder's tokenizer would stand in for the encoder's). Save one beside the model with "
                "processor.save_pretrained(folder).")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError) as error:  # the raw error blames a missing sentencepiece, not the folder
            raise OSError(
                f"No E2LLM processor could be loaded from {pretrained_model_name_or_path!r} ({error}). "
                "Save one beside the model with processor.save_pretrained(folder)."
            ) from error

    # --- chunking -------------------------------------------------------------------------------
    def chunk(self, text: str) -> list[tuple[int, int]]:
        """Character spans `(start, end)` of the chunks of `text`; none exceeds `max_chunk_tokens`."""
        return [span for span, _ in self._tokenized_chunks(text)]

    def _tokenized_chunks(self, text: str) -> list[tuple[tuple[int, int], list[int]]]:
        """`(span, encoder ids)` of every chunk of `text`: each chunk is tokenized once, to check its length and
        to be encoded."""
        _check_text(text, "context")
        overlap_chars = int(self.chunk_size * self.chunk_overlap)
        return self._fit_to_encoder(text, split_into_chunks(text, self.chunk_size, overlap_chars))

    def _fit_to_encoder(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
        rows = self.encoder_tokenizer([text[s:e] for s, e in spans], add_special_tokens=True, verbose=False)["input_ids"]
        fitted = []
        for (start, end), ids in zip(spans, rows):
            if len(ids) <= self.max_chunk_tokens:
                fitted.append(((start, end), ids))
                continue
            if end - start == 1:  # one character cannot be split: an encoder that needs many tokens for it
                raise ValueError(f"The character {text[start]!r} alone takes {len(ids)} encoder tokens, more than "
                                 f"max_chunk_tokens={self.max_chunk_tokens}: raise max_chunk_tokens.")
            # Too many tokens (digits, code, non-Latin script): split this chunk again, smaller.
            size = max(1, (end - start) * self.max_chunk_tokens // (2 * len(ids)))
            pieces = split_into_chunks(text[start:end], size)
            fitted += self._fit_to_encoder(text, [(start + s, start + e) for s, e in pieces])
        return fitted

    # --- prompt -----------------------------------------------------------------------------------
    def build_prompt(self, num_chunks: int, prompt: str | None = None, passages: list[tuple[int, str]] = (),
                     num_chunk_tokens: int | None = None) -> str:
        """The decoder's text: the template with `num_chunk_tokens` placeholders (default: one per chunk)
        for a context of `num_chunks` chunks, followed by the hybrid `passages`, `(chunk index, text)` pairs
        labelled "[chunk i of num_chunks]", if any; in the chat template if the decoder has one."""
        context = self.chunk_token * (num_chunks if num_chunk_tokens is None else num_chunk_tokens)
        if passages:
            lines = "".join(self.passage_template.format(index=i + 1, total=num_chunks, text=self._as_text(text))
                            for i, text in passages)
            context += self.passages_template.format(passages=lines)
        if prompt is None:
            text = self.understanding_template.format(context=context)
        else:
            text = self.reasoning_template.format(context=context, query=prompt)
        if self.tokenizer.chat_template is None:
            return text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    def select_passages(self, text: str, offsets: torch.Tensor, scores: torch.Tensor, top_k: int | None = None,
                        token_budget: int | None = None) -> list[tuple[int, str]]:
        """Hybrid recall: the best-scoring chunks, at most `top_k`, whose passages fit in `token_budget`
        decoder tokens together, as `(chunk index, text)` pairs in document order."""
        top_k, budget = self.hybrid_settings(top_k, token_budget)
        chosen, used = [], 0
        for index in torch.argsort(scores, descending=True).tolist():
            if len(chosen) == top_k:
                break
            start, end = offsets[index].tolist()
            passage = self._as_text(text[start:end])
            line = self.passage_template.format(index=index + 1, total=len(offsets), text=passage)
            cost = len(self.tokenizer(line, add_special_tokens=False)["input_ids"])
            if used + cost <= budget:
                chosen.append((index, text[start:end]))
                used += cost
        return sorted(chosen)

    def _prompt_ids(self, num_chunks: int, prompt: str | None, passages: list[tuple[int, str]] = (),
                    num_chunk_tokens: int | None = None) -> list[int]:
        text = self.build_prompt(num_chunks, prompt, passages, num_chunk_tokens)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.tokenizer.chat_template is None and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id] + ids
        found, wanted = ids.count(self.chunk_token_id), num_chunks if num_chunk_tokens is None else num_chunk_tokens
        if found != wanted:
            raise ValueError(
                f"The prompt holds {found - wanted} extra chunk placeholder(s) {self.chunk_token!r}: "
                "that string is reserved for chunk tokens. Remove it from the prompt and the template."
            )
        return ids

    def _target_ids(self, target: str) -> list[int]:
        _check_text(target, "target")
        ids = self.tokenizer(self._as_text(target), add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def _as_text(self, text: str) -> str:
        """`text` with the placeholder string broken up (`<chunk>` -> `< chunk>`), so that a document that
        contains it is read (quoted, restated) as text rather than as a chunk token."""
        return text.replace(self.chunk_token, self.chunk_token[:1] + " " + self.chunk_token[1:])

    # --- batch ------------------------------------------------------------------------------------
    def __call__(self, context: str | list[str], prompt: str | list[str] | None = None,
                 target: str | list[str] | None = None, return_tensors: str = "pt",
                 padding_side: str = "left") -> BatchFeature:
        """Encode one or several (context, prompt) pairs.

        Returns a BatchFeature with
            input_ids, attention_mask: (B, T) decoder prompts, padded on `padding_side`;
            chunk_input_ids, chunk_attention_mask: (total_chunks, L) encoder inputs, the chunks of
                sample 0 first, then those of sample 1, ...;
            labels: (B, T) only with `target`: the target's ids (plus EOS) after the prompt, -100 elsewhere.
        A `prompt` of None uses the understanding (restate) template.
        """
        chunks = self.encode_chunks(_as_list(context, "context"))
        data = self.encode_prompts(chunks["num_chunks"], prompt, target, padding_side=padding_side,
                                   num_chunk_tokens=chunks["num_chunk_tokens"])
        data.update(chunk_input_ids=chunks["chunk_input_ids"], chunk_attention_mask=chunks["chunk_attention_mask"])
        return BatchFeature(data, tensor_type=return_tensors)

    def encode_chunks(self, contexts: list[str], return_tensors: str | None = "pt") -> dict:
        """Encoder inputs of all chunks of `contexts`, in order.

        Returns chunk_input_ids, chunk_attention_mask: (total_chunks, L) tensors, or with `return_tensors=None`
        one unpadded list per chunk (as a training row keeps them); offsets: (total_chunks, 2) character spans
        within their own text; num_chunks: chunks per context; num_chunk_tokens: the chunk tokens (placeholders)
        they become per context (= num_chunks with one chunk token per chunk).
        """
        _check_return_tensors(return_tensors)
        chunks = [self._tokenized_chunks(text) for text in contexts]
        spans = [[span for span, _ in text_chunks] for text_chunks in chunks]
        rows = [ids for text_chunks in chunks for _, ids in text_chunks]
        self._check_representable(contexts, spans, rows)
        num_chunks = [len(text_spans) for text_spans in spans]
        lengths = torch.tensor([len(ids) for ids in rows])  # (total_chunks,) encoder tokens of each chunk
        per_chunk = chunk_token_counts(lengths, self.encoder_tokens_per_chunk_token).split(num_chunks)
        encoded = {"chunk_input_ids": rows, "chunk_attention_mask": [[1] * len(ids) for ids in rows],
                   "offsets": [span for text_spans in spans for span in text_spans],
                   "num_chunks": num_chunks, "num_chunk_tokens": [int(counts.sum()) for counts in per_chunk]}
        return encoded if return_tensors is None else self.pad_chunks(encoded)

    @property
    def pad_id(self) -> int:
        """The id prompts are padded with: the decoder tokenizer's pad token, or 0 for one without (many base
        models): padded positions are masked out of attention and loss, so any id will do."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def encoder_pad_id(self) -> int:
        """The id chunks are padded with (the encoder tokenizer's pad token, or 0)."""
        return self.encoder_tokenizer.pad_token_id or 0

    def pad_chunks(self, chunks: dict) -> dict:
        """`encode_chunks(..., return_tensors=None)` output as tensors: ids and mask padded on the right to
        (total_chunks, L), offsets (total_chunks, 2)."""
        return {**chunks,
                "chunk_input_ids": pad_sequences(chunks["chunk_input_ids"], self.encoder_pad_id),
                "chunk_attention_mask": pad_sequences(chunks["chunk_attention_mask"], 0),
                "offsets": torch.tensor(chunks["offsets"], dtype=torch.long).reshape(-1, 2)}

    def _check_representable(self, contexts: list[str], spans: list[list[tuple[int, int]]],
                             rows: list[list[int]]) -> None:
        """Refuse a context whose every chunk the encoder sees as special or unknown tokens only (control
        or zero-width characters, emoji, one endless "word"): an answer would be made up. Warn when that
        is true of much of it."""
        blank = set(self.encoder_tokenizer.all_special_ids)
        seen = [not blank.issuperset(ids) for ids in rows]
        first = 0
        for number, (text, text_spans) in enumerate(zip(contexts, spans), start=1):
            unseen = [end - start for (start, end), ok in zip(text_spans, seen[first:]) if not ok]
            first += len(text_spans)
            which = f"context {number} of {len(contexts)}" if len(contexts) > 1 else "the context"
            if len(unseen) == len(text_spans):
                raise ValueError(
                    f"The encoder cannot represent any of {which} ({len(text):,} characters): every chunk becomes "
                    "unknown or no tokens (control, zero-width or emoji characters, or a word too long for its "
                    "vocabulary). Pass readable text.")
            share = min(1.0, sum(unseen) / len(text))
            if share >= UNSEEN_WARNING_SHARE:
                warnings.warn(
                    f"The encoder cannot represent {int(100 * share)}% of {which} ({len(unseen)} of "
                    f"{len(text_spans)} chunks become unknown or no tokens): answers about that part are guesses. "
                    "Clean the text, or use an encoder whose vocabulary covers it.", UserWarning, stacklevel=3)

    def encode_prompts(self, num_chunks: list[int], prompt: str | list[str] | None = None,
                       target: str | list[str] | None = None, padding_side: str = "left",
                       passages: list[list[tuple[int, str]]] | None = None,
                       num_chunk_tokens: list[int] | None = None, return_tensors: str | None = "pt") -> dict:
        """Decoder inputs (input_ids, attention_mask[, labels]) for contexts of `num_chunks` chunks each,
        holding `num_chunk_tokens` placeholders each (`encode_chunks` gives both; default: one per chunk),
        with each context's hybrid `passages` if given (see `select_passages`): (B, T) tensors padded on
        `padding_side`, or with `return_tensors=None` one unpadded list per context.

        Needs no encoder work, so a context encoded once (a context cache) can take new prompts.
        """
        _check_return_tensors(return_tensors)
        prompts = _broadcast(prompt, len(num_chunks), "prompt")
        targets = _broadcast(target, len(num_chunks), "target")
        passages = passages if passages is not None else [()] * len(num_chunks)
        num_chunk_tokens = num_chunk_tokens if num_chunk_tokens is not None else num_chunks
        rows, labels = [], []
        for count, tokens, query, answer, chosen in zip(num_chunks, num_chunk_tokens, prompts, targets, passages):
            if query is not None:
                _check_text(query, "prompt", allow_empty=True)
            ids = self._prompt_ids(count, query, chosen, tokens)
            label = [IGNORE_INDEX] * len(ids)
            if answer is not None:
                target_ids = self._target_ids(answer)
                ids, label = ids + target_ids, label + target_ids
            rows.append(ids)
            labels.append(label)
        data = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
        if any(t is not None for t in targets):
            data["labels"] = labels
        if return_tensors is None:
            return data
        pads = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {key: pad_sequences(value, pads[key], padding_side) for key, value in data.items()}

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def check_processor_matches(processor, config: E2LLMConfig, decoder_embeddings: int) -> None:
    """Refuse a processor from another checkpoint than the model of `config`, whose decoder has
    `decoder_embeddings` input rows: it would write other placeholder ids or counts, or ids past the embeddings.
    Any processor object is checked by its attributes (one loaded with trust_remote_code from an older folder
    is another class)."""
    if processor.chunk_token_id != config.chunk_token_id:
        raise ValueError(
            f"The processor's chunk token {processor.chunk_token!r} has id {processor.chunk_token_id} but "
            f"the model expects id {config.chunk_token_id}: processor and model come from different "
            "checkpoints. Load both from the same folder.")
    k = config.encoder_tokens_per_chunk_token
    # A processor of code from before the setting has no attribute: it writes one placeholder per chunk.
    given = getattr(processor, "encoder_tokens_per_chunk_token", None)
    if given != k:  # it would write the wrong number of placeholders
        raise ValueError(
            f"The processor has encoder_tokens_per_chunk_token={given} but "
            f"the model pools with {k}: set processor.encoder_tokens_per_chunk_token = {k}, or load both from "
            "the same folder.")
    encoder_vocab = config.encoder_config.vocab_size
    if len(processor.encoder_tokenizer) > encoder_vocab:
        raise ValueError(
            f"The processor's encoder tokenizer has {len(processor.encoder_tokenizer)} tokens but the "
            f"model's encoder has {encoder_vocab} embeddings: they belong to different encoders.")
    if len(processor.tokenizer) > decoder_embeddings:
        raise ValueError(
            f"The processor's decoder tokenizer has {len(processor.tokenizer)} tokens but the model's "
            f"decoder has {decoder_embeddings} embeddings: they belong to different decoders.")


def _check_return_tensors(return_tensors) -> None:
    if return_tensors not in ("pt", None):
        raise ValueError(f'return_tensors must be "pt" (padded tensors) or None (unpadded lists), got {return_tensors!r}.')


def _check_text(text, name: str, allow_empty: bool = False) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string (or a list of strings), got {type(text).__name__}.")
    if not allow_empty and not text.strip():
        raise ValueError(f"{name} is empty or only white space: there is nothing to encode.")


def _check_int(name: str, value, minimum: int, meaning: str = "") -> None:
    # bool is an int subclass, and a float or "3" would fail (or be misread) deep inside chunking.
    wanted = f"an integer >= {minimum}" + (f" {meaning}" if meaning else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be {wanted}, got {value}.")


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} is a fraction of chunk_size in [0, 1) (0.3: 30% overlap), got {value!r}.")


def _check_template(name: str, template, required: set[str], allowed: set[str]) -> None:
    if not isinstance(template, str):
        raise TypeError(f"{name} must be a string, got {type(template).__name__}.")
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    if not required <= fields or not fields <= allowed:
        raise ValueError(f"{name} has the fields {_braced(fields)}; it must hold {_braced(required)} and may hold "
                         f"only {_braced(allowed)} (write a literal brace as {{{{ or }}}}).")


def _braced(names: set[str]) -> str:
    return " ".join(f"{{{name}}}" for name in sorted(names)) or "none"


def _as_list(context, name: str) -> list:
    if isinstance(context, str):
        return [context]
    if not isinstance(context, (list, tuple)) or not context:
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got {type(context).__name__}.")
    return list(context)


def _broadcast(value, size: int, name: str) -> list:
    """One entry per context: a single string (or None) is repeated; a list must have `size` entries."""
    if value is None or isinstance(value, str):
        return [value] * size
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise ValueError(f"{name} must be a string or a list with one entry per context ({size}).")
    return list(value)


def pad_sequences(rows: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """Lists of ids padded with `value` on `side` to the longest: (N, longest)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
    out = torch.full((len(rows), max(len(row) for row in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(out.shape[1] - len(row), None) if side == "left" else slice(0, len(row))
        out[i, span] = torch.tensor(row, dtype=torch.long)
    return out


E2LLMProcessor.register_for_auto_class()

__all__ = ["E2LLMProcessor", "split_into_chunks", "split_sentences", "add_chunk_token", "chunk_token_counts",
           "pad_sequences"]
