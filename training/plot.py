"""Loss curves of a run (the Trainer's log history) as a PNG, with the restatement probe's when it ran."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("loss", "weighted loss"), ("loss_understanding", "understanding (restate)"),
          ("loss_reasoning", "reasoning (answer)"))
PROBE_CURVES = (("probe_nll_own", "held-out chunk from its own chunk token"),
                ("probe_nll_nearby", "from a nearby chunk's"), ("probe_nll_other", "from another document's"))


def plot_losses(log_history: list[dict], path: str | Path) -> Path:
    """Write the training loss and the two tasks' losses against the step to `path` (and, beside them, the
    restatement probe's three NLLs when the log holds them); return it."""
    has_probe = any(PROBE_CURVES[0][0] in entry for entry in log_history)
    figure, panels = plt.subplots(1, 2 if has_probe else 1, figsize=(13 if has_probe else 7, 4), squeeze=False)
    _plot(panels[0][0], log_history, CURVES, "E2LLM training")
    if has_probe:
        _plot(panels[0][1], log_history, PROBE_CURVES, "restatement probe (held-out)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def _plot(axes, log_history: list[dict], curves: tuple[tuple[str, str], ...], title: str) -> None:
    for key, label in curves:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per target token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
