"""The four systems the paper compares, on one decoder, behind one interface: `predict(example) -> str`.

- `e2llm`: the E2LLM checkpoint reads the context as chunk tokens.
- `truncation`: the plain decoder reads the context cut in the middle to fit its window (head and tail
  tokens kept, as LongBench does), plus the question.
- `full`: the plain decoder reads the whole context; an example that does not fit raises `DoesNotFit`.
- `rag`: the top-k chunks by hybrid recall's own ranking (`chunk_scores`: each chunk's best window, fused with BM25),
  in document order, read by the plain decoder (cut in the middle if they still do not fit).
"""

import torch

from modeling_e2llm.modeling_e2llm import ContextTooLong

from .data import Example
from .metrics import NEEDLE_TASKS, ROUGE_TASKS

# The baselines' prompt (paper section 4.2), written into the decoder's chat template when it has one.
PLAIN_PROMPT = "Given the context: {text}\nAnswer the question: {query}"
_TEXT_SLOT = "\ue000"  # a private-use character: marks where the context goes in the rendered prompt
RAG_TOP_K = 40  # paper: top-40 chunks of 512 characters


class DoesNotFit(ValueError):
    """The example does not fit the decoder's window for this system; the harness skips and counts it."""


def default_max_new_tokens(task: str) -> int:
    """Answer budget when none is given: summaries are long, QA answers and needles short."""
    if task in ROUGE_TASKS:
        return 256
    return 32 if task in NEEDLE_TASKS else 64


class System:
    """Answers examples with `model` (an E2LLMForCausalLM) and its processor, greedy decoding.

    `max_new_tokens` of None picks `default_max_new_tokens(example.task)` per example.
    """

    name = "system"

    def __init__(self, model, processor, max_new_tokens: int | None = None):
        self.model, self.processor, self.max_new_tokens = model.eval(), processor, max_new_tokens
        self.tokenizer = processor.tokenizer

    def predict(self, example: Example) -> str:
        raise NotImplementedError

    def new_tokens(self, example: Example) -> int:
        return self.max_new_tokens or default_max_new_tokens(example.task)

    @property
    def window(self) -> int:
        return self.model.config.text_config.max_position_embeddings


class E2LLMSystem(System):
    """The model's own raw-text path, so that whatever the checkpoint's processor sets (chunk size,
    hybrid recall, ...) applies; `hybrid_top_k` / `hybrid_token_budget` override its hybrid recall for
    this system's calls. An example over the window (chunk tokens, prompt, hybrid passages at their full
    budget, answer) is skipped and counted."""

    name = "e2llm"

    def __init__(self, model, processor, max_new_tokens: int | None = None, hybrid_top_k: int | None = None,
                 hybrid_token_budget: int | None = None):
        super().__init__(model, processor, max_new_tokens)
        self.hybrid_top_k, self.hybrid_token_budget = processor.hybrid_settings(hybrid_top_k, hybrid_token_budget)

    def predict(self, example: Example) -> str:
        try:  # generate refuses a context over the window after chunking it, before encoding it
            new_ids = self.model.generate(context=example.context, prompt=example.question or None,
                                          processor=self.processor, max_new_tokens=self.new_tokens(example),
                                          hybrid_top_k=self.hybrid_top_k, hybrid_token_budget=self.hybrid_token_budget,
                                          do_sample=False)  # returns the new tokens only
        except ContextTooLong as error:
            raise DoesNotFit(str(error)) from error
        return self.tokenizer.decode(new_ids[0], skip_special_tokens=True).strip()


class PlainDecoderSystem(System):
    """The E2LLM model called with plain input_ids and no chunks: the bare decoder with `PLAIN_PROMPT`."""

    def prompt_ids(self, text: str, query: str, truncate: bool, max_new_tokens: int) -> list[int]:
        """Decoder ids of `PLAIN_PROMPT` around `text`; with `truncate`, the text's middle tokens are cut
        so that prompt + `max_new_tokens` fit the window, otherwise DoesNotFit is raised."""
        head, tail = self.prompt_parts(query)
        text_ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        room = self.window - max_new_tokens - len(head) - len(tail)
        if len(text_ids) > room and not truncate:
            raise DoesNotFit(f"{len(text_ids)} context tokens + {len(head) + len(tail)} prompt tokens + "
                             f"{max_new_tokens} new tokens exceed the decoder window of {self.window}")
        if room < 0:
            raise DoesNotFit(f"the prompt without context ({len(head) + len(tail)} tokens) leaves no room "
                             f"for {max_new_tokens} new tokens in the decoder window of {self.window}")
        return head + keep_head_and_tail(text_ids, room) + tail

    def prompt_parts(self, query: str) -> tuple[list[int], list[int]]:
        """Decoder ids before and after the context in the (chat-formatted) plain prompt."""
        text = PLAIN_PROMPT.format(text=_TEXT_SLOT, query=query)
        if self.tokenizer.chat_template is not None:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        before, after = text.split(_TEXT_SLOT)
        head = self.tokenizer(before, add_special_tokens=False)["input_ids"]
        if self.tokenizer.chat_template is None and self.tokenizer.bos_token_id is not None:
            head = [self.tokenizer.bos_token_id] + head
        return head, self.tokenizer(after, add_special_tokens=False)["input_ids"]

    def answer_plain(self, text: str, query: str, truncate: bool, max_new_tokens: int) -> str:
        """Greedy answer of the plain decoder to `PLAIN_PROMPT` (see `prompt_ids` for `truncate`)."""
        ids = torch.tensor([self.prompt_ids(text, query, truncate, max_new_tokens)], device=self.model.device)
        output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()  # new tokens


def keep_head_and_tail(ids: list[int], budget: int) -> list[int]:
    """`ids` if they fit `budget`, else the first budget//2 and the last budget - budget//2 of them."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


class TruncationSystem(PlainDecoderSystem):
    name = "truncation"

    def predict(self, example: Example) -> str:
        return self.answer_plain(example.context, example.question, True, self.new_tokens(example))


class FullSystem(PlainDecoderSystem):
    name = "full"

    def predict(self, example: Example) -> str:
        return self.answer_plain(example.context, example.question, False, self.new_tokens(example))


class RAGSystem(PlainDecoderSystem):
    """Retrieval with hybrid recall's own ranking (the model's ranking encoder, `chunk_scores`): the decoder reads
    the best chunks as text, and no chunk tokens."""

    name = "rag"

    def __init__(self, model, processor, max_new_tokens: int | None = None, top_k: int = RAG_TOP_K):
        super().__init__(model, processor, max_new_tokens)
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 chunk, got {top_k}.")
        self.top_k = top_k

    def predict(self, example: Example) -> str:
        if not example.question.strip():
            raise ValueError(f"Example {example.id!r} has no question, so rag has nothing to retrieve with.")
        spans = self.retrieve(example.context, example.question)
        text = "\n".join(example.context[start:end].strip() for start, end in spans)
        return self.answer_plain(text, example.question, True, self.new_tokens(example))

    @torch.no_grad()
    def retrieve(self, context: str, query: str) -> list[tuple[int, int]]:
        """Character spans of the `top_k` chunks of `context` that hybrid recall's ranking (`chunk_scores`)
        puts first, in document order."""
        chunks = self.processor.encode_chunks([context])
        spans = [tuple(span) for span in chunks["offsets"].tolist()]
        if len(spans) <= self.top_k:
            return spans
        scores = self.model.chunk_scores(chunks, query, self.processor)  # (n_chunks,)
        return [spans[index] for index in sorted(scores.topk(self.top_k).indices.tolist())]


SYSTEMS = {cls.name: cls for cls in (E2LLMSystem, TruncationSystem, FullSystem, RAGSystem)}


def build_system(name: str, model, processor, max_new_tokens: int | None = None, top_k: int = RAG_TOP_K,
                 hybrid_top_k: int | None = None, hybrid_token_budget: int | None = None) -> System:
    """The system `name` (one of SYSTEMS) on `model`; `top_k` is used by rag only, the hybrid settings by e2llm
    only (None: the processor's)."""
    if name not in SYSTEMS:
        raise ValueError(f"Unknown system {name!r}; choose one of {sorted(SYSTEMS)}.")
    if name == "rag":
        return RAGSystem(model, processor, max_new_tokens, top_k=top_k)
    if name == "e2llm":
        return E2LLMSystem(model, processor, max_new_tokens, hybrid_top_k, hybrid_token_budget)
    return SYSTEMS[name](model, processor, max_new_tokens)
