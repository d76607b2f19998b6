"""The training set: understanding and reasoning samples built from a config's sources, then mixed."""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
from pathlib import Path

import datasets
import torch

from modeling_e2llm import E2LLMForCausalLM, E2LLMProcessor
from modeling_e2llm.haystacks import distinct_contexts
from modeling_e2llm.processing_e2llm import pad_sequences

from .config import DataSettings, TaskSettings, TrainConfig
from .samples import ROW_KEYS, build_sample, understanding_samples
from .sources import load_records

logger = logging.getLogger(__name__)


def understanding_dataset(sources: list, processor: E2LLMProcessor, window_chunks: int, max_length: int,
                          seed: int = 0, windows_per_context: int | None = None,
                          num_proc: int = 1, shuffle_words: bool = False) -> datasets.Dataset | None:
    """Restate samples over every distinct context of `sources` (None when there are none), built in `num_proc`
    processes: all its windows, or `windows_per_context` drawn from it (seeded by `seed` and the record's id), so
    that a source of whole books gives a bounded number of samples and is never chunked whole; `shuffle_words`:
    see `samples.understanding_samples`."""
    contexts = [{"id": str(record["id"]), "context": record["context"]}
                for spec in sources for record in distinct_contexts(load_records(spec, seed))]
    build = functools.partial(_understanding_rows, processor, window_chunks, max_length, seed, windows_per_context,
                              shuffle_words)
    return _build_rows(contexts, build, num_proc, "Building restate samples")


def reasoning_dataset(sources: list, processor: E2LLMProcessor, max_length: int, seed: int = 0,
                      hybrid_ratio: float = 0.0, hybrid_top_k: int = 3,
                      model: E2LLMForCausalLM | None = None, num_proc: int = 1) -> datasets.Dataset | None:
    """One question-answer sample per record of `sources` (None when there are none), built in `num_proc`
    processes.

    A random `hybrid_ratio` share of them (seeded) also quote the raw text of their `hybrid_top_k` chunks
    most similar to the question, chosen by `model` as `generate` chooses them (with the weights it has
    now, before training), so the decoder learns to read both views. The model ranks in this process (it
    may sit on a GPU, which forked workers cannot share); the workers only tokenize.
    """
    if hybrid_ratio > 0 and model is None:
        raise ValueError("Hybrid samples (hybrid_ratio > 0) need the model that scores the chunks: pass model=.")
    rng = random.Random(seed)
    records, quoting = [], 0
    for spec in sources:
        for record in load_records(spec, seed):
            if not record["question"].strip():
                raise ValueError(f"Record {record['id']!r} has no question, so it cannot be a reasoning sample; "
                                 "list its source under data.understanding instead.")
            row = {"id": str(record["id"]), "context": record["context"], "question": record["question"],
                   "answer": record["answer"], "passage_chunks": [], "passage_texts": [], "chunks": None}
            if rng.random() < hybrid_ratio:  # chunked once here: to rank, and (passed on) for the sample
                chunks = processor.encode_chunks([record["context"]], return_tensors=None)
                passages = model.hybrid_passages(record["context"], record["question"], processor,
                                                 top_k=hybrid_top_k, chunks=processor.pad_chunks(chunks))
                quoting += bool(passages)
                row.update(passage_chunks=[index for index, _ in passages], passage_texts=[text for _, text in passages],
                           chunks=chunks)
            records.append(row)
    if hybrid_ratio > 0:
        logger.info("Reasoning samples: %d, of which %d quote passages (hybrid).", len(records), quoting)
    build = functools.partial(_reasoning_rows, processor, max_length)
    return _build_rows(records, build, num_proc, "Building question samples")


def _understanding_rows(processor: E2LLMProcessor, window_chunks: int, max_length: int, seed: int,
                        windows_per_context: int | None, shuffle_words: bool, record: dict) -> list[dict]:
    # A string seed hashes the same in every process (unlike hash()), so any num_proc draws the same windows.
    rng = random.Random(f"{seed}:{record['id']}")
    return understanding_samples(processor, record["context"], window_chunks, max_length, name=record["id"],
                                 count=windows_per_context, rng=rng, shuffle_words=shuffle_words)


def _reasoning_rows(processor: E2LLMProcessor, max_length: int, record: dict) -> list[dict]:
    passages = list(zip(record["passage_chunks"], record["passage_texts"]))
    return [build_sample(processor, record["context"], record["question"], record["answer"], max_length,
                         name=f"record {record['id']!r}", passages=passages, chunks=record["chunks"])]


def _build_rows(records: list[dict], build, num_proc: int, desc: str) -> datasets.Dataset | None:
    """The rows `build(record) -> [row, ...]` makes of every record, in record order, over `num_proc`
    processes (datasets.map: contiguous shards, so the order is the same for any count)."""
    if not records:
        return None

    def build_batch(batch: dict) -> dict:
        rows = [row for i in range(len(batch["id"])) for row in build({key: batch[key][i] for key in batch})]
        return {key: [row[key] for row in rows] for key in ROW_KEYS}

    table = datasets.Dataset.from_list(records)
    num_proc = max(1, min(num_proc, len(os.sched_getaffinity(0)), len(records)))
    return table.map(build_batch, batched=True, batch_size=16, num_proc=num_proc if num_proc > 1 else None,
                     remove_columns=table.column_names, desc=desc, load_from_cache_file=False)


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
                                              tasks.windows_per_context, data.num_proc, tasks.shuffle_words)
    reasoning = reasoning_dataset(data.reasoning, processor, max_length, data.seed, tasks.hybrid_ratio,
                                  tasks.hybrid_top_k, model, data.num_proc)
    ratio = tasks.understanding_ratio if reasoning is not None else 1.0
    mixed = mix_tasks(understanding, reasoning, ratio if understanding is not None else 0.0, data.seed,
                      tasks.stopping_strategy)
    logger.info("Training samples: %d understanding, %d reasoning; %d rows in the mix.",
                   len(understanding or []), len(reasoning or []), len(mixed))
    return mixed


@torch.no_grad()
def with_pooled_chunks(dataset: datasets.Dataset, model: E2LLMForCausalLM) -> datasets.Dataset:
    """`dataset` with each row's chunk tokens as the model's (frozen) encoder pools them, before the adapter:
    `chunk_pooled`, (n_chunk_tokens, enc_hidden) per row. With the encoder frozen these never change, so they
    are computed once here, in eval mode (no dropout: a fixed feature extractor), instead of in every step of
    every epoch; the collator then passes them to the model, which runs only the adapter on them."""
    training = model.training
    model.eval()

    def pool(row: dict) -> dict:
        ids = pad_sequences(row["chunk_input_ids"], 0)  # (n_chunks, L); padding is masked out
        mask = pad_sequences(row["chunk_attention_mask"], 0)
        count = int(model.model.count_chunk_tokens(mask))  # on the host, before the mask moves to the model
        ids, mask = ids.to(model.device), mask.to(model.device)
        tokens = model.model.chunk_tokens(model.model.pool_chunks(ids, mask), mask, count)
        return {"chunk_pooled": tokens.float().cpu().numpy()}

    pooled = dataset.map(pool, desc="Pooling chunks with the frozen encoder", load_from_cache_file=False)
    model.train(training)
    return pooled


# What the samples are made by: a change in any of these files rebuilds a cached training set.
_BUILDING_CODE = [Path(__file__).with_name(name) for name in ("dataset.py", "samples.py", "sources.py")] + [
    Path(__file__).resolve().parents[1] / "modeling_e2llm" / name for name in ("haystacks.py", "processing_e2llm.py")]


def sample_cache_key(config: TrainConfig, max_length: int, model: E2LLMForCausalLM | None) -> str:
    """Hash of everything the training set depends on: the data, task, processor and model settings, the
    size and modification time of every file a source names, the sample-building code, the decoder window,
    and (hybrid samples are ranked by it) the model's encoder weights. `data.num_proc` changes nothing."""
    data = {**dataclasses.asdict(config.data), "num_proc": None}
    # Data files by size and time (hashing gigabytes each run would cost more than it saves); the code by its
    # contents, so that a checkout or a copy that leaves it unchanged keeps the cache.
    stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in sorted(set(_paths(data)))
             if os.path.exists(path)]
    code = hashlib.sha256(b"".join(path.read_bytes() for path in _BUILDING_CODE)).hexdigest()
    parts = {"data": data, "tasks": dataclasses.asdict(config.tasks), "processor": dataclasses.asdict(config.processor),
             "model": dataclasses.asdict(config.model), "trainable": dataclasses.asdict(config.trainable),
             "files": stats, "code": code, "max_length": max_length,
             "ranking": model.weights_fingerprint() if config.tasks.hybrid_ratio > 0 else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _paths(value) -> list[str]:
    """Every `path:` value in a (nested) source spec."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in ([str(item)] if key == "path" else _paths(item))]
    if isinstance(value, list):
        return [p for item in value for p in _paths(item)]
    return []
