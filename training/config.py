"""The YAML training config: model, processor, trainable parts, task mix, data sources, trainer settings.

```yaml
model:      {encoder: null, decoder: null, config: {lora_rank: 8}}   # null paths: the embedded default
processor:  {chunk_size: 512, chunk_overlap: 0.0}                   # chunk_overlap 0.3: the +overlap ablation
trainable:  {encoder: true, decoder: true}                          # false: the -E / -D ablations
tasks:      {understanding: true, understanding_ratio: 0.5, understanding_weight: 1.0, window_chunks: 4,
             hybrid_ratio: 0.0, hybrid_top_k: 3}                    # hybrid: reasoning rows that quote passages
data:       {seed: 0, understanding: [<source>...], reasoning: [<source>...]}   # see training/sources.py
adapter_learning_rate: null                                         # null: the trainer's learning_rate
max_minutes: null                                                   # stop (and save) after this much training time
training:   {output_dir: runs/x, max_steps: 100, ...}               # trl.SFTConfig arguments
```
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class ModelSettings:
    encoder: str | None = None
    decoder: str | None = None
    config: dict = field(default_factory=dict)  # E2LLMConfig keyword arguments


@dataclass
class ProcessorSettings:
    chunk_size: int = 512
    chunk_overlap: float = 0.0
    hybrid_top_k: int = 0  # saved with the model: hybrid recall on by default when > 0
    hybrid_token_budget: int = 1024  # decoder tokens quoted passages may take (training and inference)


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
    stopping_strategy: str = "all_exhausted"  # datasets.interleave_datasets: when the mix ends

    def __post_init__(self):
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
    understanding: list = field(default_factory=list)
    reasoning: list = field(default_factory=list)


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    processor: ProcessorSettings = field(default_factory=ProcessorSettings)
    trainable: TrainableSettings = field(default_factory=TrainableSettings)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    data: DataSettings = field(default_factory=DataSettings)
    adapter_learning_rate: float | None = None
    max_minutes: float | None = None  # a time budget on shared machines; pair it with a constant LR schedule
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.trainable.encoder and not self.trainable.decoder:
            raise ValueError("trainable.encoder and trainable.decoder are both false: LoRA would have nothing to "
                             "train. Freeze one of them at most (-E or -D).")
        if not self.data.reasoning and not (self.tasks.understanding and self.data.understanding):
            raise ValueError("The config names no training data: add sources under data.reasoning or data.understanding.")

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        return _build(cls, raw, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {})


def _build(cls, raw: dict, where: str):
    """`cls(**raw)` with nested dataclasses built from their sub-dicts and unknown keys named."""
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {where}; known keys: {sorted(known)}.")
    values = {}
    for name, value in raw.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        is_section = hasattr(default, "__dataclass_fields__")
        values[name] = _build(type(default), value or {}, f"{where}.{name}") if is_section else value
    return cls(**values)
