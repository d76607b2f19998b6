"""Evaluation harness: the E2LLM paper's evaluation (section 4.2) for any E2LLM checkpoint and the
baselines it is compared with, all on the same decoder and the same data.

Systems (`evaluation.systems`): `e2llm` (chunk tokens), `truncation` (plain decoder, context cut in
the middle to fit its window), `full` (plain decoder, whole context; examples that do not fit are
skipped and counted) and `rag` (top-k chunks by the E2LLM encoder's similarity, paper: 40).
`--model` names a checkpoint folder or Hub id; without it, the embedded default is used.

Commands:

    # QA / summarization on any uniform JSONL (metrics follow each example's `task`)
    python -m evaluation.run --system e2llm --data ../shared/data/qmsum/val.jsonl --output runs/e2llm-qmsum --limit 5
    # needle in a haystack: a grid of lengths (decoder tokens) x depths (%), results.json + heatmap.png
    python -m evaluation.niah --system rag --variant number --lengths 4000 8000 --output runs/rag-niah
    # several runs -> one comparison table (systems x datasets) and the NIAH heatmaps
    python -m evaluation.report runs/e2llm-qmsum runs/rag-niah --output runs/report

Each run folder holds run.json, predictions.jsonl (rerunning the same command resumes), summary.json
and summary.md. Scores are fractions in [0, 1]; tables show them x 100.

Modules: `metrics` (normalization, QA F1, option accuracy, ROUGE and G-mean, needle recall), `data`
(load and validate the uniform JSONL), `systems` (the four systems, `predict(example) -> str`),
`niah` (token-length haystack, grid, heatmap; `python -m evaluation.niah`; needles and their insertion
come from `modeling_e2llm.haystacks`), `harness` (the predict-score-resume loop both commands share),
`run` and `report` (commands), `demo` (did the demo checkpoint learn: `python -m evaluation.demo`). `run --haystack-tokens N`
hides each example's context in an N-token essay haystack (SQuAD- or bAbI-in-a-haystack). `report`
compares each dataset on the examples all its runs attempted.
"""
