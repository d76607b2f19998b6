"""Specification of E2LLM training: samples, data sources, config, the two-task trainer and the CLI."""

import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback, set_seed

from conftest import HostReads
from modeling_e2llm import modeling_e2llm
from modeling_e2llm.embedded_default import default_decoder_path
from modeling_e2llm.haystacks import holdout_side, understanding_windows
from modeling_e2llm.loading import load_model
from modeling_e2llm.processing_e2llm import pad_sequences

from training.config import TrainConfig
from training.dataset import mix_tasks, reasoning_dataset, sample_cache_key, understanding_dataset
from training.samples import IGNORE_INDEX, TASKS, ContextTooLongError, E2LLMCollator, build_sample, \
    understanding_samples
from modeling_e2llm.haystacks import EVALUATION_NEEDLES, TRAINING_NEEDLES
from training.sources import babi_haystack, load_records, magic_number_haystack, pool_needle_haystack
from training.train import _CHECKPOINTING, build_trainer, train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


# --- helpers -----------------------------------------------------------------------------------------
def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def qa_records(essay_text: str, count: int = 6) -> list[dict]:
    """Short contexts cut from the essay, each with a one-word answer taken from its own text."""
    records = []
    for i in range(count):
        context = essay_text[1000 + 400 * i: 1400 + 400 * i]
        records.append({"id": f"r{i}", "context": context, "question": "Which word comes first?",
                        "answer": context.split()[0]})
    return records


def tiny_config(tiny_paths, tmp_path: Path, essay_text: str, encoder: str | None = None, records: int = 6,
                **sections) -> TrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data_file = write_jsonl(tmp_path / "data.jsonl", qa_records(essay_text, records))
    raw = {
        "model": {"encoder": encoder or tiny_paths[0], "decoder": tiny_paths[1]},
        "processor": {"chunk_size": 64},
        "tasks": {"understanding_ratio": 0.5, "window_chunks": 2},
        "data": {"understanding": [{"path": data_file}], "reasoning": [{"path": data_file}]},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "per_device_train_batch_size": 2,
                     "learning_rate": 1e-3, "logging_steps": 1, "save_steps": 2, "disable_tqdm": True},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return TrainConfig.from_dict(raw)


def dropout_free_encoder(tiny_paths, folder: Path) -> str:
    """A copy of the tiny encoder without dropout, so runs on different process counts see the same function."""
    shutil.copytree(tiny_paths[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def sharp_decoder(tmp_path_factory) -> str:
    """The tiny decoder with embeddings large enough for confident logits: the frozen tied LM head of the
    conftest decoder (std 0.02, 48 dims) caps any logit near 1, so no training could overfit through it."""
    folder = tmp_path_factory.mktemp("sharp") / "decoder"
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=49152, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=96, max_position_embeddings=2048,
                         tie_word_embeddings=True, initializer_range=0.3, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_decoder_path()).save_pretrained(folder)
    return str(folder)


def trained_weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


# --- sample builders ---------------------------------------------------------------------------------
def test_understanding_windows_restate_the_context_exactly_once(tiny_processor, essay_text):
    windows = understanding_windows(tiny_processor, essay_text, window_chunks=4)
    assert "".join(windows) == essay_text
    assert len(windows) == -(-len(tiny_processor.chunk(essay_text)) // 4)
    assert all(1 <= len(tiny_processor.chunk(w)) <= 4 for w in windows)  # a window is chunked again on its own


def test_overlapping_chunks_give_windows_that_share_only_the_overlap(tiny_paths, essay_text):
    from modeling_e2llm import E2LLMProcessor

    processor = E2LLMProcessor.from_encoder_decoder_pretrained(*tiny_paths, chunk_size=64, chunk_overlap=0.3)
    text = essay_text[:3000]
    spans = processor.chunk(text)
    windows = understanding_windows(processor, text, window_chunks=3)
    assert len(windows) == -(-len(spans) // 3)  # every chunk in exactly one window
    stitched, position = "", 0
    for window in windows:
        start = text.index(window, max(0, position - processor.chunk_size))
        assert start <= position  # windows leave no gap...
        stitched += text[position:start + len(window)]
        position = start + len(window)
    assert stitched == text  # ...and the overlap is restated once per window boundary, not per chunk


def test_understanding_sample_labels_only_the_window_text(tiny_processor, essay_text):
    sample = understanding_samples(tiny_processor, essay_text[:600], window_chunks=3)[0]
    window = understanding_windows(tiny_processor, essay_text[:600], window_chunks=3)[0]
    targets = [t for t in sample["labels"] if t != IGNORE_INDEX]
    assert tiny_processor.tokenizer.decode(targets[:-1]) == window
    assert targets[-1] == tiny_processor.tokenizer.eos_token_id
    first_target = sample["labels"].index(targets[0])
    assert sample["input_ids"][first_target:] == targets  # the target follows the prompt
    placeholders = sample["input_ids"][:first_target].count(tiny_processor.chunk_token_id)
    assert placeholders == len(sample["chunk_input_ids"]) == 3
    assert sample["task"] == "understanding"


def test_shuffled_restatement_restates_the_window_words_in_another_order_from_those_words(tiny_processor, essay_text):
    window = understanding_windows(tiny_processor, essay_text[:600], window_chunks=3)[0]
    sample = understanding_samples(tiny_processor, essay_text[:600], window_chunks=3, shuffle_words=True)[0]
    target = tiny_processor.tokenizer.decode([t for t in sample["labels"] if t != IGNORE_INDEX][:-1])
    assert sorted(target.split()) == sorted(window.split()) and target.split() != window.split()
    encoded = tiny_processor.encoder_tokenizer.decode(
        [t for chunk in sample["chunk_input_ids"] for t in chunk], skip_special_tokens=True)
    assert encoded.split() == tiny_processor.encoder_tokenizer.decode(
        tiny_processor.encoder_tokenizer(target, add_special_tokens=False)["input_ids"]).split()  # encoded as restated


def test_reasoning_sample_labels_only_the_answer(tiny_processor, essay_text):
    sample = build_sample(tiny_processor, essay_text[:2000], "Who wrote this?", "Paul Graham")
    targets = [t for t in sample["labels"] if t != IGNORE_INDEX]
    assert tiny_processor.tokenizer.decode(targets) == "Paul Graham" + tiny_processor.tokenizer.eos_token
    assert sum(t != IGNORE_INDEX for t in sample["labels"]) == len(targets)
    assert sample["input_ids"].count(tiny_processor.chunk_token_id) == len(tiny_processor.chunk(essay_text[:2000]))
    assert sample["task"] == "reasoning"


def test_hybrid_sample_quotes_its_passages_before_the_question_and_labels_only_the_answer(tiny_model,
                                                                                       tiny_processor, essay_text):
    context = essay_text[:2000]
    passages = tiny_model.hybrid_passages(context, "Who wrote this?", tiny_processor, top_k=2)
    sample = build_sample(tiny_processor, context, "Who wrote this?", "Paul Graham", passages=passages)
    prompt = tiny_processor.tokenizer.decode([t for t, label in zip(sample["input_ids"], sample["labels"])
                                              if label == IGNORE_INDEX])
    assert len(passages) == 2
    assert all(prompt.index(text) < prompt.index("Who wrote this?") for _, text in passages)
    targets = [t for t in sample["labels"] if t != IGNORE_INDEX]
    assert tiny_processor.tokenizer.decode(targets) == "Paul Graham" + tiny_processor.tokenizer.eos_token


@pytest.mark.parametrize("ratio, quoting", [(0.0, 0), (1.0, 4)])
def test_hybrid_ratio_sets_how_many_reasoning_samples_quote_passages(tiny_model, tiny_processor, tmp_path,
                                                                    essay_text, ratio, quoting):
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(essay_text, 4))
    rows = reasoning_dataset([{"path": path}], tiny_processor, max_length=2048, hybrid_ratio=ratio, hybrid_top_k=1,
                             model=tiny_model)
    plain = reasoning_dataset([{"path": path}], tiny_processor, max_length=2048)
    assert sum(len(a) > len(b) for a, b in zip(rows["input_ids"], plain["input_ids"])) == quoting


def test_hybrid_samples_chunk_each_context_once_and_run_only_the_encoder_that_ranks(tiny_model, tiny_processor,
                                                                                     tmp_path, essay_text, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(essay_text, 3))
    chunked, adapted = [], []
    tokenized_chunks = tiny_processor._tokenized_chunks
    monkeypatch.setattr(tiny_processor, "_tokenized_chunks", lambda text: chunked.append(text) or tokenized_chunks(text))
    tiny_model.model.adapter.register_forward_hook(lambda *args: adapted.append(1))
    rows = reasoning_dataset([{"path": path}], tiny_processor, max_length=2048, hybrid_ratio=1.0, hybrid_top_k=1,
                             model=tiny_model)
    assert len(rows) == 3
    assert len(chunked) == 3  # not once to rank and again to build the sample
    assert not adapted  # ranking needs no chunk tokens


def test_a_context_longer_than_the_decoder_window_is_refused_by_name(tiny_processor, essay_text):
    with pytest.raises(ContextTooLongError, match="record 'long'.*decoder window of 100"):
        build_sample(tiny_processor, essay_text, "Q?", "A", max_length=100, name="record 'long'")


def test_collator_pads_rows_right_and_stacks_chunks_in_sample_order(tiny_processor, essay_text):
    rows = [build_sample(tiny_processor, essay_text[:300], "Q?", "A"),
            understanding_samples(tiny_processor, essay_text[:900], window_chunks=4)[0]]
    batch = E2LLMCollator(pad_token_id=tiny_processor.tokenizer.pad_token_id)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    short = min(range(2), key=lambda i: len(rows[i]["input_ids"]))
    assert batch["attention_mask"][short].tolist() == [1] * len(rows[short]["input_ids"]) + \
        [0] * (width - len(rows[short]["input_ids"]))
    assert (batch["labels"][short, len(rows[short]["labels"]):] == IGNORE_INDEX).all()
    chunks = rows[0]["chunk_input_ids"] + rows[1]["chunk_input_ids"]
    assert [row[:n].tolist() for row, n in zip(batch["chunk_input_ids"], batch["chunk_attention_mask"].sum(1))] == chunks
    assert batch["task"].tolist() == [TASKS.index("reasoning"), TASKS.index("understanding")]


# --- data sources and mix ----------------------------------------------------------------------------
def test_records_come_from_jsonl_or_a_datasets_dataset_with_the_same_fields(tmp_path, essay_text):
    import datasets

    records = qa_records(essay_text, 3)
    from_file = load_records({"path": write_jsonl(tmp_path / "d.jsonl", records)})
    from_dataset = load_records(datasets.Dataset.from_list(records))
    assert sorted(r["id"] for r in from_file) == sorted(r["id"] for r in from_dataset) == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \['answer'\]"):
        load_records({"path": write_jsonl(tmp_path / "bad.jsonl", [{"context": "c", "question": "q"}])})


def test_holdout_split_is_disjoint_complete_and_stable():
    records = [{"id": f"doc{i}"} for i in range(400)]
    train = [r["id"] for r in records if holdout_side(r, by=["id"], percent=25)]
    dev = [r["id"] for r in records if holdout_side(r, by=["id"], percent=25, side="dev")]
    assert not set(train) & set(dev) and len(train) + len(dev) == 400
    assert 60 < len(dev) < 140
    assert dev == [r["id"] for r in records if holdout_side(r, by=["id"], percent=25, side="dev")]


def test_babi_haystack_keeps_every_fact_in_order_inside_the_background():
    essays = {"path": str(DATA / "pg_essays" / "essays.jsonl")}
    records = babi_haystack(str(DATA / "babi" / "qa1-5_train.jsonl"), haystack=essays, haystack_chars=[3000, 4000],
                            where={"meta.babi_task": "qa2"}, limit=5)
    originals = {r["id"]: r for r in load_records({"path": str(DATA / "babi" / "qa1-5_train.jsonl"),
                                                   "where": {"meta.babi_task": "qa2"}})}
    for record in records:
        facts = originals[record["id"].removesuffix("_haystack")]["context"].split("\n")
        position = 0
        for fact in facts:  # each fact found after the previous one (a fact may repeat)
            position = record["context"].index(fact, position) + len(fact)
        assert len(record["context"]) >= 3000 + sum(len(f) for f in facts)


def test_magic_number_answer_is_the_seven_digit_number_hidden_in_the_context():
    essays = {"path": str(DATA / "pg_essays" / "essays.jsonl")}
    for record in magic_number_haystack(essays, haystack_chars=[2000, 3000], count=4, seed=5):
        assert len(record["answer"]) == 7 and record["answer"].isdigit()
        assert record["context"].count(record["answer"]) == 1


def test_several_magic_numbers_are_answered_as_a_list_in_text_order():
    essays = {"path": str(DATA / "pg_essays" / "essays.jsonl")}
    records = magic_number_haystack(essays, haystack_chars=[2000, 3000], count=6, seed=5, needles=[2, 4])
    for record in records:
        numbers = record["answer"].split(", ")
        assert 2 <= len(numbers) <= 4 and all(len(n) == 7 and n.isdigit() for n in numbers)
        positions = [record["context"].index(n) for n in numbers]
        assert positions == sorted(positions)
        assert "List all of them" in record["question"]


def test_pool_needles_come_from_the_training_pool_and_every_item_asked_is_answered():
    essays = {"path": str(DATA / "pg_essays" / "essays.jsonl")}
    for record in pool_needle_haystack(essays, haystack_chars=[2000, 3000], count=8, seed=5, needles=[1, 3]):
        items = record["answer"].split(", ")
        asked = [t for t in TRAINING_NEEDLES if t.question in record["question"]]
        assert 1 <= len(items) <= 3 and len(asked) == len(items)
        assert all(any(t.sentence.format(item=item) in record["context"] for t in asked) for item in items)
        assert not any(t.question in record["question"] for t in EVALUATION_NEEDLES)


def test_mix_holds_the_configured_share_of_understanding_rows():
    import datasets

    understanding = datasets.Dataset.from_list([{"task": "understanding", "i": i} for i in range(300)])
    reasoning = datasets.Dataset.from_list([{"task": "reasoning", "i": i} for i in range(100)])
    mixed = mix_tasks(understanding, reasoning, understanding_ratio=0.25, seed=0, stopping_strategy="first_exhausted")
    share = sum(t == "understanding" for t in mixed["task"]) / len(mixed)
    assert 0.15 < share < 0.35
    assert set(mix_tasks(understanding, reasoning, understanding_ratio=0.0)["task"]) == {"reasoning"}


def test_understanding_and_reasoning_datasets_come_from_the_same_records(tiny_processor, tmp_path, essay_text):
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(essay_text, 3) + qa_records(essay_text, 3)[:1])
    understanding = understanding_dataset([{"path": path}], tiny_processor, window_chunks=2, max_length=2048)
    reasoning = reasoning_dataset([{"path": path}], tiny_processor, max_length=2048)
    assert len(reasoning) == 4  # one per question
    windows = sum(len(understanding_windows(tiny_processor, r["context"], 2)) for r in qa_records(essay_text, 3))
    assert len(understanding) == windows  # one restate pass per distinct context


def book_slice(tmp_path: Path, books: int = 2) -> tuple[str, list[str]]:
    """The first `books` books of ../shared/data/books (about 120,000 characters and more each), as a JSONL
    source, and their texts."""
    with open(DATA / "books" / "books.jsonl") as f:
        records = [json.loads(next(f)) for _ in range(books)]
    return write_jsonl(tmp_path / "books.jsonl", records), [r["context"] for r in records]


def test_drawn_windows_are_disjoint_in_order_and_never_chunk_a_book_whole(tiny_processor, tmp_path, monkeypatch):
    _, (book, _) = book_slice(tmp_path)
    chunked = []
    chunk = type(tiny_processor).chunk
    monkeypatch.setattr(type(tiny_processor), "chunk", lambda self, text: chunked.append(len(text)) or chunk(self, text))
    windows = understanding_windows(tiny_processor, book, window_chunks=3, count=10, rng=random.Random(0))
    starts = [book.index(window) for window in windows]
    assert len(windows) == 10 and starts == sorted(starts)
    assert all(end <= start for end, start in zip([s + len(w) for s, w in zip(starts, windows)], starts[1:]))
    assert max(chunked) == (3 + 2) * tiny_processor.chunk_size  # a slice around each window, never the book
    assert all(len(tiny_processor.chunk(window)) == 3 for window in windows)


def test_windows_per_context_bounds_the_restate_samples_of_each_book(tiny_processor, tmp_path):
    path, books = book_slice(tmp_path)
    dataset = understanding_dataset([{"path": path}], tiny_processor, window_chunks=2, max_length=2048,
                                    windows_per_context=4)
    assert len(dataset) == 4 * len(books)
    again = understanding_dataset([{"path": path}], tiny_processor, window_chunks=2, max_length=2048,
                                  windows_per_context=4)
    assert dataset["labels"] == again["labels"]  # seeded: the same windows every time


def test_windows_per_context_draws_among_the_windows_of_a_short_context(tiny_processor, essay_text):
    text = essay_text[:2000]
    every = understanding_windows(tiny_processor, text, window_chunks=2)
    drawn = understanding_windows(tiny_processor, text, window_chunks=2, count=5, rng=random.Random(0))
    assert len(drawn) == 5 and set(drawn) <= set(every)


# --- config ------------------------------------------------------------------------------------------
def test_config_names_unknown_keys_and_impossible_ablations(tiny_paths, tmp_path, essay_text):
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['understnading'\] in config.tasks"):
        TrainConfig.from_dict({"tasks": {"understnading": False}, "data": {"reasoning": [{}]}})
    with pytest.raises(ValueError, match="hybrid_top_k >= 1"):
        tiny_config(tiny_paths, tmp_path, essay_text, tasks={"hybrid_ratio": 0.5, "hybrid_top_k": 0})


def test_samples_built_in_several_processes_equal_those_built_in_one(tiny_processor, tmp_path, essay_text):
    source = [{"path": write_jsonl(tmp_path / "data.jsonl", qa_records(essay_text))}]
    one = understanding_dataset(source, tiny_processor, window_chunks=2, max_length=2048, num_proc=1)
    two = understanding_dataset(source, tiny_processor, window_chunks=2, max_length=2048, num_proc=2)
    assert len(one) > 6 and one.to_list() == two.to_list()


def test_a_repeated_run_loads_its_samples_instead_of_building_them(tiny_paths, tmp_path, essay_text, monkeypatch):
    config = tiny_config(tiny_paths, tmp_path, essay_text)
    first = build_trainer(config).train_dataset
    monkeypatch.setattr("training.train.training_dataset", lambda *args: pytest.fail("samples built again"))
    assert build_trainer(config).train_dataset.to_list() == first.to_list()


def test_a_changed_source_or_setting_changes_the_sample_cache_key(tiny_paths, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text)
    key = sample_cache_key(config, 2048, model=None)
    config.data.num_proc = 4
    assert sample_cache_key(config, 2048, model=None) == key  # how it is built, not what
    config.tasks.window_chunks = 3
    assert sample_cache_key(config, 2048, model=None) != key
    config.tasks.window_chunks = 2
    write_jsonl(tmp_path / "data.jsonl", qa_records(essay_text, 5))
    assert sample_cache_key(config, 2048, model=None) != key


# --- trainer -----------------------------------------------------------------------------------------
def test_trainer_overfits_a_tiny_dataset(tiny_paths, sharp_decoder, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text, records=2, model={"decoder": sharp_decoder},
                         tasks={"understanding": False},
                         training={"max_steps": 20, "learning_rate": 3e-2, "per_device_train_batch_size": 2,
                                   "save_strategy": "no"})
    losses = [e["loss"] for e in train(config).state.log_history if "loss" in e]
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0]


def test_num_tokens_counts_the_decoder_input_tokens_trained_on(tiny_paths, tmp_path, essay_text):
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, records=2, training={
        "save_strategy": "no", "per_device_train_batch_size": 1}))
    trainer.args.max_steps = len(trainer.train_dataset)  # one epoch: every row once
    trainer.train()
    counted = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    assert counted[-1] == sum(len(row) for row in trainer.train_dataset["input_ids"])


def test_understanding_weight_scales_only_understanding_tokens(tiny_paths, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text)
    trainer = build_trainer(config)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator([next(r for r in rows if r["task"] == t) for t in ("understanding", "reasoning")])
    trainer.model.eval()
    losses = {}
    for weight in (0.0, 1.0):
        trainer.understanding_weight = weight
        with torch.no_grad():
            losses[weight] = trainer.compute_loss(trainer.model, dict(batch)).item()
    totals = trainer._task_totals["eval"].tolist()  # [task][nll, tokens], summed over both calls
    nll, tokens = [task_nll / 2 for task_nll, _ in totals], sum(task_tokens / 2 for _, task_tokens in totals)
    und, rea = TASKS.index("understanding"), TASKS.index("reasoning")
    assert losses[0.0] == pytest.approx(nll[rea] / tokens, rel=1e-4)
    assert losses[1.0] == pytest.approx((nll[rea] + nll[und]) / tokens, rel=1e-4)


def test_the_loss_sums_bf16_log_probs_in_fp32(tiny_paths, tmp_path, essay_text):
    # Under bf16 autocast on a GPU the fused LM head returns bf16 log-probs; a bf16 sum of 600 of them keeps
    # about 3 significant digits, so the loss would differ from the logged per-task losses by ~1e-3.
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text))
    log_probs = -torch.linspace(0.5, 3.0, 600, dtype=torch.float64).reshape(2, 300)  # (B, T)
    outputs = SimpleNamespace(log_probs=log_probs.to(torch.bfloat16), label_mask=torch.ones(2, 300, dtype=torch.bool),
                              entropy=torch.zeros(2, 300), is_top1=torch.zeros(2, 300, dtype=torch.bool))
    inputs = {"task": torch.tensor([0, 0]), "attention_mask": torch.ones(2, 300, dtype=torch.long)}  # as collated
    loss = trainer.compute_loss(lambda **inputs: outputs, inputs)
    exact = -log_probs.to(torch.bfloat16).double().sum() / 600
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)


class StopAt(TrainerCallback):
    """Ends training after `step`, as a kill right after that step's checkpoint would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_adapter_learning_rate_applies_to_the_adapter_alone(tiny_paths, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text)
    config.adapter_learning_rate = 0.05
    trainer = build_trainer(config)
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    trained = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert {rate[id(p)] for name, p in trained.items() if ".adapter." in name} == {0.05}
    assert {rate[id(p)] for name, p in trained.items() if ".adapter." not in name} == {1e-3}
    assert len(rate) == len(trained)  # every trained parameter is in exactly one group


@pytest.mark.parametrize("option", [{"loss_type": "dft"}, {"packing": True}, {"label_smoothing_factor": 0.1},
                                    {"max_length": 512}])
def test_sft_options_the_loss_does_not_implement_are_refused_by_name(tiny_paths, tmp_path, essay_text, option):
    with pytest.raises(ValueError, match=f"E2LLMTrainer does not implement {next(iter(option))}: "):
        build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, training=option))


def test_resume_after_a_kill_gives_the_same_weights_as_an_uninterrupted_run(tiny_paths, tmp_path, essay_text):
    whole = trained_weights(train(tiny_config(tiny_paths, tmp_path / "a", essay_text)))
    interrupted = build_trainer(tiny_config(tiny_paths, tmp_path / "b", essay_text))
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert (tmp_path / "b" / "run" / "checkpoint-2").is_dir() and interrupted.state.global_step == 2
    resumed_trainer = train(tiny_config(tiny_paths, tmp_path / "b", essay_text), resume=True)
    resumed = trained_weights(resumed_trainer)
    summary = resumed_trainer.state.log_history[-1]  # rated by the 2 steps the resumed run took, not all 4
    assert summary["train_steps_per_second"] == pytest.approx(2 / summary["train_runtime"], rel=0.01, abs=1e-3)
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=1e-6, msg=name)


def test_a_spent_time_budget_stops_training_with_a_checkpoint(tiny_paths, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text, training={"max_steps": 50, "save_steps": 100})
    config.max_minutes = 0.0
    trainer = train(config)
    assert trainer.state.global_step == 1
    assert (tmp_path / "run" / "checkpoint-1").is_dir() and (tmp_path / "run" / "final" / "demo.json").is_file()
    summary = trainer.state.log_history[-1]  # rated by the one step it ran, not the 50 it was allowed
    assert summary["train_steps_per_second"] == pytest.approx(1 / summary["train_runtime"], rel=0.01, abs=1e-3)
    assert summary["train_samples_per_second"] == pytest.approx(2 / summary["train_runtime"], rel=0.01, abs=1e-3)


@pytest.mark.parametrize("frozen, trained", [("encoder", "language_model"), ("language_model", "encoder")])
def test_ablation_switch_freezes_exactly_its_part(tiny_paths, tmp_path, essay_text, frozen, trained):
    switch = "encoder" if frozen == "encoder" else "decoder"
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, trainable={switch: False},
                                        training={"save_strategy": "no", "learning_rate": 1e-2}))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and not any(f".model.{frozen}." in name for name in changed)
    assert any(f".model.{trained}." in name for name in changed)
    assert any(".adapter." in name for name in changed)


def test_activation_checkpointing_trains_to_the_same_weights(tiny_paths, tmp_path, essay_text):
    weights = {}
    for checkpointing in (False, True):
        config = tiny_config(tiny_paths, tmp_path / str(checkpointing), essay_text,
                             model={"config": {"lora_dropout": 0.0}},
                             training={_CHECKPOINTING: checkpointing, "save_strategy": "no", "max_steps": 2})
        trainer = train(config)
        decoder = trainer.model.get_base_model().model.language_model
        # The model's own flag: every transformers 5.x sets it (`is_activation_checkpointing`, which reads it,
        # appeared after 5.17).
        assert decoder.gradient_checkpointing == checkpointing  # recomputes its layers in the backward
        weights[checkpointing] = trained_weights(trainer)
    for name in weights[False]:
        torch.testing.assert_close(weights[True][name], weights[False][name], rtol=0, atol=1e-6, msg=name)


class CountDeviceSyncs(TrainerCallback):
    """Counts the host-device synchronizations (torch.cuda sync debug warnings) between two optimizer steps."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.syncs, self._catcher = first, last, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.first:
            self._catcher = warnings.catch_warnings(record=True)
            self.syncs = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif state.global_step == self.last:
            torch.cuda.set_sync_debug_mode(0)
            self._catcher.__exit__(None, None, None)
            self.syncs = [w for w in self.syncs if "synchroniz" in str(w.message)]


class RecordHostReads(TrainerCallback):
    """Records the ops that read values back to the host (`HostReads`) from the end of step `first` to the end of
    step `last`."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.reads = first, last, HostReads()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.first:
            self.reads.__enter__()
        elif state.global_step == self.last:
            self.reads.__exit__(None, None, None)


def test_the_trainer_on_the_accelerator_paths_reads_nothing_back_between_logs(tiny_paths, tmp_path, essay_text,
                                                                             monkeypatch):
    # The CPU stand-in for the GPU test below: the model takes its accelerator paths, and steps 3 to 5 (no
    # logging, no checkpoint) hold no op of the trainer, TRL's loss or the model that reads a value back.
    monkeypatch.setattr(modeling_e2llm, "_reads_back_freely", lambda tensor: False)
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text,
                                        training={"max_steps": 6, "logging_steps": 100, "save_strategy": "no"}))
    recorder = RecordHostReads(first=2, last=5)
    trainer.add_callback(recorder)
    trainer.train()
    assert recorder.reads.ops == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on the CPU there is no device to wait for")
def test_the_trainer_waits_for_the_gpu_at_most_once_per_optimizer_step(tiny_paths, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text,
                         training={"max_steps": 6, "logging_steps": 100, "save_strategy": "no"})
    trainer = build_trainer(config)
    counter = CountDeviceSyncs(first=2, last=5)  # steps 3, 4 and 5: no logging, no checkpoint
    trainer.add_callback(counter)
    trainer.train()
    assert len(counter.syncs) <= 3, [f"{w.filename}:{w.lineno}" for w in counter.syncs]  # where each wait began


def test_freezing_encoder_and_decoder_trains_the_adapter_alone(tiny_paths, tmp_path, essay_text):
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, trainable={"encoder": False, "decoder": False},
                                        training={"save_strategy": "no", "learning_rate": 1e-2}))
    assert all(".adapter." in name for name, p in trainer.model.named_parameters() if p.requires_grad)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".adapter." in name for name in changed)
    assert all(not p.abs().any() for name, p in trainer.model.named_parameters() if "lora_B" in name)  # identity


@pytest.mark.parametrize("k", [None, 4])
def test_a_frozen_encoder_pools_each_samples_chunks_once_when_the_samples_are_built(tiny_paths, tmp_path,
                                                                                      essay_text, k):
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, trainable={"encoder": False, "decoder": True},
                                        model={"config": {"encoder_tokens_per_chunk_token": k}},
                                        training={"save_strategy": "no"}))
    model = trainer.model.get_base_model().eval()
    for row in trainer.train_dataset.select(range(3)):
        ids, mask = pad_sequences(row["chunk_input_ids"], 0), pad_sequences(row["chunk_attention_mask"], 0)
        expected = model.model.chunk_tokens(model.model.pool_chunks(ids, mask), mask)  # (n_chunk_tokens, enc_hidden)
        assert row["input_ids"].count(model.config.chunk_token_id) == len(expected)
        torch.testing.assert_close(torch.tensor(row["chunk_pooled"]), expected, rtol=0, atol=1e-6)


def test_a_frozen_encoder_never_runs_in_a_training_step(tiny_paths, tmp_path, essay_text):
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, trainable={"encoder": False, "decoder": True},
                                        training={"save_strategy": "no", "max_steps": 2}))
    calls = []
    encoder = trainer.model.get_base_model().model.encoder
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if ".adapter." in name}
    trainer.train()
    hook.remove()
    assert calls == []
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters() if name in before)


def test_an_adapter_only_run_loads_like_any_trained_run(tiny_paths, tmp_path, essay_text):
    from modeling_e2llm.loading import load_model

    config = tiny_config(tiny_paths, tmp_path, essay_text, trainable={"encoder": False, "decoder": False},
                         training={"save_strategy": "no", "learning_rate": 1e-2, "max_steps": 2})
    trainer = train(config)
    loaded, _, _ = load_model(tmp_path / "run" / "final")
    adapter = {name.split(".adapter.modules_to_save.default.")[1]: p for name, p in trainer.model.named_parameters()
               if ".adapter.modules_to_save." in name}
    for name, weight in loaded.model.adapter.named_parameters():
        torch.testing.assert_close(weight, adapter[name], rtol=0, atol=0)


@pytest.fixture(scope="module")
def first_stages(tiny_paths, tmp_path_factory, essay_text) -> dict[str, Path]:
    """Two finished 2-step runs: "adapter" trained the adapter alone, "lora" LoRA and adapter."""
    runs = {}
    for name, trainable in (("adapter", {"encoder": False, "decoder": False}), ("lora", {})):
        folder = tmp_path_factory.mktemp(name)
        train(tiny_config(tiny_paths, folder, essay_text, trainable=trainable,
                          training={"save_strategy": "no", "learning_rate": 1e-2, "max_steps": 2}))
        runs[name] = folder / "run" / "final"
    return runs


def test_a_second_stage_starts_from_the_first_stages_adapter_and_trains_lora(tiny_paths, tmp_path, essay_text,
                                                                            first_stages):
    first, _, _ = load_model(first_stages["adapter"])
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, model={"init_from": str(first_stages["adapter"])}))
    adapter = {name.split(".adapter.modules_to_save.default.")[1]: p for name, p in trainer.model.named_parameters()
               if ".adapter.modules_to_save." in name}
    for name, weight in first.model.adapter.named_parameters():
        torch.testing.assert_close(adapter[name], weight, rtol=0, atol=0)
    assert any("lora_" in name and p.requires_grad for name, p in trainer.model.named_parameters())


def test_a_run_that_trained_lora_is_continued_from_its_lora_and_adapter(tiny_paths, tmp_path, essay_text,
                                                                        first_stages):
    saved = load_file(first_stages["lora"] / "adapter_model.safetensors")
    trainer = build_trainer(tiny_config(tiny_paths, tmp_path, essay_text, model={"init_from": str(first_stages["lora"])}))
    started = get_peft_model_state_dict(trainer.model)
    assert any("lora_B" in name and weight.any() for name, weight in saved.items())
    assert started.keys() == saved.keys()
    for name, weight in saved.items():
        torch.testing.assert_close(started[name].cpu(), weight, rtol=0, atol=0)


def test_a_run_with_another_lora_rank_is_refused_as_init_from(tiny_paths, tmp_path, essay_text, first_stages):
    config = tiny_config(tiny_paths, tmp_path, essay_text, model={"init_from": str(first_stages["lora"]),
                                                                  "config": {"lora_rank": 4}})
    with pytest.raises(ValueError, match="lora_rank=8.*has 4"):
        build_trainer(config)


def test_a_run_that_tuned_a_part_this_run_freezes_is_refused_as_init_from(tiny_paths, tmp_path, essay_text,
                                                                          first_stages):
    config = tiny_config(tiny_paths, tmp_path, essay_text, model={"init_from": str(first_stages["lora"])},
                         trainable={"encoder": False, "decoder": True})
    with pytest.raises(ValueError, match="no place for: make the same parts trainable"):
        build_trainer(config)


def test_a_first_stage_with_another_compression_setting_is_refused_as_init_from(tiny_paths, tmp_path, essay_text,
                                                                               first_stages):
    config = tiny_config(tiny_paths, tmp_path, essay_text, model={"init_from": str(first_stages["adapter"]),
                                                                  "config": {"encoder_tokens_per_chunk_token": 4}})
    with pytest.raises(ValueError, match="encoder_tokens_per_chunk_token=None.*has 4"):
        build_trainer(config)


def test_init_from_a_folder_that_is_no_finished_run_is_refused_when_the_config_loads(tiny_paths, tmp_path, essay_text):
    with pytest.raises(ValueError, match="holds no adapter_model.safetensors: name the final/ folder"):
        tiny_config(tiny_paths, tmp_path, essay_text, model={"init_from": str(tmp_path)})


def test_two_cpu_processes_follow_the_loss_curve_of_one(tiny_paths, tmp_path, essay_text):
    encoder = dropout_free_encoder(tiny_paths, tmp_path / "encoder")
    runs = {}
    for processes, per_device in ((1, 4), (2, 2)):
        out = tmp_path / f"p{processes}"
        config = tiny_config(tiny_paths, out, essay_text, encoder=encoder, model={"config": {"lora_dropout": 0.0}},
                             training={"per_device_train_batch_size": per_device, "max_steps": 5, "seed": 3,
                                       "save_strategy": "no", "learning_rate": 5e-3})
        config_path = out / "config.yaml"
        config_path.write_text(json.dumps(_as_raw(config)))  # JSON is valid YAML
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
                   "-m", "training.train", "--config", str(config_path)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        history = json.loads((out / "run" / "final" / "log_history.json").read_text())
        runs[processes] = [e["loss"] for e in history if "loss" in e]
        assert (out / "run" / "final" / "loss.png").stat().st_size > 1000
    assert len(runs[1]) == len(runs[2]) == 5
    assert runs[2] == pytest.approx(runs[1], rel=1e-4)


def _as_raw(config: TrainConfig) -> dict:
    from dataclasses import asdict

    return asdict(config)


# --- the compression knob ------------------------------------------------------------------------------
def test_samples_hold_ceil_of_encoder_tokens_over_k_placeholders_per_chunk(tiny_at, essay_text):
    _, processor = tiny_at(4)
    sample = build_sample(processor, essay_text[:2000], "Who wrote this?", "Paul Graham")
    wanted = sum(-(-len(chunk) // 4) for chunk in sample["chunk_input_ids"])
    assert sample["input_ids"].count(processor.chunk_token_id) == wanted > len(sample["chunk_input_ids"])
    with pytest.raises(ContextTooLongError,
                       match=r"make \d+ chunk tokens.*Use a larger encoder_tokens_per_chunk_token"):
        build_sample(processor, essay_text, "Q?", "A", max_length=100)


def test_a_knob_set_in_the_yaml_trains_and_the_trained_run_loads_with_it(tiny_paths, tmp_path, essay_text):
    config = tiny_config(tiny_paths, tmp_path, essay_text, records=2,
                         model={"config": {"encoder_tokens_per_chunk_token": 4}},
                         training={"max_steps": 2, "save_strategy": "no"})
    trainer = train(config)
    chunk_token_id = trainer.model.config.chunk_token_id
    for row in trainer.train_dataset:
        assert row["input_ids"].count(chunk_token_id) == sum(-(-len(chunk) // 4) for chunk in row["chunk_input_ids"])
    model, processor, _ = load_model(tmp_path / "run" / "final")
    assert (model.config.encoder_tokens_per_chunk_token, processor.encoder_tokens_per_chunk_token) == (4, 4)
    ids = model.generate(context=essay_text[:1000], prompt="Who?", processor=processor, max_new_tokens=2)
    assert ids.shape == (1, 2)


def test_a_knob_that_is_not_a_positive_integer_is_refused_while_the_yaml_is_read(tiny_paths, tmp_path, essay_text):
    with pytest.raises(ValueError, match="encoder_tokens_per_chunk_token must be None"):
        tiny_config(tiny_paths, tmp_path, essay_text, model={"config": {"encoder_tokens_per_chunk_token": 0}})


def test_set_overrides_one_value_deep_in_the_config_and_reads_it_as_yaml():
    config = TrainConfig.from_yaml("training/configs/demo_v2_gpu.yaml", ["data.seed=2", "model.config.lora_rank=4"])
    assert (config.data.seed, config.model.config["lora_rank"], config.model.config["lora_alpha"]) == (2, 4, 16)


def test_a_zero_time_budget_on_the_command_line_is_refused_by_the_configs_own_check(capsys):
    from training.train import main

    with pytest.raises(SystemExit) as exit:
        main(["--config", "training/configs/demo_v2_gpu.yaml", "--max-minutes", "0"])
    assert exit.value.code == 2 and "max_minutes must be above 0" in capsys.readouterr().err


SHIPPED_CONFIGS = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_every_shipped_training_config_loads(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # their data paths are relative to the repository root
    config = TrainConfig.from_yaml(path)
    assert config.training["output_dir"].startswith("runs/")


def test_set_without_an_equals_sign_is_refused_with_the_form_it_takes():
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        TrainConfig.from_yaml("training/configs/demo_v2_gpu.yaml", ["data.seed"])


# --- the adapter's first stage: fitted to the decoder's input embeddings ------------------------------------
def align_section(essay_path: str, **values) -> dict:
    return {"chunks": 40, "steps": 200, "batch_size": 64, "source": {"path": essay_path}, **values}


def test_a_chunk_tokens_regression_target_is_the_mean_embedding_of_the_decoder_tokens_of_its_text(tiny_model,
                                                                                                   tiny_processor):
    from training.align import regression_pairs

    text = "The special magic number is 4521. Remember it well."
    inputs, targets = regression_pairs(tiny_model, tiny_processor, [text])  # one vector per chunk: one pair
    ids = tiny_processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(targets[0], tiny_model.get_input_embeddings().weight[ids].mean(dim=0))
    encoded = tiny_processor.encoder_tokenizer([text], return_tensors="pt")
    torch.testing.assert_close(inputs, tiny_model.model.pool_chunks(encoded["input_ids"], encoded["attention_mask"]))


def test_fitting_turns_chunk_tokens_towards_the_embeddings_of_the_text_they_cover(tiny_at, essay_text):
    from training.align import alignment_chunks, fit_adapter, regression_pairs
    from training.config import AlignSettings

    model, processor = tiny_at(4)
    texts = alignment_chunks(processor, [essay_text[:10000], essay_text[10000:]], 60, seed=0)
    inputs, targets = regression_pairs(model, processor, texts)  # (n, 32), (n, 48): k=4 makes 3-4 a chunk
    assert len(texts) == 60 and len(inputs) > 150
    before = torch.nn.functional.cosine_similarity(model.model.adapter(inputs), targets).mean().item()
    after = fit_adapter(model.model.adapter, inputs, targets, AlignSettings(steps=200, batch_size=64), seed=0)
    assert before < 0.1 and after > before + 0.15


def test_a_run_with_an_align_section_starts_training_from_the_fitted_adapter(tiny_paths, tmp_path, essay_text):
    from training.align import align_adapter
    from training.train import load_model_and_processor

    config = tiny_config(tiny_paths, tmp_path, essay_text, align=align_section(str(tmp_path / "data.jsonl")),
                         training={"save_strategy": "no"})
    trainer = build_trainer(config)
    started = {name.split(".adapter.modules_to_save.default.")[1]: p for name, p in trainer.model.named_parameters()
               if ".adapter.modules_to_save." in name}
    set_seed(config.training.get("seed", 42))
    model, processor = load_model_and_processor(config)
    unfitted = {name: p.detach().clone() for name, p in model.model.adapter.named_parameters()}
    align_adapter(model, processor, config.align, config.data.seed)
    for name, weight in model.model.adapter.named_parameters():
        torch.testing.assert_close(started[name], weight, rtol=0, atol=0)
        assert not torch.equal(weight, unfitted[name])


@pytest.mark.parametrize("values, init_from, message", [
    ({"source": None}, False, "align.source is missing"),
    ({"source": {"path": "x.jsonl", "holdout": {"by": ["id"], "percent": 25, "side": "dev"}}}, False,
     "would learn the held-out"),
    ({}, True, "overwrite: keep one of them"),
])
def test_an_align_section_that_would_fit_on_held_out_text_or_undo_init_from_is_refused(tiny_paths, tmp_path,
                                                                                       essay_text, values, init_from,
                                                                                       message):
    run = tmp_path / "run0"  # a finished run's folder, as init_from checks it
    run.mkdir()
    for name in ("adapter_model.safetensors", "demo.json"):
        (run / name).write_text("{}")
    with pytest.raises(ValueError, match=message):
        tiny_config(tiny_paths, tmp_path, essay_text, align=align_section(str(tmp_path / "e.jsonl"), **values),
                    model={"init_from": str(run)} if init_from else {})


# --- experiments -------------------------------------------------------------------------------------
def test_an_arm_is_the_base_config_with_its_overrides_merged_section_by_section(tmp_path):
    from training.experiments import arm_configs

    experiment = tmp_path / "reading.yaml"
    experiment.write_text("base: {processor: {chunk_size: 512, chunk_overlap: 0.0}, training: {max_steps: 80}}\n"
                          "arms: {small: {processor: {chunk_size: 128}}, same: {}}\n")
    arms = arm_configs(experiment)
    assert arms["small"]["processor"] == {"chunk_size": 128, "chunk_overlap": 0.0}
    assert arms["same"]["processor"] == {"chunk_size": 512, "chunk_overlap": 0.0}
    assert arms["small"]["training"] == {"max_steps": 80, "output_dir": str(Path("runs") / "reading" / "small")}


def test_the_experiment_table_reports_the_last_probe_its_curve_tokens_and_time_per_step():
    from training.experiments import arm_row

    probe = {"probe_nll_nearby": 4.25, "probe_nll_other": 4.3, "probe_gap_nearby": 0.05, "probe_gap_other": 0.1}
    log = [{**probe, "probe_nll_own": 4.2, "probe_seconds": 10.0, "step": 0},
           {"loss": 3.9, "num_tokens": 3200.0, "step": 10},
           {**probe, "probe_nll_own": 4.2, "probe_seconds": 30.0, "step": 10, "probe_gap_nearby_se": 0.02,
            "probe_gap_other_se": 0.03},
           {"train_runtime": 140.0, "step": 10}]
    assert arm_row("adapter", log, batch=2) == (
        "| adapter | 10 | 20 | 4.200 / 4.250 / 4.300 | +0.050 ± 0.020 / +0.100 ± 0.030 | 0: 4.200 / +0.050 / +0.100, "
        "10: 4.200 / +0.050 / +0.100 | 160 | 10.0 (+20 s a probe) |")


def test_an_arm_without_probes_gets_a_row_with_its_steps_tokens_and_time_per_step():
    from training.experiments import arm_row

    log = [{"loss": 3.9, "num_tokens": 6000.0, "step": 10}, {"train_runtime": 80.0, "step": 10}]
    assert arm_row("uncompressed", log, batch=2) == "| uncompressed | 10 | 20 | no probe | | | 300 | 8.0 |"
