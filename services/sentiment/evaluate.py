"""Measure the sentiment scorer on labelled sentences, beside plain VADER and the majority class.

    python -m services.sentiment.evaluate PATH [PATH ...] [--json] [--neutral-band B]

Each file holds one ``sentence@label`` per line (the label after the last '@': positive, neutral or
negative), UTF-8 or else Latin-1; blank lines are skipped. A malformed line stops the run before any
scoring, with the file and line number on stderr and exit status 2. For each file, and for all of
them together when there are several, it prints accuracy, macro-F1 and the confusion matrix of three
scorers: ours, plain VADER (compound +-0.05) and always the file's majority class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypedDict

from sklearn.metrics import (  # type: ignore[import-untyped]  # no stubs, and not in pyproject's list
    accuracy_score,
    confusion_matrix,
    f1_score,
)

from services.sentiment.scoring import DEFAULT_NEUTRAL_BAND, SentimentScorer, TextScore, vader_label

LABELS = ("negative", "neutral", "positive")
SCORERS = ("ours", "vader", "majority")

Row = tuple[str, str]  # sentence, true label


class ScorerFigures(TypedDict):
    accuracy: float
    macro_f1: float
    confusion: list[list[int]]  # rows = true label, columns = predicted, both in LABELS order
    sentences_per_second: float | None  # None for the majority class, which reads nothing


class Evaluation(TypedDict):
    sentences: int
    label_counts: dict[str, int]
    majority_label: str
    labels: list[str]
    scorers: dict[str, ScorerFigures]


class Scorer(Protocol):
    """What ``evaluate`` needs of a scorer (``SentimentScorer``, or a stand-in in tests)."""

    def score(self, text: str) -> TextScore: ...

    def vader(self, text: str) -> float: ...


class DataError(ValueError):
    """A labelled file that cannot be read; the message names the file and line."""


def read_rows(path: Path) -> list[Row]:
    """The labelled sentences of ``path``: UTF-8, or Latin-1 for the whole file when it is not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        sentence, at, label = line.rpartition("@")
        if not at:
            raise DataError(f"{path}:{number}: no '@' before a label in {line[:60]!r}")
        label = label.strip()
        if label not in LABELS:
            raise DataError(f"{path}:{number}: label {label[:30]!r} is not one of {', '.join(LABELS)}")
        if not sentence.strip():
            raise DataError(f"{path}:{number}: empty sentence")
        rows.append((sentence.strip(), label))
    if not rows:
        raise DataError(f"{path}: no labelled lines")
    return rows


def evaluate(
    rows: Sequence[Row],
    scorer: Scorer | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Evaluation:
    """Accuracy, macro-F1, confusion matrix and throughput of ours, VADER and the majority class."""
    if not rows:
        raise ValueError("nothing to evaluate")
    scorer = scorer or SentimentScorer()
    texts = [text for text, _ in rows]
    truth = [label for _, label in rows]
    counts = Counter(truth)
    # ties go to the label listed first, so the baseline does not depend on the order of the rows
    majority = max(LABELS, key=lambda label: (counts[label], -LABELS.index(label)))

    started = clock()
    scores = [scorer.score(text) for text in texts]
    ours_seconds = clock() - started
    started = clock()
    compounds = [scorer.vader(text) for text in texts]
    vader_seconds = clock() - started

    predictions = {
        "ours": [item.label for item in scores],
        "vader": [vader_label(compound) for compound in compounds],
        "majority": [majority] * len(rows),
    }
    seconds: dict[str, float | None] = {"ours": ours_seconds, "vader": vader_seconds, "majority": None}
    return {
        "sentences": len(rows),
        "label_counts": {label: counts[label] for label in LABELS},
        "majority_label": majority,
        "labels": list(LABELS),
        "scorers": {name: _figures(truth, predictions[name], seconds[name]) for name in SCORERS},
    }


def _figures(truth: list[str], predicted: list[str], seconds: float | None) -> ScorerFigures:
    matrix = confusion_matrix(truth, predicted, labels=list(LABELS))
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro", zero_division=0)), 4),
        "confusion": [[int(cell) for cell in row] for row in matrix],
        "sentences_per_second": None if not seconds else round(len(truth) / seconds, 1),
    }


def format_evaluation(title: str, result: Evaluation) -> str:
    """A plain-text report of one evaluation."""
    counts = ", ".join(f"{label} {result['label_counts'][label]}" for label in LABELS)
    lines = [
        f"{title}: {result['sentences']} sentences ({counts}; majority {result['majority_label']})",
        f"  {'scorer':<10}{'accuracy':>10}{'macro-F1':>10}{'sentences/s':>14}",
    ]
    for name in SCORERS:
        figures = result["scorers"][name]
        rate = figures["sentences_per_second"]
        shown = "-" if rate is None else f"{rate:,.0f}"
        lines.append(f"  {name:<10}{figures['accuracy']:>10.4f}{figures['macro_f1']:>10.4f}{shown:>14}")
    for name in SCORERS:
        lines.append(f"  confusion matrix, {name} (rows = true label, columns = predicted):")
        lines.append("    " + " " * 10 + "".join(f"{label:>10}" for label in LABELS))
        for label, row in zip(LABELS, result["scorers"][name]["confusion"], strict=True):
            lines.append(f"    {label:<10}" + "".join(f"{cell:>10}" for cell in row))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.sentiment.evaluate",
        description="Accuracy, macro-F1 and confusion matrices of the sentiment scorer on labelled files.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file of sentence@label lines")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--neutral-band",
        type=float,
        default=DEFAULT_NEUTRAL_BAND,
        help=f"score magnitude below which a sentence is neutral (default {DEFAULT_NEUTRAL_BAND})",
    )
    args = parser.parse_args(argv)
    try:
        files = [(path, read_rows(path)) for path in args.paths]
        scorer = SentimentScorer(args.neutral_band)
    except (DataError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2

    results = [(str(path), evaluate(rows, scorer)) for path, rows in files]
    total = evaluate([row for _, rows in files for row in rows], scorer) if len(files) > 1 else None
    if args.json:
        report = {
            "neutral_band": args.neutral_band,
            "files": [{"path": path, **result} for path, result in results],
            "total": total,
        }
        print(json.dumps(report, indent=2))
    else:
        sections = [format_evaluation(path, result) for path, result in results]
        if total is not None:
            sections.append(format_evaluation("total", total))
        print(f"neutral band {args.neutral_band}\n\n" + "\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
