"""E2LLM training: sample builders, data sources, the two-task SFT trainer and the YAML-driven CLI."""

from modeling_e2llm.haystacks import understanding_windows

from .config import TrainConfig
from .samples import E2LLMCollator, build_sample, understanding_samples
from .trainer import E2LLMTrainer

__all__ = ["TrainConfig", "E2LLMTrainer", "E2LLMCollator", "build_sample", "understanding_samples",
           "understanding_windows"]
