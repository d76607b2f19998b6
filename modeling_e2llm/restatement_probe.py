"""Does a model read its chunk tokens? The restatement probe, shared by training's callback
(`training.probe`) and evaluation's command (`python -m evaluation.demo chunk-stats`), which never import each
other.

For held-out chunks, the restate NLL (nats per target token, averaged over chunks) of each chunk's text
- from its own chunk token (`probe_nll_own`),
- from the chunk token of the next chunk of the same document (`probe_nll_nearby`: same topic and style,
  other details),
- from the chunk token of a chunk of another document (`probe_nll_other`: another topic).
A decoder that ignores its chunk tokens scores all three alike, however low its LM prior takes them; the topic
alone opens `probe_gap_other` (other - own), only the chunk's own detail opens `probe_gap_nearby` (nearby - own).

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


@dataclass
class ProbeChunks:
    """Held-out chunk texts, position by position: `own[i]` is restated from itself, `nearby[i]` (the next chunk
    of its document) and `other[i]` (a chunk of another document)."""

    own: list[str]
    nearby: list[str]
    other: list[str]


def probe_chunks(processor, documents: list[str], count: int, seed: int = 0) -> ProbeChunks:
    """`count` (or fewer, if the documents hold fewer) chunks spread over `documents`, each with its next chunk
    and a chunk of another document. Each document's first chunk is left out (the PG essays share a banner);
    a long document (a book) is sampled, never chunked whole (`haystacks.chunk_runs`)."""
    if len(documents) < 2:
        raise ValueError(f"The restatement probe compares chunks of different documents, but its source gave "
                         f"{len(documents)}: name a source with at least two held-out documents.")
    per_document = 2 * -(-count // len(documents))  # twice ceil(count / documents): room for the short ones left out
    min_chars = min(MIN_CHUNK_CHARS, processor.chunk_size // 4)
    pairs = []  # (document index, chunk text, next chunk text)
    for index, text in enumerate(documents):
        rng = random.Random(f"{seed}:{index}")
        for run in chunk_runs(processor, text, 2, per_document, rng, skip_first=True):
            texts = [text[start:end] for start, end in run]
            if len(texts) == 2 and all(len(t.strip()) >= min_chars for t in texts):
                pairs.append((index, *texts))
    pairs = pairs[::max(1, len(pairs) // count)][:count]  # evenly over the documents
    n = len(pairs)
    with_chunks = len({document for document, _, _ in pairs})
    if with_chunks < 2:
        raise ValueError(f"The restatement probe found chunks (with a next chunk, each of {min_chars}+ characters) "
                         f"in {with_chunks} of {len(documents)} documents; it needs two: name longer held-out documents.")
    other = []
    for i, (document, _, _) in enumerate(pairs):
        # The chunk half the list away, or the next one after it from another document.
        j = next((i + k) % n for k in range(n // 2, n // 2 + n) if pairs[(i + k) % n][0] != document)
        other.append(pairs[j][1])
    return ProbeChunks(own=[p[1] for p in pairs], nearby=[p[2] for p in pairs], other=other)


@torch.no_grad()
def restatement_probe(model, processor, chunks: ProbeChunks, batch_size: int = 8) -> dict[str, float]:
    """The probe's figures for `model` (an E2LLMForCausalLM, or a peft model around one) in its current mode:
    the three NLLs (nats per target token) and the two gaps; see the module docstring."""
    own = _restate_nll(model, processor, chunks.own, chunks.own, batch_size).mean().item()
    nearby = _restate_nll(model, processor, chunks.nearby, chunks.own, batch_size).mean().item()
    other = _restate_nll(model, processor, chunks.other, chunks.own, batch_size).mean().item()
    return {"probe_nll_own": own, "probe_nll_nearby": nearby, "probe_nll_other": other,
            "probe_gap_nearby": nearby - own, "probe_gap_other": other - own}


def _restate_nll(model, processor, contexts: list[str], targets: list[str], batch_size: int) -> torch.Tensor:
    """(n,) mean NLL per target token of restating `targets[i]` from the chunk tokens of `contexts[i]`."""
    device = next(model.parameters()).device
    per_sample = []
    for first in range(0, len(targets), batch_size):
        batch = processor(context=contexts[first:first + batch_size], target=targets[first:first + batch_size],
                          padding_side="right").to(device)
        labels = batch.pop("labels")[:, 1:]  # (B, T-1): the token each position predicts
        logits = model(**batch, use_cache=False).logits[:, :-1]  # (B, T-1, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        per_sample.append(nll.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1))  # (B,)
    return torch.cat(per_sample).cpu()
