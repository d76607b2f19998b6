"""Did the demo checkpoint learn? Measurements on development data the demo config never trains on.

    python -m evaluation.demo prepare --output runs/eval          # dev files + untrained folder for evaluation.run
    python -m evaluation.demo restate --model trained --limit 12 --output runs/eval/restate-trained.json
    python -m evaluation.demo needle --model untrained --limit 10 --output runs/eval/needle-untrained.json
    python -m evaluation.demo babi-accuracy --output runs/eval/babi-trained   # an evaluation.run folder
    python -m evaluation.demo chunk-stats --model trained --output runs/eval/chunk-stats-trained.json
    python -m evaluation.demo questions --model trained --hybrid-top-k 5 --output runs/eval/questions-trained.json
    python -m evaluation.demo answer-gap --model trained --output runs/eval/answer-gap-trained.json

`restate`: windows of held-out PG essays (the demo config's holdout) restated from their chunk tokens,
ROUGE-L F1 against the source text. `needle`: a 7-digit "special magic number" hidden in held-out
essays; accuracy = the number appears in the answer. `--model` is `trained` (the demo weights),
`untrained` (same composite, random adapter) or `decoder` (the plain decoder reading the raw text in the
baselines' prompt, as `evaluation.run --system full` does; needle only). `prepare` writes, for
`python -m evaluation.run`, the held-out bAbI qa1/qa2 stories, the held-out essays as haystack, and the
untrained composite as a model folder. `chunk-stats`: do the chunk tokens carry their chunk's content? The
restatement probe that training logs (`probe:` in a training config), on held-out essay chunks, and whether the
chunk tokens of different chunks still differ (a collapsed adapter maps every chunk to about the same vector:
mean pairwise cosine near 1). `questions`: the README's kind of question, asked about held-out essays instead of
a training-side one: 30 hand-written questions (`essay_questions.jsonl`) over the 7 held-out essays, each worded
unlike the sentence that answers it and asked over its whole essay; correct when the answer names one of the
accepted spellings as a whole word. `answer-gap`: do the chunk tokens carry what those questions ask? With no
passages quoted, the NLL of each answer (as the essay spells it) after the chunk tokens of its own essay and after
those of as many characters of the other held-out essays. `--demo-dir runs/<run>/final` measures any finished
training run.
"""

import argparse
import json
import random
import re
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from modeling_e2llm.command_line import at_least
from modeling_e2llm.haystacks import NEEDLE_KEYS, background_text, background_window, distinct_contexts, \
    magic_number_record, magic_numbers, select_records, understanding_windows
from modeling_e2llm.loading import DEMO_DIR, is_trained_run, load_model
from modeling_e2llm.restatement_probe import probe_chunks, restatement_probe, standard_error, target_nll

from .data import load_examples
from .harness import PREDICTIONS_FILE, read_predictions
from .metrics import rouge_scores
from .systems import FullSystem

BABI_PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")  # every qa1/qa2 answer
NEEDLE_NEW_TOKENS = 32  # room for "The special magic number for ... is: 1234567."
QUESTION_NEW_TOKENS = 40  # the README's question's budget: room for a sentence that names the answer
ESSAY_QUESTIONS = Path(__file__).with_name("essay_questions.jsonl")  # {essay: id, question, answers: [spellings]}
# What the shipped demo came from; its held-out sides are the development data below.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "demo_gpu.yaml"
DATA = Path("../shared/data")
DEV_ESSAYS = {"path": str(DATA / "pg_essays" / "essays.jsonl"), "holdout": {"by": ["id"], "percent": 25, "side": "dev"}}
DEV_BABI = {"path": str(DATA / "babi" / "qa1-5_train.jsonl"), "where": {"meta.babi_task": ["qa1", "qa2"]},
            "holdout": {"by": ["meta.babi_task", "meta.story_index"], "percent": 20, "side": "dev"}}


def dev_records(spec: dict, seed: int = 0) -> list[dict]:
    """Records (dicts) of a uniform JSONL file selected as a training config's source spec selects them:
    `{path, where, holdout, limit}`, shuffled by `seed`."""
    spec = dict(spec)
    return select_records([asdict(example) for example in load_examples(spec.pop("path"))], seed, **spec)


def load(model: str, demo_dir: Path):
    """(model, processor) for `trained` or `untrained`; `decoder` uses the untrained composite's decoder."""
    if model != "trained":
        return load_model(trained=False)[:2]
    if not is_trained_run(demo_dir):
        raise FileNotFoundError(f"No demo weights in {demo_dir}: train first or pass --demo-dir.")
    return load_model(demo_dir)[:2]


def dev_windows(processor, window_chunks: int, limit: int) -> list[str]:
    """`limit` restate windows spread evenly over the held-out essays, leaving out each essay's first
    chunk: every essay opens with the same "Get funded by Y Combinator" banner, seen in training."""
    windows = [w for record in distinct_contexts(dev_records(DEV_ESSAYS))
               for w in understanding_windows(processor, record["context"], window_chunks, skip_first=True)
               if len(w.strip()) > 100]
    step = max(1, len(windows) // limit)
    return windows[::step][:limit]


def restate(model, processor, limit: int, max_new_tokens: int) -> dict:
    window_chunks = yaml.safe_load(DEMO_CONFIG.read_text())["tasks"]["window_chunks"]
    rows = []
    for text in dev_windows(processor, window_chunks, limit):
        output = model.answer(text, None, processor=processor, max_new_tokens=max_new_tokens, do_sample=False)
        scores = rouge_scores(output, [text])
        rows.append({"source": text, "restated": output, "rougeL": scores["rougeL"], "rouge1": scores["rouge1"]})
    rouge_l = torch.tensor([r["rougeL"] for r in rows])
    return {"count": len(rows), "rougeL": _mean(rows, "rougeL"), "rougeL_se": standard_error(rouge_l),
            "rouge1": _mean(rows, "rouge1"), "examples": rows}


@torch.no_grad()
def chunk_stats(model, processor, limit: int) -> dict:
    """Do the chunk tokens carry their chunk's content? On `limit` held-out essay chunks:

    the restatement probe (`modeling_e2llm.restatement_probe`, the figures training's probe logs): restate NLL
    (nats per target token) of each chunk from its own chunk tokens, from a nearby chunk's of the same essay and
    from another essay's (all three of as many chunk tokens), and the two gaps; a model that ignores the content
    scores all three alike; mean pairwise cosine similarity of the chunk tokens (a collapsed adapter maps all
    chunks to about the same vector: near 1; at k > 1 the pairs include a chunk's own tokens); their mean norm
    next to that of the decoder's token embeddings. `count` is the number of chunks (at k > 1 fewer than `limit`
    where few have a nearby and another essay's chunk of as many chunk tokens), `chunk_tokens` theirs.
    """
    essays = [record["context"] for record in distinct_contexts(dev_records(DEV_ESSAYS))]
    chunks = probe_chunks(processor, essays, limit)
    encoded = processor.encode_chunks(chunks.own)
    features = model.model.get_chunk_features(encoded["chunk_input_ids"].to(model.device),
                                              encoded["chunk_attention_mask"].to(model.device))  # (n_tok, dec_hidden)
    unit = torch.nn.functional.normalize(features, dim=-1)
    n = len(unit)
    cosine = ((unit @ unit.T).sum() - n) / (n * (n - 1))
    token_norm = model.get_input_embeddings().weight.norm(dim=-1).mean()
    return {"count": len(chunks.own), "chunk_tokens": n, **restatement_probe(model, processor, chunks),
            "mean_pairwise_cosine": cosine.item(),
            "mean_norm": features.norm(dim=-1).mean().item(), "token_embedding_mean_norm": token_norm.item()}


def needle_records(limit: int, seed: int = 123) -> list[dict]:
    """Needles hidden in held-out essays at 2k-12k characters (4-24 chunks)."""
    rng = random.Random(seed)
    background = background_text([r["context"] for r in distinct_contexts(dev_records(DEV_ESSAYS))])
    records = []
    for i in range(limit):
        key, numbers = rng.choice(NEEDLE_KEYS), magic_numbers(rng, 1)
        records.append(magic_number_record(key, numbers, background, 2000 + i * 10000 // max(1, limit - 1), rng))
    return records


def needle(model, processor, limit: int, use_decoder: bool) -> dict:
    decoder = FullSystem(model, processor, NEEDLE_NEW_TOKENS)
    rows = []
    for record in needle_records(limit):
        context, question = record["context"], record["question"]
        if use_decoder:
            output = decoder.answer_plain(context, question, truncate=False, max_new_tokens=NEEDLE_NEW_TOKENS)
        else:
            output = model.answer(context, question, processor=processor, max_new_tokens=NEEDLE_NEW_TOKENS,
                                  do_sample=False)
        rows.append({"answer": record["answer"], "output": output, "chars": len(context),
                     "correct": float(record["answer"] in output)})
    return {"count": len(rows), "accuracy": _mean(rows, "correct"), "examples": rows}


def _essays_by_id() -> dict[str, str]:
    """The held-out essays' texts by id, as the questions name them."""
    return {record["id"]: record["context"] for record in dev_records(DEV_ESSAYS)}


def _essay_questions() -> list[dict]:
    """The rows of `ESSAY_QUESTIONS`: {essay: id, question, answers: [accepted spellings]}."""
    return [json.loads(line) for line in ESSAY_QUESTIONS.read_text().splitlines()]


def names_any(text: str, answers: list[str]) -> bool:
    """Whether `text` names one of `answers` as a whole word or phrase, ignoring case ("10" is not in "100")."""
    return any(_named(text, answer) for answer in answers)


def _named(text: str, answer: str) -> re.Match | None:
    """Where `text` (its whitespace runs read as one space) names `answer` as a whole word or phrase, any case."""
    return re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", " ".join(text.split()), re.IGNORECASE)


def essay_questions(model, processor, hybrid_top_k: int | None) -> dict:
    """Accuracy on the hand-written questions about held-out essays (`ESSAY_QUESTIONS`), each asked over its whole
    essay with `hybrid_top_k` quoted passages (None: the processor's setting)."""
    essays = _essays_by_id()
    rows = []
    for item in _essay_questions():
        output = model.answer(essays[item["essay"]], item["question"], processor=processor, do_sample=False,
                              max_new_tokens=QUESTION_NEW_TOKENS, hybrid_top_k=hybrid_top_k)
        rows.append({**item, "output": output, "correct": float(names_any(output, item["answers"]))})
    return {"count": len(rows), "accuracy": _mean(rows, "correct"), "examples": rows}


def _spelling(text: str, answers: list[str]) -> str:
    """How `text` spells the first of `answers` it names ("Sarbanes-Oxley" for "sarbanes-oxley")."""
    return next(match.group() for match in (_named(text, answer) for answer in answers) if match)


@torch.no_grad()
def answer_gap(model, processor) -> dict:
    """Do the chunk tokens carry what the essay questions ask? Hybrid off, for each question: the NLL (nats per
    token) of its answer as its essay first spells it, after the chunk tokens of its own essay (`answer_nll_own`)
    and after those of as many characters of the other held-out essays (`answer_nll_other`, about as many chunk
    tokens); the gap (other - own) with its paired standard error. A decoder that answers from its prior alone
    scores both alike; the topic can open a small gap, and another essay that names the same answer (Google, Robert
    Morris) narrows it."""
    essays, items = _essays_by_id(), _essay_questions()
    others = {essay: background_text([text for other, text in essays.items() if other != essay]) for essay in essays}
    rng = random.Random(0)
    own = [essays[item["essay"]] for item in items]
    other = [background_window(others[item["essay"]], len(text), rng) for item, text in zip(items, own)]
    spelled = [_spelling(text, item["answers"]) for text, item in zip(own, items)]
    questions = [item["question"] for item in items]
    nll_own = target_nll(model, processor, own, spelled, questions, batch_size=1)  # (n,)
    nll_other = target_nll(model, processor, other, spelled, questions, batch_size=1)
    return {"count": len(items), "answer_nll_own": nll_own.mean().item(), "answer_nll_other": nll_other.mean().item(),
            "answer_gap_other": (nll_other - nll_own).mean().item(),
            "answer_gap_other_se": standard_error(nll_other - nll_own),
            "examples": [{"question": q, "answer": a, "nll_own": o, "nll_other": x}
                         for q, a, o, x in zip(questions, spelled, nll_own.tolist(), nll_other.tolist())]}


def babi_accuracy(run_folder: Path) -> dict:
    """Accuracy of an `evaluation.run` folder's predictions on bAbI qa1/qa2: the first of the six places the
    answer names is the right one (chance: 1/6; a list of every place counts as its first)."""
    rows = [r for r in read_predictions(run_folder / PREDICTIONS_FILE).values() if "prediction" in r]
    correct = []
    for row in rows:
        text = row["prediction"].lower()
        named = sorted((text.index(place), place) for place in BABI_PLACES if place in text)
        correct.append(float(bool(named) and named[0][1] == row["references"][0].lower()))
    return {"count": len(rows), "accuracy": sum(correct) / max(1, len(rows))}


def prepare(output: Path, babi_per_task: int) -> None:
    output.mkdir(parents=True, exist_ok=True)
    essays = distinct_contexts(dev_records(DEV_ESSAYS))
    _write_jsonl(output / "dev_essays.jsonl", essays)
    babi = []
    for task in ("qa1", "qa2"):
        babi += dev_records({**DEV_BABI, "where": {"meta.babi_task": [task]}, "limit": babi_per_task}, seed=1)
    _write_jsonl(output / "babi_dev.jsonl", babi)
    model, processor, _ = load_model(trained=False)
    model.save_pretrained(output / "untrained")
    processor.save_pretrained(output / "untrained")
    print(f"Wrote {len(essays)} dev essays, {len(babi)} dev bAbI questions and the untrained model to {output}")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / max(1, len(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.demo", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["prepare", "restate", "needle", "babi-accuracy", "chunk-stats", "questions",
                                         "answer-gap"])
    parser.add_argument("--model", choices=["trained", "untrained", "decoder"], default="trained")
    parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help="folder with the trained demo weights")
    parser.add_argument("--limit", type=at_least(1), default=12)
    parser.add_argument("--max-new-tokens", type=at_least(1), default=160)
    parser.add_argument("--hybrid-top-k", type=at_least(0), default=None,
                        help="questions: passages quoted with each (0: off; default: the processor's setting)")
    parser.add_argument("--babi-per-task", type=at_least(1), default=15)
    parser.add_argument("--output", type=Path, required=True,
                        help="result file (babi-accuracy: the evaluation.run folder to read)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.task == "prepare":
        return prepare(args.output, args.babi_per_task)
    if args.task == "babi-accuracy":
        return print(json.dumps(babi_accuracy(args.output)))
    if args.hybrid_top_k is not None and args.task != "questions":
        parser.error("--hybrid-top-k applies to questions only.")
    if args.model == "decoder" and args.task != "needle":
        parser.error("--model decoder applies to needle only (restating raw text is copying).")
    model, processor = load(args.model, args.demo_dir)
    if args.task == "restate":
        result = restate(model, processor, args.limit, args.max_new_tokens)
    elif args.task == "chunk-stats":
        result = chunk_stats(model, processor, args.limit)
    elif args.task == "questions":
        result = essay_questions(model, processor, args.hybrid_top_k)
    elif args.task == "answer-gap":
        result = answer_gap(model, processor)
    else:
        result = needle(model, processor, args.limit, use_decoder=args.model == "decoder")
    result = {"task": args.task, "model": args.model, "command": "python -m evaluation.demo " +
              " ".join(argv if argv is not None else sys.argv[1:]), **result}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}))


if __name__ == "__main__":
    main()
