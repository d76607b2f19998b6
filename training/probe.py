"""The restatement probe as a training signal: every `probe.every_steps` steps, how much better the model
restates held-out chunks from their own chunk token than from a nearby or another document's chunk token
(`modeling_e2llm.restatement_probe`). The figures join the losses in `trainer.state.log_history`, the run's
`log_history.json` and `loss.png`.
"""

import logging
import time

from transformers import TrainerCallback

from modeling_e2llm import E2LLMProcessor
from modeling_e2llm.restatement_probe import ProbeChunks, probe_chunks, restatement_probe

from .config import ProbeSettings
from .sources import source_documents

logger = logging.getLogger(__name__)


class RestatementProbe(TrainerCallback):
    """Scores `chunks` at step 0 and every `every_steps` steps (and at the last step), in eval mode without
    gradients, then puts the model back in the mode it was in: dropout and gradients of training are untouched.
    Every process scores (a sharded model needs all of them in its forward) and logs into its own state; the
    log gets the probe's own cost as `probe_seconds`."""

    def __init__(self, processor: E2LLMProcessor, chunks: ProbeChunks, every_steps: int):
        self.processor, self.chunks, self.every_steps = processor, chunks, every_steps

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:  # not again when resuming
            self._probe(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0 or state.global_step == state.max_steps:
            self._probe(state, model)

    def _probe(self, state, model) -> None:
        start, was_training = time.monotonic(), model.training
        model.eval()
        try:
            figures = restatement_probe(model, self.processor, self.chunks)
        finally:
            model.train(was_training)
        figures["probe_seconds"] = time.monotonic() - start
        # Straight into the history: Trainer.log would also flush (and reset) the per-task losses mid-interval.
        state.log_history.append({**{k: round(v, 4) for k, v in figures.items()}, "step": state.global_step})
        logger.info("Restatement probe at step %d: own %.3f nats/token, gap nearby %+.3f ± %.3f, other %+.3f ± %.3f "
                    "(%.0f s)", state.global_step, figures["probe_nll_own"], figures["probe_gap_nearby"],
                    figures["probe_gap_nearby_se"], figures["probe_gap_other"], figures["probe_gap_other_se"],
                    figures["probe_seconds"])


def restatement_probe_callback(settings: ProbeSettings, processor: E2LLMProcessor, seed: int = 0) -> RestatementProbe:
    """The callback a config's `probe` section describes (its source's distinct documents, sampled by seed)."""
    documents = source_documents(settings.source, seed)
    chunks = probe_chunks(processor, documents, settings.chunks, seed)
    logger.info("Restatement probe: %d held-out chunks from %d documents, every %d steps.",
                len(chunks.own), len(documents), settings.every_steps)
    return RestatementProbe(processor, chunks, settings.every_steps)
