"""Model card for a published E2LLM: Hub metadata, model-index from evaluation summaries, and the README body."""

from .card import (
    CardInputError,
    EvalSummary,
    about_text,
    ModelFacts,
    build_model_card,
    load_efficiency,
    load_eval_summary,
    load_training_summary,
    model_facts,
)

__all__ = ["CardInputError", "EvalSummary", "ModelFacts", "about_text", "build_model_card", "load_efficiency",
           "load_eval_summary", "load_training_summary", "model_facts"]
