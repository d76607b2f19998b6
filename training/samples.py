"""Training samples for E2LLM's two tasks, and the collator that batches them.

A sample is a row of plain lists:
    input_ids, attention_mask, labels: (T,) the decoder prompt (one placeholder per chunk token: per chunk, or
        ceil(n_i / k) with the compression knob) and the target;
        labels are -100 everywhere except the target tokens (and their EOS);
    chunk_input_ids, chunk_attention_mask: (n_chunks, L_i) the encoder tokens of each chunk, unpadded;
    task: "understanding" (restate the chunks, paper 3.2) or "reasoning" (answer a question).
"""

import random
from dataclasses import dataclass

import torch

from modeling_e2llm import E2LLMProcessor
from modeling_e2llm.processing_e2llm import IGNORE_INDEX, pad_sequences
from modeling_e2llm.haystacks import understanding_windows

UNDERSTANDING, REASONING = "understanding", "reasoning"
TASKS = (REASONING, UNDERSTANDING)  # position = the task id the collator puts in the batch
ROW_KEYS = ("input_ids", "attention_mask", "labels", "chunk_input_ids", "chunk_attention_mask", "task")


class ContextTooLongError(ValueError):
    """A sample would not fit in the decoder's window (chunk tokens + prompt + target)."""


def build_sample(processor: E2LLMProcessor, context: str, prompt: str | None, target: str,
                 max_length: int | None = None, name: str = "sample",
                 passages: list[tuple[int, str]] = (), chunks: dict | None = None) -> dict:
    """One training row; `prompt=None` makes an understanding (restate) sample. `passages`, the
    `(chunk index, text)` pairs of hybrid recall, follow the chunk tokens in the prompt. `chunks`: the
    context's `processor.encode_chunks([context], return_tensors=None)`, when the caller chunked it already.

    Raises ContextTooLongError, naming `name`, when the row is longer than `max_length` decoder tokens.
    """
    chunks = processor.encode_chunks([context], return_tensors=None) if chunks is None else chunks
    num_chunk_tokens = chunks["num_chunk_tokens"][0]
    prompt_ids = processor.encode_prompts(chunks["num_chunks"], prompt, target, passages=[passages],
                                          num_chunk_tokens=[num_chunk_tokens], return_tensors=None)
    length = len(prompt_ids["input_ids"][0])
    if max_length is not None and length > max_length:
        larger = "chunk_size" if processor.encoder_tokens_per_chunk_token is None else "encoder_tokens_per_chunk_token"
        raise ContextTooLongError(
            f"{name}: {len(context)} characters make {num_chunk_tokens} chunk tokens; with prompt, quoted passages "
            f"and target the decoder input is {length} tokens, more than the decoder window of {max_length}. Use a "
            f"larger {larger}, a shorter context (split the record), or leave this record out.")
    return {**{key: rows[0] for key, rows in prompt_ids.items()},
            "chunk_input_ids": chunks["chunk_input_ids"], "chunk_attention_mask": chunks["chunk_attention_mask"],
            "task": UNDERSTANDING if prompt is None else REASONING}


def understanding_samples(processor: E2LLMProcessor, context: str, window_chunks: int,
                          max_length: int | None = None, name: str = "context", count: int | None = None,
                          rng: random.Random | None = None, shuffle_words: bool = False) -> list[dict]:
    """Restate samples over the whole `context` (or over `count` windows drawn by `rng`, see
    `haystacks.chunk_runs`): each window's chunk tokens -> the window's text. `shuffle_words`: each window's
    words in an order drawn by `rng` (default: seeded by `name`; one space between them), as context and target
    alike, so that the decoder's language-model prior cannot guess the target: only reading lowers the loss.

    The window's text is both the sample's context and its target. Chunked again on its own, a window
    gives the same chunks as inside the context, except that its last few short chunks may merge into
    one (the chunker then sees the window's end within reach); either way its chunks cover its text.
    """
    windows = understanding_windows(processor, context, window_chunks, count, rng)
    if shuffle_words:
        order = rng or random.Random(name)
        windows = [" ".join(order.sample(words, len(words))) for words in map(str.split, windows)]
    return [build_sample(processor, text, None, text, max_length, name=f"{name} window {i}")
            for i, text in enumerate(windows) if text.strip()]


@dataclass
class E2LLMCollator:
    """Pads rows on the right and stacks the chunks of the whole batch (sample 0's chunks first).

    Returns input_ids/attention_mask/labels (B, T), chunk_input_ids/chunk_attention_mask
    (total_chunks, L) and task (B,) with the ids of `TASKS`; for rows that carry `chunk_pooled` (a frozen
    encoder's), chunk_pooled (n_chunk_tokens, enc_hidden) in place of the chunk ids.
    """

    pad_token_id: int
    encoder_pad_token_id: int = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": pad_sequences([row["input_ids"] for row in rows], self.pad_token_id),
            "attention_mask": pad_sequences([row["attention_mask"] for row in rows], 0),
            "labels": pad_sequences([row["labels"] for row in rows], IGNORE_INDEX),
            "task": torch.tensor([TASKS.index(row["task"]) for row in rows]),
        }
        if "chunk_pooled" in rows[0]:  # pooled once by a frozen encoder (see dataset.with_pooled_chunks)
            batch["chunk_pooled"] = torch.cat([torch.as_tensor(row["chunk_pooled"], dtype=torch.float32)
                                               for row in rows])  # (n_chunk_tokens, enc_hidden)
            return batch
        chunks = [chunk for row in rows for chunk in row["chunk_input_ids"]]
        chunk_masks = [mask for row in rows for mask in row["chunk_attention_mask"]]
        batch["chunk_input_ids"] = pad_sequences(chunks, self.encoder_pad_token_id)
        batch["chunk_attention_mask"] = pad_sequences(chunk_masks, 0)
        return batch
