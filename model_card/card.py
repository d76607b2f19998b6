"""Fill the E2LLM model card (README.md with Hub metadata) from the model's facts and result files.

Inputs the card reads, all optional except the model facts:

- evaluation summaries, the summary.json of one `python -m evaluation.run` each::

      {"system": "e2llm", "dataset": "qmsum/val", "task": "qmsum", "count": 272,
       "metrics": {"rouge1": 0.31, "rougeL": 0.19, "rouge_gmean": 0.2}, "split": "validation"}

  `dataset` and `metrics` (name -> number) are required. `system`, `count`, `split` and the task,
  as `task` or as the harness's list `tasks`, are optional; other keys (`model`, `skipped`,
  `seconds_per_example`, ...) are ignored. Metric names of the harness get their Hub metric type and
  a display name (`METRIC_NAMES`); others are published under their own name.
- training summaries: the training config (YAML or JSON mapping; nested sections become dotted
  names, data sources their file or builder names) and/or the trainer's log_history.json (steps,
  epochs, final loss). Their entries become the training table; a top-level `datasets` (or
  `dataset`) entry names Hub data sets in the metadata.
- efficiency figures (JSON): a mapping (one measure per key) or a list of mappings (one row each).
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_e2llm.markdown import markdown_table

TEMPLATE_PATH = Path(__file__).with_name("template.md")
ABOUT_PATH = Path(__file__).with_name("about.md")
TAGS = ["e2llm", "custom_code", "long-context", "context-compression"]
# Hub task types for the data sets of the evaluation harness; anything else is text generation.
TASK_TYPES = {"qmsum": "summarization", "squality": "summarization", "govreport": "summarization",
              "quality": "question-answering", "squad": "question-answering", "babi": "question-answering",
              "niah": "question-answering", "niah_haystack": "question-answering"}
# Harness metric name -> (Hub metric type, display name).
METRIC_NAMES = {"rouge1": ("rouge", "ROUGE-1"), "rouge2": ("rouge", "ROUGE-2"), "rougeL": ("rouge", "ROUGE-L"),
                "rougeLsum": ("rouge", "ROUGE-Lsum"), "rouge_gmean": ("rouge", "ROUGE geometric mean"),
                "qa_f1": ("f1", "QA F1"), "qa_precision": ("precision", "QA precision"),
                "qa_recall": ("recall", "QA recall"), "exact_match": ("exact_match", "Exact match"),
                "option_accuracy": ("accuracy", "Option accuracy"), "accuracy": ("accuracy", "Accuracy"),
                "needle_recall": ("recall", "Needle recall")}


class CardInputError(ValueError):
    """A result or summary file the card cannot use; the message names the file and the fix."""


@dataclass
class ModelFacts:
    """What the card states about the model (see `model_facts` for how they are measured)."""

    repo_id: str
    encoder_name: str
    decoder_name: str
    chunk_size: int
    chunk_overlap: float
    max_chunk_tokens: int
    pooling: str
    adapter_num_layers: int
    decoder_window: int
    prompt_tokens: int  # decoder tokens of the prompt around the chunk tokens (empty question)
    tokens_per_chunk: float  # decoder tokens one chunk of English text would cost as plain text
    num_parameters: int
    dtype: str
    trained: bool
    lora_merged: bool = True
    encoder_tokens_per_chunk_token: int | None = None  # the compression knob (None: one chunk token per chunk)
    chunk_tokens_per_chunk: float = 1.0  # chunk tokens one chunk of English text becomes

    @property
    def max_chunks(self) -> int:
        """Chunks whose chunk tokens fit in the decoder's window beside the prompt."""
        return max(0, int((self.decoder_window - self.prompt_tokens) / self.chunk_tokens_per_chunk))

    @property
    def compression(self) -> str:
        """What one chunk token stands for, in words."""
        if self.encoder_tokens_per_chunk_token is None:
            return f"one vector per chunk of up to {self.chunk_size} characters"
        return (f"one vector per {self.encoder_tokens_per_chunk_token} encoder tokens (about "
                f"{self.chunk_tokens_per_chunk:.1f} per chunk of up to {self.chunk_size} characters)")


@dataclass
class EvalSummary:
    """One summary.json of the evaluation harness."""

    dataset: str
    metrics: dict[str, float]
    system: str | None = None
    tasks: list[str] = field(default_factory=list)
    count: int | None = None
    split: str | None = None


def about_text() -> str:
    """The card's "What E2LLM is" section: English prose about the model, also used as sample text."""
    return ABOUT_PATH.read_text(encoding="utf-8").strip()


def model_facts(model, processor, repo_id: str, encoder_name: str, decoder_name: str, trained: bool,
                lora_merged: bool = True) -> ModelFacts:
    """Facts for the card from an E2LLM model and its processor.

    The compression is measured on the English text of the card's "What E2LLM is" section: its
    decoder tokens divided by the number of chunks the processor cuts it into, and the chunk tokens
    those chunks become.
    """
    config = model.config
    sample = about_text()
    sample_tokens = len(processor.tokenizer(sample, add_special_tokens=False)["input_ids"])
    chunks = processor.encode_chunks([sample])
    prompt = processor.build_prompt(0, "")
    return ModelFacts(
        repo_id=repo_id, encoder_name=encoder_name, decoder_name=decoder_name,
        chunk_size=processor.chunk_size, chunk_overlap=processor.chunk_overlap,
        max_chunk_tokens=processor.max_chunk_tokens, pooling=config.pooling,
        adapter_num_layers=config.adapter_num_layers, decoder_window=config.text_config.max_position_embeddings,
        prompt_tokens=len(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]),
        tokens_per_chunk=sample_tokens / chunks["num_chunks"][0],
        num_parameters=model.num_parameters(), dtype=str(model.dtype).removeprefix("torch."),
        trained=trained, lora_merged=lora_merged, encoder_tokens_per_chunk_token=config.encoder_tokens_per_chunk_token,
        chunk_tokens_per_chunk=chunks["num_chunk_tokens"][0] / chunks["num_chunks"][0])


# --- reading result files ------------------------------------------------------------------------
def _load_mapping(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CardInputError(f"{what} {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise CardInputError(f"{what} {path} is not valid {kind}: {error}") from error


def load_eval_summary(path: str | Path) -> EvalSummary:
    """Read one harness summary.json (shape in the module docstring); errors name the missing part."""
    data = _load_mapping(path, "Evaluation summary")
    expected = 'expected {"system": ..., "dataset": ..., "task": ..., "count": N, "metrics": {"rouge1": ...}}'
    if not isinstance(data, dict) or "dataset" not in data or not isinstance(data.get("metrics"), dict):
        raise CardInputError(f"Evaluation summary {path} lacks 'dataset' or a 'metrics' mapping; {expected}.")
    metrics = {}
    for name, value in data["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CardInputError(f"Evaluation summary {path}: metric {name!r} is {value!r}, not a finite number.")
        metrics[name] = float(value)
    if not metrics:
        raise CardInputError(f"Evaluation summary {path} has no metrics; {expected}.")
    tasks = data.get("tasks", [data["task"]] if data.get("task") else [])
    return EvalSummary(dataset=str(data["dataset"]), metrics=metrics, system=data.get("system"),
                       tasks=[str(task) for task in tasks], count=data.get("count"), split=data.get("split"))


def load_training_summary(path: str | Path) -> dict:
    """One flat mapping (setting -> value) from a training config or a trainer's log_history.json."""
    data = _load_mapping(path, "Training summary")
    if isinstance(data, list) and data and all(isinstance(record, dict) for record in data):
        return _log_history_summary(data)
    if not isinstance(data, dict):
        raise CardInputError(f"Training summary {path} must hold a mapping (a config) or a list of log records "
                             f"(log_history.json), got {type(data).__name__}.")
    return _flatten(data)


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested sections -> dotted names; lists of mappings (data sources) -> their path or builder names."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            flat[name] = [_public(item.get("path") or item.get("builder") or "?") if isinstance(item, dict)
                          else item for item in value]
        else:
            flat[name] = _public(value)
    return flat


def _public(value: Any) -> Any:
    """A file path cut to its last two parts (the data set's folder and file), so no machine path leaks."""
    if isinstance(value, str) and value.startswith(("/", "~", "./", "../")):
        return "/".join(Path(value).parts[-2:])
    return value


def _log_history_summary(records: list[dict]) -> dict:
    losses = [record["loss"] for record in records if "loss" in record]
    summary = {"steps": max(record.get("step", 0) for record in records),
               "epochs": max(record.get("epoch", 0) for record in records)}
    if losses:
        summary["final training loss"] = losses[-1]
    summary.update({key: records[-1][key] for key in ("train_loss", "train_runtime") if key in records[-1]})
    return summary


def load_efficiency(path: str | Path) -> list[dict] | dict:
    """Efficiency figures: a mapping of measures, or a list of mappings (table rows)."""
    data = _load_mapping(path, "Efficiency file")
    if isinstance(data, dict) or (isinstance(data, list) and data and all(isinstance(r, dict) for r in data)):
        return data
    raise CardInputError(f"Efficiency file {path} must hold a mapping or a non-empty list of mappings.")


# --- building the card ---------------------------------------------------------------------------
def build_model_card(facts: ModelFacts, evaluations: list[EvalSummary] = (), training: dict | None = None,
                     efficiency: list[dict] | dict | None = None, license: str = "apache-2.0",
                     datasets: list[str] = (), system: str | None = None) -> ModelCard:
    """The README.md model card: Hub metadata (with a model-index of `system`'s results) and the body.

    `system` picks this model's summaries when `evaluations` also hold baselines; it may be left
    out when all summaries come from one system. All summaries appear in the body's table.
    """
    own_results = _own_results(evaluations, system)
    datasets = list(dict.fromkeys([*datasets, *_training_datasets(training)]))
    model_name = facts.repo_id.split("/")[-1]
    card_data = ModelCardData(
        license=license, library_name="transformers", pipeline_tag="text-generation", tags=TAGS,
        base_model=[facts.encoder_name, facts.decoder_name], datasets=datasets or None,
        metrics=sorted({_metric(m)[0] for e in own_results for m in e.metrics}) or None,
        model_name=model_name, eval_results=[r for e in own_results for r in _eval_results(e)] or None)
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE_PATH), model_name=model_name, repo_id=facts.repo_id,
        trained=facts.trained, about=about_text(),
        details_table=_details_table(facts), training_section=_training_section(training),
        evaluation_section=_evaluation_section(evaluations),
        efficiency_table=_efficiency_table(efficiency) if efficiency else "",
        chunk_size=facts.chunk_size, encoder_name=facts.encoder_name, decoder_name=facts.decoder_name,
        max_chunk_tokens=facts.max_chunk_tokens, decoder_window=f"{facts.decoder_window:,}",
        max_chunks=f"{facts.max_chunks:,}", max_context_chars=_approx(facts.max_chunks * facts.chunk_size),
        compression=facts.compression)


def _own_results(evaluations: list[EvalSummary], system: str | None) -> list[EvalSummary]:
    if system is not None:
        own = [e for e in evaluations if e.system == system]
        if evaluations and not own:
            found = sorted({str(e.system) for e in evaluations})
            raise CardInputError(f"No evaluation summary has system {system!r}; the summaries have {found}.")
        return own
    systems = {e.system for e in evaluations}
    if len(systems) > 1:
        raise CardInputError(f"The evaluation summaries come from several systems {sorted(map(str, systems))}: "
                             "name this model's with --system so that baselines stay out of the model-index.")
    return list(evaluations)


def _eval_results(summary: EvalSummary) -> list[EvalResult]:
    task_type = next((TASK_TYPES[t] for t in summary.tasks if t in TASK_TYPES), "text-generation")
    return [EvalResult(task_type=task_type, task_name=", ".join(summary.tasks) or None, dataset_type=summary.dataset,
                       dataset_name=summary.dataset, dataset_split=summary.split,
                       metric_type=_metric(name)[0], metric_name=_metric(name)[1], metric_value=value)
            for name, value in summary.metrics.items()]


def _metric(name: str) -> tuple[str, str]:
    """(Hub metric type, display name) of a harness metric; unknown names stand for themselves."""
    return METRIC_NAMES.get(name, (name, name))


def _training_datasets(training: dict | None) -> list[str]:
    if not training:
        return []
    names = training.get("datasets", training.get("dataset", []))
    return [names] if isinstance(names, str) else [str(n) for n in names]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """Markdown table; numbers are shown with at most 4 decimals."""
    return markdown_table(header, [[_cell(value) for value in row] for row in rows]).rstrip("\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "–" if value is None else str(value)


def _approx(number: float) -> str:
    for size, unit in ((1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if number >= size:
            return f"{number / size:.1f} {unit}"
    return f"{number:.0f}"


def _details_table(facts: ModelFacts) -> str:
    overlap = f", consecutive chunks overlap by {facts.chunk_overlap:.0%}" if facts.chunk_overlap else ""
    if not facts.trained:
        weights = "encoder and decoder as pretrained, adapter randomly initialized (untrained)"
    elif facts.lora_merged:
        weights = "trained LoRA merged into the encoder and decoder, trained adapter"
    else:
        weights = "pretrained base plus the trained LoRA and adapter (`adapter_model.safetensors`), applied on load"
    rows = [
        ["Chunk encoder", f"[{facts.encoder_name}](https://huggingface.co/{facts.encoder_name}), "
                          f"{facts.pooling} pooling, at most {facts.max_chunk_tokens} tokens per chunk"],
        ["Adapter", f"{facts.adapter_num_layers}-layer MLP, one chunk vector -> one decoder input embedding"],
        ["Chunk tokens", facts.compression[0].upper() + facts.compression[1:]],
        ["Decoder", f"[{facts.decoder_name}](https://huggingface.co/{facts.decoder_name}), "
                    f"window {facts.decoder_window:,} tokens"],
        ["Chunk size", f"up to {facts.chunk_size} characters, cut at sentence ends where possible{overlap}"],
        ["Compression", f"one chunk token replaces about {facts.tokens_per_chunk / facts.chunk_tokens_per_chunk:.0f} "
                        "decoder tokens of English text (measured on the text of \"What E2LLM is\" above)"],
        ["Longest context",
         f"about {facts.max_chunks:,} chunks, {_approx(facts.max_chunks * facts.chunk_size)} characters"],
        ["Parameters", f"{facts.num_parameters / 1e6:.1f} M ({facts.dtype})"],
        ["Weights", weights],
    ]
    return _table(["", ""], rows)


def _training_section(training: dict | None) -> str:
    if not training:
        return "No training summary was published with this model."
    rows = [[setting, value] for setting, value in training.items()]
    return "Settings and totals from the training run:\n\n" + _table(["Setting", "Value"], rows)


def _evaluation_section(evaluations: list[EvalSummary]) -> str:
    if not evaluations:
        return "No evaluation results were published with this model."
    metrics = list(dict.fromkeys(name for e in evaluations for name in e.metrics))
    header = ["System", "Dataset", "Task", "Examples"] + [_metric(m)[1] for m in metrics]
    rows = [[e.system, e.dataset, e.tasks, e.count] + [e.metrics.get(m) for m in metrics] for e in evaluations]
    return "Scores from the project's evaluation harness (–: not measured):\n\n" + _table(header, rows)


def _efficiency_table(efficiency: list[dict] | dict) -> str:
    if isinstance(efficiency, dict):
        return _table(["Measure", "Value"], [[key, value] for key, value in efficiency.items()])
    columns = list(dict.fromkeys(key for row in efficiency for key in row))
    return _table(columns, [[row.get(c) for c in columns] for row in efficiency])
