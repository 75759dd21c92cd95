"""The evaluation CLI: figures worked out by hand, file decoding, and bad input rejected with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.sentiment.evaluate import DataError, evaluate, format_evaluation, main, read_rows
from services.sentiment.scoring import TextScore

ROOT = Path(__file__).resolve().parents[2]

# sentence -> (true label, our label, VADER compound); VADER's label is +-0.05 and beyond
CASES = {
    "one": ("positive", "positive", 0.5),  # vader positive
    "two": ("positive", "neutral", 0.0),  # vader neutral
    "three": ("neutral", "neutral", 0.3),  # vader positive
    "four": ("neutral", "neutral", 0.04),  # vader neutral: inside the band
    "five": ("negative", "negative", -0.05),  # vader negative: on the threshold
    "six": ("negative", "positive", 0.05),  # vader positive: on the threshold
    "seven": ("neutral", "negative", -0.6),  # vader negative
}


class StubScorer:
    """Answers from CASES, so that every figure can be worked out by hand."""

    def score(self, text: str) -> TextScore:
        _, ours, compound = CASES[text]
        return TextScore({"negative": -0.5, "neutral": 0.0, "positive": 0.5}[ours], ours, compound, ())

    def vader(self, text: str) -> float:
        return CASES[text][2]


def ticking(*times: float) -> Iterator[float]:
    yield from times


def test_figures_by_hand() -> None:
    rows = [(text, truth) for text, (truth, _, _) in CASES.items()]
    clock = ticking(0.0, 2.0, 10.0, 11.0)
    result = evaluate(rows, StubScorer(), clock=lambda: next(clock))

    assert result["sentences"] == 7
    assert result["label_counts"] == {"negative": 2, "neutral": 3, "positive": 2}
    assert result["majority_label"] == "neutral"
    assert result["labels"] == ["negative", "neutral", "positive"]

    ours = result["scorers"]["ours"]
    # right: one, three, four, five -> 4 of 7
    assert ours["accuracy"] == 0.5714
    # F1: negative 1/2 (TP five, FP seven, FN six), neutral 2/3 (TP three and four, FP two, FN seven),
    # positive 1/2 (TP one, FP six, FN two): (0.5 + 0.6667 + 0.5) / 3
    assert ours["macro_f1"] == 0.5556
    assert ours["confusion"] == [[1, 0, 1], [1, 2, 0], [0, 1, 1]]
    assert ours["sentences_per_second"] == 3.5  # 7 sentences in 2 clock seconds

    vader = result["scorers"]["vader"]
    # VADER says positive, neutral, positive, neutral, negative, positive, negative: right on one, four,
    # five -> 3 of 7
    assert vader["accuracy"] == 0.4286
    # F1: negative 1/2; neutral P 1/2 R 1/3 -> 0.4; positive P 1/3 R 1/2 -> 0.4: 1.3 / 3
    assert vader["macro_f1"] == 0.4333
    assert vader["confusion"] == [[1, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert vader["sentences_per_second"] == 7.0

    majority = result["scorers"]["majority"]
    assert majority["accuracy"] == 0.4286
    # F1: negative 0, neutral P 3/7 R 1 -> 0.6, positive 0
    assert majority["macro_f1"] == 0.2
    assert majority["confusion"] == [[0, 2, 0], [0, 3, 0], [0, 2, 0]]
    assert majority["sentences_per_second"] is None


def test_majority_tie_goes_to_the_first_label() -> None:
    rows = [("one", "positive"), ("five", "negative")]
    assert evaluate(rows, StubScorer())["majority_label"] == "negative"


def test_nothing_to_evaluate() -> None:
    with pytest.raises(ValueError, match="nothing"):
        evaluate([], StubScorer())


def test_format_has_every_figure() -> None:
    rows = [(text, truth) for text, (truth, _, _) in CASES.items()]
    text = format_evaluation("cases", evaluate(rows, StubScorer()))
    assert text.splitlines()[0] == "cases: 7 sentences (negative 2, neutral 3, positive 2; majority neutral)"
    assert "  ours          0.5714    0.5556" in text
    assert "  majority      0.4286    0.2000             -" in text
    assert text.count("confusion matrix") == 3
    assert "    neutral            1         2         0" in text


# --- files -----------------------------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_read_rows_splits_on_the_last_at(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.txt", b"Mail ir@example.com for the results@neutral\n\n   \nProfit rose@positive \n"
    )
    assert read_rows(path) == [
        ("Mail ir@example.com for the results", "neutral"),
        ("Profit rose", "positive"),
    ]


def test_latin1_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "latin.txt",
        "Nestlé profits rose 5 %@positive\nCosts fell in Espoo@positive\n".encode("latin-1"),
    )
    assert read_rows(path)[0] == ("Nestlé profits rose 5 %", "positive")


def test_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path / "utf8.txt", "Profit rose to €5 million@positive\n".encode())
    assert read_rows(path) == [("Profit rose to €5 million", "positive")]


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"Profit rose@positive\nno label here\n", 2, "no '@'"),
        (b"Profit rose@positive\n\nCosts fell@good\n", 3, "'good' is not one of"),
        (b"@negative\n", 1, "empty sentence"),
    ],
)
def test_bad_line(tmp_path: Path, content: bytes, line: int, reason: str) -> None:
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(DataError, match=reason) as caught:
        read_rows(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no labelled lines"):
        read_rows(write(tmp_path / "empty.txt", b"\n  \n"))


# --- the command -----------------------------------------------------------------------------------

GOOD = (
    b"Revenue rose 10% in the quarter@positive\nThe bank cut 300 jobs@negative\nThe AGM is on 3 May@neutral\n"
)


def test_main_prints_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "good.txt", GOOD)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 3 sentences (negative 1, neutral 1, positive 1; majority negative)" in out
    assert "  ours          1.0000    1.0000" in out
    assert "total" not in out


def test_main_json_with_a_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = write(tmp_path / "one.txt", GOOD)
    two = write(
        tmp_path / "two.txt", "Net loss widened@negative\nCafé sales grew@positive\n".encode("latin-1")
    )
    assert main([str(one), str(two), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [item["path"] for item in report["files"]] == [str(one), str(two)]
    assert report["total"]["sentences"] == 5
    assert report["total"]["scorers"]["ours"]["accuracy"] == 1.0
    assert set(report["files"][1]["scorers"]) == {"ours", "vader", "majority"}


def test_main_rejects_a_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.txt", GOOD)
    bad = write(tmp_path / "bad.txt", b"Profit rose@positive\nCosts fell@bullish\n")
    assert main([str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}:2: label 'bullish'" in captured.err


def test_main_rejects_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nowhere.txt")]) == 2
    assert "nowhere.txt: cannot read" in capsys.readouterr().err


def test_module_runs_as_a_command(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.txt", b"Profit rose@positive\nno label\n")
    done = subprocess.run(
        [sys.executable, "-m", "services.sentiment.evaluate", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{bad}:2: no '@'" in done.stderr
