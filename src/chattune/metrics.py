"""Score predictions against references: pure functions, no model, no files.

Metrics: exact (normalised exact match), accuracy (classification: the one allowed label an
answer names; answers naming none or several are unparseable and count as wrong), rouge
(ROUGE-L F1; CJK characters are scored one per token, other text per word) and stop_rate
(share of answers that ended on an end-of-turn token). Held-out loss needs a model; see eval/runner.py. Lives at the top level
because training (in-loop eval), eval and report all score with it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

GENERATION_METRICS = ("exact", "accuracy", "rouge", "stop_rate")
ALL_METRICS = ("loss", *GENERATION_METRICS)
HIGHER_IS_BETTER = {"loss": False, "exact": True, "accuracy": True, "rouge": True, "stop_rate": True}

_CJK = (
    r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"  # kana, CJK, hangul
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}\W]+", re.UNICODE)
_PUNCT_EDGES = re.compile(r"^[\s\W_]+|[\s\W_]+$", re.UNICODE)


@dataclass
class Score:
    """One metric's value plus per-row detail (True/False per row, and unparseable rows)."""

    name: str
    value: float
    per_row: list = field(default_factory=list)
    unparseable: list[int] = field(default_factory=list)  # row indices (accuracy only)


def normalize(text: str) -> str:
    """NFKC, lower case, collapse whitespace, strip punctuation at both ends."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = " ".join(text.split())
    return _PUNCT_EDGES.sub("", text)


def exact_match(predictions: list[str], references: list[str]) -> Score:
    hits = [normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)]
    return Score("exact", _mean(hits), hits)


def _label_pattern(norm_label: str) -> re.Pattern:
    """A normalised label as a whole word (Latin letters/digits may not touch it on either side)."""
    return re.compile(r"(?<![a-z0-9_])" + re.escape(norm_label) + r"(?![a-z0-9_])")


def parse_label(answer: str, labels: list[str]) -> str | None:
    """The single allowed label `answer` names, or None when it names none or several.

    An answer that is exactly a label wins; otherwise labels are searched as whole words
    (CJK labels as substrings), and a label found only inside a longer found label does not count.
    """
    text = normalize(answer)
    by_norm = {normalize(label): label for label in labels}
    if text in by_norm:
        return by_norm[text]
    found = {norm for norm in by_norm if norm and _label_pattern(norm).search(text)}
    found = {n for n in found if not any(n != other and n in other for other in found)}
    return by_norm[found.pop()] if len(found) == 1 else None


def accuracy(predictions: list[str], references: list[str], labels: list[str]) -> Score:
    """Share of rows whose parsed label equals the reference's label (unparseable = wrong)."""
    if not labels:
        raise ValueError("accuracy needs the allowed labels (--labels a,b,c or the references)")
    hits, unparseable = [], []
    for index, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        predicted = parse_label(pred, labels)
        if predicted is None:
            unparseable.append(index)
        gold = parse_label(ref, labels) or ref
        hits.append(predicted is not None and normalize(predicted) == normalize(gold))
    return Score("accuracy", _mean(hits), hits, unparseable)


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased tokens: each CJK character alone, runs of other word characters; no punctuation."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text or "").lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if item == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between two texts (both empty: 1.0; one empty: 0.0)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred and not ref:
        return 1.0
    common = lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge(predictions: list[str], references: list[str]) -> Score:
    values = [rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]
    return Score("rouge", _mean(values), values)


def stop_rate(stopped: list[bool]) -> Score:
    return Score("stop_rate", _mean(stopped), list(stopped))


def score_generation(name: str, predictions: list[str], references: list[str], stopped: list[bool],
                     labels: list[str] | None = None) -> Score:
    """Dispatch one generation metric by name."""
    if name == "exact":
        return exact_match(predictions, references)
    if name == "accuracy":
        return accuracy(predictions, references, labels or default_labels(references))
    if name == "rouge":
        return rouge(predictions, references)
    if name == "stop_rate":
        return stop_rate(stopped)
    raise ValueError(f"unknown generation metric {name!r}; choose from {', '.join(GENERATION_METRICS)}")


def default_labels(references: list[str]) -> list[str]:
    """The distinct reference answers, in first-seen order (a classifier's label set)."""
    return list(dict.fromkeys(r.strip() for r in references if r and r.strip()))


def parse_metric_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ALL_METRICS)}")
    return list(dict.fromkeys(names))


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0
