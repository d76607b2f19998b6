"""The YAML training config: model, processor, trainable parts, task mix, data sources, trainer settings.

```yaml
model:      {encoder: null, decoder: null, config: {lora_rank: 8},   # null paths: the embedded default
             init_from: null}                                       # a finished run whose LoRA + adapter start this one
processor:  {chunk_size: 512, chunk_overlap: 0.0}                   # chunk_overlap 0.3: the +overlap ablation
trainable:  {encoder: true, decoder: true}                          # false: the -E / -D ablations; both: adapter only
tasks:      {understanding: true, understanding_ratio: 0.5, understanding_weight: 1.0, window_chunks: 4,
             hybrid_ratio: 0.0, hybrid_top_k: 3,                    # hybrid: reasoning rows that quote passages
             windows_per_context: null, shuffle_words: false}       # N: N restate windows drawn per context
data:       {seed: 0, num_proc: 1, understanding: [<source>...], reasoning: [<source>...]}   # see training/sources.py
adapter_learning_rate: null                                         # null: the trainer's learning_rate
max_minutes: null                                                   # stop (and save) after this much training time
probe:      {every_steps: 50, chunks: 32, source: <source>}          # restatement probe on held-out chunks (absent: off)
align:      {chunks: 1500, steps: 4000, batch_size: 256,             # fit the adapter to the decoder's embeddings
             learning_rate: 1.0e-3, source: <source>}               # before training (training/align.py; absent: off)
training:   {output_dir: runs/x, max_steps: 100, ...}               # trl.SFTConfig arguments
```
"""

import argparse
import difflib
import inspect
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import yaml
from trl import SFTConfig

from modeling_e2llm import E2LLMConfig, E2LLMForCausalLM
from modeling_e2llm.configuration_e2llm import check_encoder_tokens_per_chunk_token

from .sources import source_keys

# model.config keys: E2LLMConfig's own settings (not the sub-configs and placeholder id that composing fills
# in) and the keyword arguments of from_encoder_decoder_pretrained.
MODEL_CONFIG_KEYS = (set(E2LLMConfig.__annotations__) - {"encoder_config", "text_config", "chunk_token_id"}) | {
    p.name for p in inspect.signature(E2LLMForCausalLM.from_encoder_decoder_pretrained).parameters.values()
    if p.kind is p.KEYWORD_ONLY}
SFT_FIELDS = {f.name: f for f in fields(SFTConfig)}
# training keys that count something: below 1 a run trains nothing, or (max_steps) trains for epochs instead.
AT_LEAST_ONE = ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps")


@dataclass
class ModelSettings:
    encoder: str | None = None
    decoder: str | None = None
    config: dict = field(default_factory=dict)  # E2LLMConfig keyword arguments
    init_from: str | None = None  # a finished run's final/ folder: its LoRA + adapter start this run

    def __post_init__(self):
        _check_keys(self.config, MODEL_CONFIG_KEYS, "config.model.config")
        check_encoder_tokens_per_chunk_token(self.config.get("encoder_tokens_per_chunk_token"))  # before any load
        missing = [name for name in ("adapter_model.safetensors", "demo.json")
                   if self.init_from is not None and not (Path(self.init_from) / name).is_file()]
        if missing:
            raise ValueError(f"model.init_from {self.init_from!r} holds no {missing[0]}: name the final/ folder of a "
                             "finished training run.")


@dataclass
class ProcessorSettings:
    chunk_size: int = 512
    chunk_overlap: float = 0.0
    hybrid_top_k: int = 0  # saved with the model: hybrid recall on by default when > 0
    hybrid_token_budget: int = 1024  # decoder tokens quoted passages may take (training and inference)

    def __post_init__(self):
        # The processor checks these too, but only once the models are loaded.
        _check_range("processor.chunk_size", self.chunk_size, 1)
        _check_range("processor.hybrid_top_k", self.hybrid_top_k, 0)
        _check_range("processor.hybrid_token_budget", self.hybrid_token_budget, 1)
        if not 0.0 <= self.chunk_overlap < 1.0:
            raise ValueError(f"processor.chunk_overlap is a fraction of chunk_size in [0, 1), "
                             f"got {self.chunk_overlap}.")


@dataclass
class TrainableSettings:
    encoder: bool = True  # LoRA on the encoder's last layers; false freezes it (-E)
    decoder: bool = True  # LoRA on the decoder; false freezes it (-D)


@dataclass
class TaskSettings:
    understanding: bool = True  # false: reasoning samples only (-und)
    understanding_ratio: float = 0.5  # share of understanding samples in the training mix
    understanding_weight: float = 1.0  # loss weight of understanding tokens relative to reasoning tokens
    window_chunks: int = 4  # chunks per restate sample
    hybrid_ratio: float = 0.0  # share of reasoning samples that also quote their best chunks (hybrid recall)
    hybrid_top_k: int = 3  # chunks those samples quote, within processor.hybrid_token_budget tokens
    windows_per_context: int | None = None  # restate windows drawn per context (null: every window, whole context)
    shuffle_words: bool = False  # restate windows with their words shuffled: the LM prior cannot guess them (issue 18)
    stopping_strategy: str = "all_exhausted"  # datasets.interleave_datasets: when the mix ends

    def __post_init__(self):
        _check_range("tasks.window_chunks", self.window_chunks, 1)
        if self.windows_per_context is not None:
            _check_range("tasks.windows_per_context", self.windows_per_context, 1)
        if not 0.0 <= self.understanding_ratio <= 1.0:
            raise ValueError(f"tasks.understanding_ratio must be in [0, 1], got {self.understanding_ratio}.")
        if self.understanding_weight < 0:
            raise ValueError(f"tasks.understanding_weight must be >= 0, got {self.understanding_weight}.")
        if not 0.0 <= self.hybrid_ratio <= 1.0:
            raise ValueError(f"tasks.hybrid_ratio must be in [0, 1], got {self.hybrid_ratio}.")
        if self.hybrid_ratio > 0 and self.hybrid_top_k < 1:
            raise ValueError(f"tasks.hybrid_ratio is {self.hybrid_ratio} but tasks.hybrid_top_k is "
                             f"{self.hybrid_top_k}: hybrid samples need at least one quoted chunk (hybrid_top_k >= 1).")


@dataclass
class DataSettings:
    seed: int = 0
    num_proc: int = 1  # processes that build the samples (capped at this machine's cores)
    understanding: list = field(default_factory=list)
    reasoning: list = field(default_factory=list)

    def __post_init__(self):
        _check_range("data.num_proc", self.num_proc, 1)
        for task in ("understanding", "reasoning"):
            for i, spec in enumerate(getattr(self, task)):
                _check_source(spec, f"config.data.{task}[{i}]")


@dataclass
class ProbeSettings:
    """The restatement probe (`training/probe.py`); every_steps 0 (the default): off."""

    every_steps: int = 0
    chunks: int = 32  # held-out chunks scored, each three times
    source: dict | None = None  # held-out documents: a file source whose holdout side is dev

    def __post_init__(self):
        _check_range("probe.every_steps", self.every_steps, 0)
        _check_range("probe.chunks", self.chunks, 2)
        if self.every_steps == 0:
            return
        if self.source is None:
            raise ValueError("probe.source is missing: name the held-out documents to probe, e.g. {path: "
                             "essays.jsonl, holdout: {by: [id], percent: 25, side: dev}}.")
        _check_source(self.source, "config.probe.source")
        holdout = self.source.get("holdout")
        if holdout is not None and holdout.get("side", "train") != "dev":
            raise ValueError("probe.source.holdout has no `side: dev`: the probe would score the chunks training "
                             "learns from. Add side: dev to it.")


@dataclass
class AlignSettings:
    """The adapter's first stage (`training/align.py`); chunks 0 (the default): off."""

    chunks: int = 0  # training-side chunks whose chunk tokens are paired with decoder embeddings
    steps: int = 4000  # Adam steps of the regression
    batch_size: int = 256  # chunk tokens a step
    learning_rate: float = 1.0e-3
    source: dict | None = None  # documents to take the chunks from: never the held-out side

    def __post_init__(self):
        _check_range("align.chunks", self.chunks, 0)
        _check_range("align.steps", self.steps, 1)
        _check_range("align.batch_size", self.batch_size, 1)
        if self.learning_rate <= 0:
            raise ValueError(f"align.learning_rate must be > 0, got {self.learning_rate}.")
        if self.chunks == 0:
            return
        if self.source is None:
            raise ValueError("align.source is missing: name training-side documents to fit the adapter on, e.g. "
                             "{path: books.jsonl, holdout: {by: [id], percent: 25}}.")
        _check_source(self.source, "config.align.source")
        if (self.source.get("holdout") or {}).get("side") == "dev":
            raise ValueError("align.source.holdout has `side: dev`: the fit would learn the held-out chunks that the "
                             "probe and evaluation score. Remove side: dev (the training side is the default).")


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    processor: ProcessorSettings = field(default_factory=ProcessorSettings)
    trainable: TrainableSettings = field(default_factory=TrainableSettings)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    data: DataSettings = field(default_factory=DataSettings)
    adapter_learning_rate: float | None = None
    max_minutes: float | None = None  # a time budget on shared machines; pair it with a constant LR schedule
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.adapter_learning_rate is not None and self.adapter_learning_rate <= 0:
            raise ValueError(f"adapter_learning_rate must be > 0 (null: the trainer's learning_rate), got "
                             f"{self.adapter_learning_rate}.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be above 0 (null: no time budget), got {self.max_minutes}.")
        _check_training(self.training)
        if self.align.chunks and self.model.init_from is not None:
            raise ValueError(f"align fits a new adapter, and model.init_from {self.model.init_from!r} brings a trained "
                             "one that the fit would overwrite: keep one of them (align.chunks: 0 turns the fit off).")
        if not self.data.reasoning and not (self.tasks.understanding and self.data.understanding):
            raise ValueError("The config names no training data: add sources under data.reasoning or data.understanding.")

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        return _build(cls, raw, "config")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> "TrainConfig":
        """The config in `path`, with each `KEY=VALUE` of `overrides` set first (`data.seed=2`: dotted keys
        reach into sections, the value is read as YAML), so a variant of a run needs no copy of its file."""
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        for override in overrides:
            _set(raw, override)
        return cls.from_dict(raw)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and `--set`, the same in every command that reads a training config."""
    parser.add_argument("--config", required=True, help="YAML training config (see training/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value (dotted key, YAML value), e.g. --set data.seed=2; repeatable")


def config_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The config `args` name; a mistake in it ends the command with its one-line reason, before anything loads."""
    try:
        return TrainConfig.from_yaml(args.config, args.set)
    except (OSError, TypeError, ValueError, yaml.YAMLError) as error:
        parser.exit(2, f"error: {args.config}: {error}\n")


def _set(raw: dict, override: str) -> None:
    """Set `raw[a][b] = value` for the override `a.b=value`, making missing sections as it goes."""
    key, equals, value = override.partition("=")
    if not equals or not key:
        raise ValueError(f"--set {override!r}: write KEY=VALUE, e.g. --set data.seed=2.")
    *sections, name = key.split(".")
    for section in sections:
        raw = raw.setdefault(section, {})
        if not isinstance(raw, dict):
            raise ValueError(f"--set {override!r}: {section} is not a section of the config.")
    raw[name] = yaml.safe_load(value)


def _build(cls, raw: dict, where: str):
    """`cls(**raw)` with nested dataclasses built from their sub-dicts and unknown keys named."""
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}.")
    known = {f.name: f for f in fields(cls)}
    _check_keys(raw, known, where)
    values = {}
    for name, value in raw.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        if hasattr(default, "__dataclass_fields__"):  # a section; empty in YAML (null) means its defaults
            values[name] = _build(type(default), {} if value is None else value, f"{where}.{name}")
        else:
            values[name] = _check_type(value, known[name].type, f"{where}.{name}")
    return cls(**values)


def _check_type(value, annotation, where: str):
    """`value` if it has the annotated type (an int passes for a float); YAML reads `1e-3` as a string and
    `true` where a number was meant as a bool, which would fail much later or mean something else."""
    allowed = typing.get_args(annotation) or (annotation,)
    allowed += (int,) if float in allowed else ()
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value
    names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in dict.fromkeys(allowed))
    hint = " (PyYAML reads 1e-3 as text: write 1.0e-3)" if float in allowed and _is_number(value) else ""
    raise TypeError(f"{where} must be {names}, got {type(value).__name__} {value!r}{hint}.")


def _check_source(spec, where: str) -> None:
    if isinstance(spec, datasets.Dataset):  # given in Python rather than YAML: its columns are checked on use
        return
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a mapping such as {{path: data.jsonl}}, got {type(spec).__name__}.")
    _check_keys(spec, source_keys(spec, where), where)
    if isinstance(spec.get("haystack"), dict):
        _check_source(spec["haystack"], f"{where}.haystack")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def _check_keys(values: dict, known, where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        meant = "; ".join(f"{name!r}: did you mean {match[0]!r}?" for name, match in close.items() if match)
        listing = f"known keys: {sorted(known)}" if len(known) <= 30 else "see trl.SFTConfig for the known keys"
        raise ValueError(f"Unknown key(s) {unknown} in {where}" + (f" ({meant})" if meant else "") + f"; {listing}.")


def _check_range(where: str, value, minimum) -> None:
    if value < minimum:
        raise ValueError(f"{where} must be at least {minimum}, got {value}.")


def _check_training(training: dict) -> None:
    """The trl.SFTConfig arguments: known names, numbers where numbers go, counts that train something."""
    _check_keys(training, SFT_FIELDS, "config.training (trl.SFTConfig arguments)")
    for name, value in training.items():
        annotation = SFT_FIELDS[name].type
        kinds = set(typing.get_args(annotation) or (annotation,))
        if kinds <= {int, float, type(None)}:  # a number field: "1e-3" or "ten" would fail inside the trainer
            _check_type(value, annotation, f"config.training.{name}")
    for name in AT_LEAST_ONE:
        if name in training:
            _check_range(f"config.training.{name}", training[name], 1)
    steps = training.get("max_steps", -1)
    if steps != -1 and steps < 1:
        raise ValueError(f"config.training.max_steps must be at least 1 (or -1: train num_train_epochs), got {steps}.")
    if training.get("learning_rate", 1) <= 0:
        raise ValueError(f"config.training.learning_rate must be > 0, got {training['learning_rate']}.")
