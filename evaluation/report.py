"""Collect several runs into one comparison (systems x datasets, shaped like the paper's Table 2):

    python -m evaluation.report RUN_DIR... --output DIR

Writes DIR/comparison.md (the main table with each dataset's primary metric, then every metric of
every run) and, when NIAH runs are among them, DIR/niah_heatmaps.png with one heatmap per run.
Runs on the same dataset are compared on the same examples: those that every one of them attempted
(a run with --limit 10 beside runs with --limit 3 counts its first 3).
"""

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from modeling_e2llm.markdown import markdown_table

from .harness import PREDICTIONS_FILE, RUN_FILE, SUMMARY_FILE, read_predictions, summarize
from .niah import RESULTS_FILE, draw_heatmap

METRIC_LABELS = {"rouge_gmean": "ROUGE G-mean", "option_accuracy": "accuracy", "qa_f1": "F1",
                 "needle_recall": "needle recall"}
COMPARISON_FILE, HEATMAPS_FILE = "comparison.md", "niah_heatmaps.png"


def load_run(run_dir: str | Path) -> dict:
    """A run's summary.json plus its "settings" (run.json), "records" (predictions by id), "dir" and,
    for a NIAH run, its grid under "niah"."""
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {SUMMARY_FILE}: pass folders written by evaluation.run "
                                "or evaluation.niah (a run writes it when it finishes).")
    run = json.loads((run_dir / SUMMARY_FILE).read_text())
    run.update(settings=json.loads((run_dir / RUN_FILE).read_text()), dir=str(run_dir),
               records=read_predictions(run_dir / PREDICTIONS_FILE))
    if (run_dir / RESULTS_FILE).is_file():
        run["niah"] = json.loads((run_dir / RESULTS_FILE).read_text())
    return run


def on_common_examples(runs: list[dict]) -> list[dict]:
    """Each run summarized again over the examples that every run on its dataset attempted (scored or
    skipped), so that a column of the comparison compares the same examples."""
    aligned = []
    for run in runs:
        peers = [peer for peer in runs if peer["dataset"] == run["dataset"]]
        common = [key for key in run["records"] if all(key in peer["records"] for peer in peers)]
        if not common:
            raise ValueError(f"The runs on {run['dataset']} ({', '.join(peer['dir'] for peer in peers)}) share "
                             "no example: run them on the same data file.")
        aligned.append({**run, **summarize([run["records"][key] for key in common], run["settings"])})
    return aligned


def _row_label(run: dict, several_models: bool) -> str:
    return f"{run['system']} ({run['model']})" if several_models else run["system"]


def comparison_table(runs: list[dict]) -> str:
    """Markdown: a row per system, a column per dataset, each cell the dataset's primary metric x 100
    ("k/n skipped" noted where a system could not fit some examples)."""
    several_models = len({run["model"] for run in runs}) > 1
    rows, columns, cells = {}, {}, {}
    for run in runs:
        row, column = _row_label(run, several_models), run["dataset"]
        rows.setdefault(row, None)
        columns.setdefault(column, (run["primary_metric"], run["count"] + run["skipped"]))
        if (row, column) in cells:
            raise ValueError(f"Two runs of {row} on {column}: {cells[row, column][1]} and {run['dir']}; "
                             "pass only one of them.")
        cells[row, column] = (_cell(run), run["dir"])
    header = ["system", *(f"{column} ({METRIC_LABELS.get(metric, metric)}, n={size})"
                          for column, (metric, size) in columns.items())]
    return markdown_table(header, [[row, *(cells.get((row, column), ("",))[0] for column in columns)] for row in rows])


def _cell(run: dict) -> str:
    total = run["count"] + run["skipped"]
    if run["count"] == 0:
        return f"skipped ({total})"
    value = f"{100 * run['metrics'][run['primary_metric']]:.1f}"
    return f"{value} ({run['skipped']}/{total} skipped)" if run["skipped"] else value


def metrics_table(runs: list[dict]) -> str:
    """Markdown: every metric (x 100) of every run, with example counts and seconds per example."""
    names = list(dict.fromkeys(name for run in runs for name in run["metrics"]))
    rows = [[run["system"], run["model"], run["dataset"], run["count"], run["skipped"], run["seconds_per_example"],
             *(f"{100 * run['metrics'][name]:.1f}" if name in run["metrics"] else "" for name in names)]
            for run in runs]
    return markdown_table(["system", "model", "dataset", "n", "skipped", "s/example", *names], rows)


def save_heatmaps(niah_results: list[dict], path: str | Path) -> None:
    """All NIAH grids side by side, one shared red-to-green scale."""
    height = 0.5 * max(len(results["depths"]) for results in niah_results) + 3
    figure = Figure(figsize=(4.5 * len(niah_results) + 1, height), layout="constrained")
    axes = figure.subplots(1, len(niah_results), squeeze=False)[0]
    for ax, results in zip(axes, niah_results):
        image = draw_heatmap(ax, results)
    figure.colorbar(image, ax=list(axes), label="needle recall")
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of evaluation.run / evaluation.niah")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        runs = on_common_examples([load_run(run_dir) for run_dir in args.runs])
        report = (f"## Comparison (scores x 100; n: examples every run of the column attempted)\n\n"
                  f"{comparison_table(runs)}\n## All metrics (scores x 100)\n\n{metrics_table(runs)}")
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / COMPARISON_FILE).write_text(report)
    niah_results = [run["niah"] for run in runs if "niah" in run]
    if niah_results:
        save_heatmaps(niah_results, args.output / HEATMAPS_FILE)
    print(report)
    return report


if __name__ == "__main__":
    main()
