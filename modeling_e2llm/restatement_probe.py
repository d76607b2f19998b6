"""Does a model read its chunk tokens? The restatement probe, shared by training's callback
(`training.probe`) and evaluation's command (`python -m evaluation.demo chunk-stats`), which never import each
other.

For held-out chunks, the restate NLL (nats per target token, averaged over chunks) of each chunk's text
- from its own chunk token (`probe_nll_own`),
- from the chunk tokens of a nearby chunk of the same document (`probe_nll_nearby`: same topic and style,
  other details),
- from the chunk tokens of a chunk of another document (`probe_nll_other`: another topic).
The three contexts of a chunk make as many chunk tokens (with the compression knob a chunk of n encoder tokens
makes ceil(n / k)): a prompt one chunk token longer changes the NLL by itself, which would pass for reading.
A decoder that ignores its chunk tokens scores all three alike, however low its LM prior takes them; the topic
alone opens `probe_gap_other` (other - own), only the chunk's own detail opens `probe_gap_nearby` (nearby - own).
Each gap comes with its standard error over the chunks drawn (at 16 book chunks and 512 characters about 0.04
nats: an untrained composite shows "gaps" of that size).

Not a model file: the files that ship in a saved model folder never import this module.
"""

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .haystacks import chunk_runs
from .processing_e2llm import IGNORE_INDEX

# Shorter chunks (a heading, a lone line) say too little to tell own from nearby; small chunk sizes keep those
# of at least a quarter chunk.
MIN_CHUNK_CHARS = 100
# A chunk's nearby chunk is the first of the next NEARBY_SPAN - 1 chunks that makes as many chunk tokens (with one
# chunk token per chunk: the next chunk).
NEARBY_SPAN = 4


@dataclass
class ProbeChunks:
    """Held-out chunk texts, position by position: `own[i]` is restated from itself, `nearby[i]` (a chunk close
    after it in its document) and `other[i]` (a chunk of another document), all three of as many chunk tokens."""

    own: list[str]
    nearby: list[str]
    other: list[str]


def probe_chunks(processor, documents: list[str], count: int, seed: int = 0) -> ProbeChunks:
    """`count` (or fewer, if the documents hold fewer) chunks spread over `documents`, each with a nearby chunk
    and a chunk of another document of as many chunk tokens. Each document's first chunk is left out (the PG
    essays share a banner); a long document (a book) is sampled, never chunked whole (`haystacks.chunk_runs`)."""
    if len(documents) < 2:
        raise ValueError(f"The restatement probe compares chunks of different documents, but its source gave "
                         f"{len(documents)}: name a source with at least two held-out documents.")
    per_document = 2 * -(-count // len(documents))  # twice ceil(count / documents): room for the short ones left out
    min_chars = min(MIN_CHUNK_CHARS, processor.chunk_size // 4)
    pairs = []  # (document index, chunk tokens, chunk text, nearby chunk text)
    for index, text in enumerate(documents):
        rng = random.Random(f"{seed}:{index}")
        for run in chunk_runs(processor, text, NEARBY_SPAN, per_document, rng, skip_first=True):
            texts = [text[start:end] for start, end in run]
            tokens = [_chunk_token_count(processor, t) for t in texts]
            nearby = next((t for t, n in zip(texts[1:], tokens[1:]) if n == tokens[0]), None)
            if nearby is not None and all(len(t.strip()) >= min_chars for t in (texts[0], nearby)):
                pairs.append((index, tokens[0], texts[0], nearby))
    n = len(pairs)
    triples = []  # (document index, chunk text, nearby chunk text, other chunk text)
    for i, (document, tokens, own, nearby) in enumerate(pairs):
        # The chunk half the list away, or the next one after it, from another document and of as many tokens.
        j = next(((i + k) % n for k in range(n // 2, n // 2 + n)
                  if pairs[(i + k) % n][0] != document and pairs[(i + k) % n][1] == tokens), None)
        if j is not None:
            triples.append((document, own, nearby, pairs[j][2]))
    triples = triples[::max(1, len(triples) // count)][:count]  # evenly over the documents
    with_chunks = len({document for document, *_ in triples})
    if with_chunks < 2:
        raise ValueError(f"The restatement probe found chunks (with a nearby chunk, each of {min_chars}+ characters, "
                         f"and a chunk of another document, all of as many chunk tokens) in {with_chunks} of "
                         f"{len(documents)} documents; it needs two: name longer held-out documents.")
    return ProbeChunks(*([triple[part] for triple in triples] for part in (1, 2, 3)))


def _chunk_token_count(processor, text: str) -> int:
    """The chunk tokens `text` makes as a restate context (one per chunk, or more with the compression knob)."""
    return processor.encode_chunks([text], return_tensors=None)["num_chunk_tokens"][0]


@torch.no_grad()
def restatement_probe(model, processor, chunks: ProbeChunks, batch_size: int = 8) -> dict[str, float]:
    """The probe's figures for `model` (an E2LLMForCausalLM, or a peft model around one) in its current mode:
    the three NLLs (nats per target token), the two gaps and their standard errors (`_se`: the gaps are
    differences per chunk, paired, so the errors say which gaps the chunks drawn can tell from zero); see the
    module docstring."""
    own = target_nll(model, processor, chunks.own, chunks.own, batch_size=batch_size)  # (n,)
    nearby = target_nll(model, processor, chunks.nearby, chunks.own, batch_size=batch_size)
    other = target_nll(model, processor, chunks.other, chunks.own, batch_size=batch_size)
    return {"probe_nll_own": own.mean().item(), "probe_nll_nearby": nearby.mean().item(),
            "probe_nll_other": other.mean().item(),
            "probe_gap_nearby": (nearby - own).mean().item(), "probe_gap_other": (other - own).mean().item(),
            "probe_gap_nearby_se": standard_error(nearby - own), "probe_gap_other_se": standard_error(other - own)}


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of (n,) values; nan for fewer than 2 (no spread to measure)."""
    return (values.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan")


def target_nll(model, processor, contexts: list[str], targets: list[str], prompts: list[str] | None = None,
               batch_size: int = 8) -> torch.Tensor:
    """(n,) mean NLL per target token of `targets[i]` after the chunk tokens of `contexts[i]` and `prompts[i]` (a
    question; None: restate the context). No passages are quoted: only the chunk tokens carry the context."""
    device = next(model.parameters()).device
    per_sample = []
    for first in range(0, len(targets), batch_size):
        batch = processor(context=contexts[first:first + batch_size], target=targets[first:first + batch_size],
                          prompt=None if prompts is None else prompts[first:first + batch_size],
                          padding_side="right").to(device)
        labels = batch.pop("labels")[:, 1:]  # (B, T-1): the token each position predicts
        logits = model(**batch, use_cache=False).logits[:, :-1]  # (B, T-1, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        per_sample.append(nll.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1))  # (B,)
    return torch.cat(per_sample).cpu()
