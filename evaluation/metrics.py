"""Scores of the paper's evaluation (section 4.2): QA F1, QuALITY option accuracy, ROUGE and needle recall.

Every score is a fraction in [0, 1]; tables multiply by 100. The metric family follows the example's
`task`: summaries (QMSum, GovReport, SQuALITY) get ROUGE, needle-in-a-haystack gets needle recall, every
other task gets QA F1, and QuALITY also gets option accuracy.
"""

import math
import re
import string
from collections import Counter
from functools import lru_cache

ROUGE_TASKS = frozenset({"qmsum", "govreport", "squality"})
OPTION_TASKS = frozenset({"quality"})
NEEDLE_TASKS = frozenset({"niah"})
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD / ZeroSCROLLS normalization: lower-case, drop punctuation and articles, collapse white space."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_scores(prediction: str, references: list[str]) -> dict[str, float]:
    """Unigram precision, recall and F1 of `prediction` against the best-matching reference (by F1)."""
    if not references:
        raise ValueError("QA scoring needs at least one reference answer.")
    return max((_token_overlap(prediction, reference) for reference in references), key=lambda s: s["qa_f1"])


def _token_overlap(prediction: str, reference: str) -> dict[str, float]:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        # SQuAD v2 convention: two answers that normalize to nothing agree; one empty side scores 0.
        agree = float(predicted == expected)
        return {"qa_precision": agree, "qa_recall": agree, "qa_f1": agree}
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return {"qa_precision": 0.0, "qa_recall": 0.0, "qa_f1": 0.0}
    precision, recall = common / len(predicted), common / len(expected)
    return {"qa_precision": precision, "qa_recall": recall, "qa_f1": 2 * precision * recall / (precision + recall)}


def pick_option(prediction: str, options: list[str]) -> int | None:
    """Index of the option that `prediction` matches best (QA F1), or None when none or several tie for best."""
    f1s = [_token_overlap(prediction, option)["qa_f1"] for option in options]
    best = max(f1s, default=0.0)
    if best == 0.0 or f1s.count(best) > 1:
        return None
    return f1s.index(best)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure, each taken from the reference that gives it the highest value."""
    if not references:
        raise ValueError("ROUGE needs at least one reference summary.")
    scores = _rouge_scorer().score_multi(references, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def geometric_mean(values: list[float]) -> float:
    """(v1 * ... * vn) ** (1 / n); 0 when any value is 0."""
    if any(value <= 0 for value in values):
        return 0.0
    return math.exp(sum(math.log(value) for value in values) / len(values))


def needle_recall(prediction: str, key_facts: list[str]) -> float:
    """Fraction of `key_facts` that appear, as whole normalized words, in `prediction`."""
    if not key_facts:
        raise ValueError("Needle scoring needs at least one key fact.")
    padded = f" {normalize_answer(prediction)} "
    return sum(f" {normalize_answer(fact)} " in padded for fact in key_facts) / len(key_facts)


def score_prediction(task: str, prediction: str, references: list[str], meta: dict) -> dict[str, float]:
    """Every per-example score of the task's metric family (see the module docstring)."""
    if task in ROUGE_TASKS:
        return rouge_scores(prediction, references)
    if task in NEEDLE_TASKS:
        return {"needle_recall": needle_recall(prediction, meta["key_facts"])}
    scores = qa_scores(prediction, references)
    if task in OPTION_TASKS:
        scores["option_accuracy"] = float(pick_option(prediction, meta["options"]) == meta["gold_index"])
    return scores


def aggregate(per_example: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every score over the examples that have it, plus `rouge_gmean`, the geometric mean of the
    mean ROUGE-1/2/L (as SCROLLS and ZeroSCROLLS report it)."""
    names = dict.fromkeys(name for scores in per_example for name in scores)
    means = {}
    for name in names:
        values = [scores[name] for scores in per_example if name in scores]
        means[name] = sum(values) / len(values)
    if all(name in means for name in ROUGE_TYPES):
        means["rouge_gmean"] = geometric_mean([means[name] for name in ROUGE_TYPES])
    return means


def primary_metric(task: str) -> str:
    """The one number per dataset in the comparison table."""
    if task in ROUGE_TASKS:
        return "rouge_gmean"
    if task in NEEDLE_TASKS:
        return "needle_recall"
    if task in OPTION_TASKS:
        return "option_accuracy"
    return "qa_f1"
