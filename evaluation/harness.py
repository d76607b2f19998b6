"""The evaluation loop shared by `evaluation.run` and `evaluation.niah`: predict, score, resume, summarize.

An output folder holds one run: `run.json` (what was run), `predictions.jsonl` (one line per example,
written as soon as it is done, so an interrupted run resumes where it stopped), `summary.json` (every
metric with the example count) and `summary.md` (the same as a table).
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_e2llm.command_line import at_least
from modeling_e2llm.loading import load_model
from modeling_e2llm.markdown import markdown_table

from .data import Example
from .metrics import aggregate, primary_metric, score_prediction
from .systems import RAG_TOP_K, SYSTEMS, System, build_system


class RunConflict(ValueError):
    """The output folder cannot be resumed into: it holds a run with other settings (resuming would mix two
    runs), or a run file that is not valid JSON."""


RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE, TABLE_FILE = "run.json", "predictions.jsonl", "summary.json", "summary.md"


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options both commands share: which system, on which model, writing where."""
    parser.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    parser.add_argument("--model", default=None,
                        help="E2LLM checkpoint folder or Hub id (default: the embedded default)")
    parser.add_argument("--output", required=True, type=Path, help="folder of this run (resumed if it exists)")
    parser.add_argument("--max-new-tokens", type=at_least(1), default=None,
                        help="answer length (default: 256 for summaries, 64 for QA, 32 for needles)")
    parser.add_argument("--top-k", type=at_least(1), default=RAG_TOP_K, help="chunks rag retrieves (paper: 40)")
    parser.add_argument("--hybrid-top-k", type=at_least(0), default=None,
                        help="e2llm hybrid recall: raw text of the N chunks most similar to the question "
                             "(0: off; default: the checkpoint's setting)")
    parser.add_argument("--hybrid-budget", type=at_least(1), default=None,
                        help="decoder tokens the hybrid passages may take (default: the checkpoint's setting)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")


def system_from_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[System, dict]:
    """The system the options name, and the run settings that identify it in run.json; a `--model` that is
    not a saved E2LLM ends the command with the reason."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, processor, label = load_model(args.model)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: --model {args.model}: {error}\n")
    system = build_system(args.system, model, processor, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                          hybrid_top_k=args.hybrid_top_k, hybrid_token_budget=args.hybrid_budget)
    settings = {"system": args.system, "model": label, "max_new_tokens": args.max_new_tokens}
    if args.system == "rag":
        settings["top_k"] = args.top_k
    if args.system == "e2llm":
        settings.update(hybrid_top_k=system.hybrid_top_k, hybrid_budget=system.hybrid_token_budget)
    return system, settings


def evaluate_examples(system: System, examples: list[Example], output_dir: str | Path, settings: dict,
                      progress: bool = True) -> dict:
    """Predict and score every example not yet in `output_dir`, then write and return the summary.

    `settings` (system, model, dataset, ...) must match those of an earlier run in the same folder.
    An example that does not fit the system's window is recorded as skipped and counted.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _claim_folder(output_dir / RUN_FILE, settings)
    done = read_predictions(output_dir / PREDICTIONS_FILE, repair=True)
    todo = [example for example in examples if example.id not in done]
    with open(output_dir / PREDICTIONS_FILE, "a", encoding="utf-8") as out:
        bar = tqdm(todo, total=len(examples), initial=len(examples) - len(todo), unit="example",
                   desc=f"{system.name} on {settings.get('dataset', 'data')}", disable=not progress)
        for example in bar:
            done[example.id] = predict_and_score(system, example)
            out.write(json.dumps(done[example.id], ensure_ascii=False) + "\n")
            out.flush()
    summary = summarize([done[example.id] for example in examples], settings)
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / TABLE_FILE).write_text(summary_table(summary))
    return summary


def predict_and_score(system: System, example: Example) -> dict:
    """One predictions.jsonl record: the prediction, references and scores, or why it was skipped."""
    start = time.perf_counter()
    try:
        prediction = system.predict(example)
    except ValueError as reason:  # does not fit, or unusable (empty context, a placeholder in the question)
        return {"id": example.id, "task": example.task, "skipped": str(reason)}
    return {"id": example.id, "task": example.task, "prediction": prediction, "references": example.answers,
            "scores": score_prediction(example.task, prediction, example.answers, example.meta),
            "seconds": round(time.perf_counter() - start, 2)}


def read_predictions(path: Path, repair: bool = False) -> dict[str, dict]:
    """Records already written, by id. A last line cut off by an interrupted run is ignored, and with
    `repair` also removed from the file (before appending to it)."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
        if repair:
            path.write_text(text, encoding="utf-8")
    records = [_json_line(line, f"{path}, line {number}") for number, line in enumerate(text.splitlines(), start=1)]
    return {record["id"]: record for record in records}


def _json_line(text: str, where: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunConflict(f"{where} is not valid JSON ({error}): fix or delete that line, or pass another "
                          "--output to start over.") from None


def _claim_folder(run_file: Path, settings: dict) -> None:
    """Write run.json, or check that the folder holds a run with the same settings (safe to resume)."""
    if run_file.exists():
        earlier = _json_line(run_file.read_text(), str(run_file))
        changed = {key: (earlier.get(key), value) for key, value in settings.items() if earlier.get(key) != value}
        if changed:
            details = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in changed.items())
            raise RunConflict(f"{run_file.parent} holds a different run ({details}). "
                              "Pass another --output, or delete that folder to start over.")
        return
    run_file.write_text(json.dumps(settings, indent=2) + "\n")


def summarize(records: list[dict], settings: dict) -> dict:
    """Settings, example counts, every metric averaged over the scored examples, and the primary metric."""
    scored = [record for record in records if "scores" in record]
    task = Counter(record["task"] for record in records).most_common(1)[0][0]
    seconds = [record["seconds"] for record in scored]
    return {**settings, "tasks": sorted({record["task"] for record in records}), "count": len(scored),
            "skipped": len(records) - len(scored), "primary_metric": primary_metric(task),
            "metrics": aggregate([record["scores"] for record in scored]),
            "seconds_per_example": round(sum(seconds) / len(seconds), 2) if seconds else None}


def summary_table(summary: dict) -> str:
    """The summary as a one-row markdown table, scores x 100."""
    metrics = summary["metrics"]
    return markdown_table(["system", "model", "dataset", "n", "skipped", *metrics],
                          [[summary["system"], summary["model"], summary.get("dataset", ""), summary["count"],
                            summary["skipped"], *(f"{100 * value:.1f}" for value in metrics.values())]])
