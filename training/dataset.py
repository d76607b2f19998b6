"""The training set: understanding and reasoning samples built from a config's sources, then mixed."""

import logging
import random

import datasets

from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.haystacks import distinct_contexts

from .config import DataSettings, TaskSettings
from .samples import build_sample, understanding_samples
from .sources import load_records

logger = logging.getLogger(__name__)


def understanding_dataset(sources: list, processor: E2LLMProcessor, window_chunks: int, max_length: int,
                          seed: int = 0, windows_per_context: int | None = None) -> datasets.Dataset | None:
    """Restate samples over every distinct context of `sources` (None when there are none): all its windows, or
    `windows_per_context` drawn from it (seeded by `seed` and the record's id), so that a source of whole
    books gives a bounded number of samples and is never chunked whole."""
    rows = []
    for spec in sources:
        for record in distinct_contexts(load_records(spec, seed)):
            rng = random.Random(f"{seed}:{record['id']}")
            rows += understanding_samples(processor, record["context"], window_chunks, max_length, name=record["id"],
                                          count=windows_per_context, rng=rng)
    return datasets.Dataset.from_list(rows) if rows else None


def reasoning_dataset(sources: list, processor: E2LLMProcessor, max_length: int, seed: int = 0,
                      hybrid_ratio: float = 0.0, hybrid_top_k: int = 3,
                      model: E2LLMForCausalLM | None = None) -> datasets.Dataset | None:
    """One question-answer sample per record of `sources` (None when there are none).

    A random `hybrid_ratio` share of them (seeded) also quote the raw text of their `hybrid_top_k` chunks
    most similar to the question, chosen by `model` as `generate` chooses them (with the weights it has
    now, before training), so the decoder learns to read both views.
    """
    if hybrid_ratio > 0 and model is None:
        raise ValueError("Hybrid samples (hybrid_ratio > 0) need the model that scores the chunks: pass model=.")
    rng = random.Random(seed)
    rows, quoting = [], 0
    for spec in sources:
        for record in load_records(spec, seed):
            if not record["question"].strip():
                raise ValueError(f"Record {record['id']!r} has no question, so it cannot be a reasoning sample; "
                                 "list its source under data.understanding instead.")
            passages = ()
            if rng.random() < hybrid_ratio:
                passages = model.hybrid_passages(record["context"], record["question"], processor, top_k=hybrid_top_k)
                quoting += bool(passages)
            rows.append(build_sample(processor, record["context"], record["question"], record["answer"],
                                     max_length, name=f"record {record['id']!r}", passages=passages))
    if hybrid_ratio > 0:
        logger.info("Reasoning samples: %d, of which %d quote passages (hybrid).", len(rows), quoting)
    return datasets.Dataset.from_list(rows) if rows else None


def mix_tasks(understanding: datasets.Dataset | None, reasoning: datasets.Dataset | None,
              understanding_ratio: float, seed: int = 0,
              stopping_strategy: str = "all_exhausted") -> datasets.Dataset:
    """Interleave the two sample kinds so that `understanding_ratio` of the rows are understanding rows."""
    parts = [(ds, p) for ds, p in ((understanding, understanding_ratio), (reasoning, 1.0 - understanding_ratio))
             if ds is not None and p > 0]
    if not parts:
        raise ValueError("No training samples: the sources gave none, or understanding_ratio leaves out the only task.")
    if len(parts) == 1:
        return parts[0][0].shuffle(seed=seed)
    return datasets.interleave_datasets([ds for ds, _ in parts], probabilities=[p for _, p in parts], seed=seed,
                                        stopping_strategy=stopping_strategy)


def training_dataset(data: DataSettings, tasks: TaskSettings, processor: E2LLMProcessor, max_length: int,
                     model: E2LLMForCausalLM | None = None) -> datasets.Dataset:
    """The mixed training set a config describes (`model` scores the chunks of hybrid samples); logs how
    many samples of each kind it holds."""
    understanding = None
    if tasks.understanding:
        understanding = understanding_dataset(data.understanding, processor, tasks.window_chunks, max_length, data.seed,
                                              tasks.windows_per_context)
    reasoning = reasoning_dataset(data.reasoning, processor, max_length, data.seed, tasks.hybrid_ratio,
                                  tasks.hybrid_top_k, model)
    ratio = tasks.understanding_ratio if reasoning is not None else 1.0
    mixed = mix_tasks(understanding, reasoning, ratio if understanding is not None else 0.0, data.seed,
                      tasks.stopping_strategy)
    logger.info("Training samples: %d understanding, %d reasoning; %d rows in the mix.",
                   len(understanding or []), len(reasoning or []), len(mixed))
    return mixed
