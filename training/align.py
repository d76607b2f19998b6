"""A first stage that fits the untrained adapter to the decoder's own input embeddings (config section `align`).

Why (issue 18, `training/demo_attempts.md`): from a random adapter, chunk tokens start far from any input the
decoder knows; the decoder lowers the restatement loss with its language-model prior alone and the adapter drifts to
vectors it can ignore (held-out gap between a chunk's own chunk tokens and a nearby chunk's: +0.005 nats after 80
steps, 0.003 in demo v2). Fitted first, each chunk token is close to the mean input embedding of the decoder tokens
of the text it covers, a blurred copy of that text the untrained decoder already reads (gap +0.685 at step 0), and
training keeps it read when the adapter then learns slower than LoRA (+0.406 after 240 steps at k = 4).

The fit: for chunks of the `align.source` documents (training side), pair each pooled chunk-token input (what the
adapter maps: the mean of `encoder_tokens_per_chunk_token` encoder token states, or of a whole chunk) with the mean
decoder input embedding of the decoder tokens whose first non-space character lies in the characters those encoder
tokens cover; regress the adapter onto the pairs (MSE, Adam). Encoder and decoder stay untouched.
"""

import logging
import random

import torch
import torch.nn.functional as F

from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.haystacks import understanding_windows

from .config import AlignSettings
from .sources import source_documents

logger = logging.getLogger(__name__)
ENCODER_BATCH = 16  # chunks per encoder pass while pairing


def alignment_chunks(processor: E2LLMProcessor, documents: list[str], count: int, seed: int) -> list[str]:
    """About `count` chunk texts spread evenly over `documents`, each document's first chunk left out (the PG essays
    all open with one banner)."""
    rng, per_document = random.Random(seed), count // len(documents) + 1
    texts = [text for document in documents
             for text in understanding_windows(processor, document, 1, per_document, rng, skip_first=True)]
    return texts[:count]


@torch.no_grad()
def regression_pairs(model: E2LLMForCausalLM, processor: E2LLMProcessor,
                     texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, enc_hidden) adapter inputs of the chunk tokens of `texts` and (n, dec_hidden) their targets, on the
    model's device; a chunk token whose characters start no decoder token is left out."""
    embeddings = model.get_input_embeddings().weight  # (V, dec_hidden)
    k = model.config.encoder_tokens_per_chunk_token
    inputs, targets = [], []
    for first in range(0, len(texts), ENCODER_BATCH):
        batch = texts[first:first + ENCODER_BATCH]
        encoded = processor.encoder_tokenizer(batch, return_offsets_mapping=True, padding=True, return_tensors="pt")
        pooled = model.model.pool_chunks(encoded["input_ids"].to(embeddings.device),
                                         encoded["attention_mask"].to(embeddings.device))  # (b, S, enc) or (b, enc)
        pooled = pooled if k else pooled[:, None]  # one vector per chunk: one segment of the chunk's length
        for row, text in enumerate(batch):
            decoded = processor.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
            starts = [a + len(text[a:z]) - len(text[a:z].lstrip()) for a, z in decoded["offset_mapping"]]
            length = int(encoded["attention_mask"][row].sum())
            size = k or length  # encoder tokens a chunk token pools
            for segment in range(pooled.shape[1]):
                offsets = encoded["offset_mapping"][row, segment * size:min(length, (segment + 1) * size)]
                spans = [(a, z) for a, z in offsets.tolist() if z > a]  # [CLS], [SEP] and padding cover no text
                ids = [i for i, s in zip(decoded["input_ids"], starts) if spans and spans[0][0] <= s < spans[-1][1]]
                if ids:
                    inputs.append(pooled[row, segment])
                    targets.append(embeddings[ids].mean(dim=0))
    return torch.stack(inputs), torch.stack(targets)


def fit_adapter(adapter: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, settings: AlignSettings,
                seed: int) -> float:
    """Regress `adapter` onto the pairs (a tenth held back); returns the mean cosine to the held-back targets."""
    generator = torch.Generator().manual_seed(seed)  # its own draws: the fit is the same whatever ran before it
    order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
    train, held = order[:int(0.9 * len(order))], order[int(0.9 * len(order)):]
    adapter.requires_grad_(True)  # which weights train afterwards is peft's to set, when it wraps the model
    optimizer = torch.optim.Adam(adapter.parameters(), lr=settings.learning_rate)
    for _ in range(settings.steps):
        batch = train[torch.randint(0, len(train), (settings.batch_size,), generator=generator).to(inputs.device)]
        loss = F.mse_loss(adapter(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return F.cosine_similarity(adapter(inputs[held]), targets[held]).mean().item()


def align_adapter(model: E2LLMForCausalLM, processor: E2LLMProcessor, settings: AlignSettings, seed: int) -> float:
    """Fit `model`'s adapter as `settings` say (before LoRA wraps the model); returns the held-back cosine."""
    documents = source_documents(settings.source, seed)
    texts = alignment_chunks(processor, documents, settings.chunks, seed)
    was_training = model.training
    model.eval()  # no dropout in the encoder states the pairs are made of
    try:
        inputs, targets = regression_pairs(model, processor, texts)
        cosine = fit_adapter(model.model.adapter, inputs, targets, settings, seed)
    finally:
        model.train(was_training)
    logger.info("Adapter fitted to the decoder's input embeddings: %d chunk tokens of %d chunks from %d documents, "
                "held-back cosine %.3f.", len(inputs), len(texts), len(documents), cosine)
    return cosine
