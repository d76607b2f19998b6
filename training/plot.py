"""Loss curves of a run (the Trainer's log history) as a PNG."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("loss", "weighted loss"), ("loss_understanding", "understanding (restate)"),
          ("loss_reasoning", "reasoning (answer)"))


def plot_losses(log_history: list[dict], path: str | Path) -> Path:
    """Write the training loss and the two tasks' losses against the step to `path`; return it."""
    figure, axes = plt.subplots(figsize=(7, 4))
    for key, label in CURVES:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per target token)")
    axes.set_title("E2LLM training")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
