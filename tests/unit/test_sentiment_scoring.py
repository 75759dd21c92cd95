"""The finance sentiment scorer: one test per rule family, sentences of our own, odd input, the dev file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.sentiment.evaluate import evaluate, read_rows
from services.sentiment.finance_lexicon import words
from services.sentiment.scoring import MAX_CHARS, SentimentScorer, TextScore

SCORER = SentimentScorer()  # module level: hypothesis runs many examples against one instance
DEV_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "sentiment" / "phrasebank_dev.txt"


def label(text: str) -> str:
    return SCORER.score(text).label


# Sentences written for these tests (none taken from the dev file): headline and report style, mostly
# about listed Australian companies. The first run of the scorer over them, before any rule was added
# because of them, got 42 of the first 45, 16 of the next 20 and 25 of the last 30 right.
OWN_SENTENCES = [
    ("Westpac cuts dividend as bad debts climb", "negative"),
    ("CBA shares rise after record cash profit", "positive"),
    ("NAB flags $300m remediation charge", "negative"),
    ("ANZ first-half cash profit rises 8% to $3.6 billion", "positive"),
    ("Macquarie Group downgraded to underperform by Morgan Stanley", "negative"),
    ("Qantas swings to a full-year loss as fuel costs surge", "negative"),
    ("Qantas returns to profit and reinstates dividend", "positive"),
    ("BHP beats expectations with higher iron ore output", "positive"),
    ("Rio Tinto issues profit warning on weaker copper prices", "negative"),
    ("Telstra to cut 8,000 jobs in restructuring", "negative"),
    ("Wesfarmers raises full-year earnings guidance", "positive"),
    ("Woolworths net profit fell 12% on higher costs", "negative"),
    ("Suncorp's net loss narrowed to $50m from $210m", "positive"),
    ("AMP shares slump after ASIC launches lawsuit over fees-for-no-service", "negative"),
    ("Fortescue wins $1.2bn supply contract with Chinese steelmaker", "positive"),
    ("Bendigo Bank's arrears increased in the March quarter", "negative"),
    ("Operating expenses decreased by 5% to $1.1 billion", "positive"),
    ("Net interest margin improved to 2.1% from 1.9%", "positive"),
    ("Impairment charges rose to $800 million as mortgage stress spread", "negative"),
    ("The company will hold its annual general meeting on 3 May.", "neutral"),
    ("Westpac will release its half-year results on 6 May.", "neutral"),
    ("The bank has 12,000 employees and operates 800 branches.", "neutral"),
    ("Shares in Afterpay were unchanged at $95.20.", "neutral"),
    ("ANZ appointed a new chief financial officer.", "neutral"),
    ("The board declared an interim dividend of 70 cents per share.", "neutral"),
    ("Revenue for the quarter was $2.4 billion, compared with $2.1 billion a year earlier.", "positive"),
    ("Net sales totalled $20 million compared to $25 million in the previous year.", "negative"),
    ("Operating profit was $5.1 million, up from $3.2 million.", "positive"),
    ("Crown Resorts fined $450 million over money laundering breaches", "negative"),
    ("Origin Energy did not meet its production targets this year", "negative"),
    ("Treasury Wine Estates upgraded to buy by Citi", "positive"),
    ("Star Entertainment plunges after failing to secure refinancing", "negative"),
    ("Coles to close 20 supermarkets and lay off 1,500 staff", "negative"),
    ("Orica opens new plant to expand capacity in Western Australia", "positive"),
    ("Magellan's funds under management fell sharply as clients withdrew money", "negative"),
    ("Mortgage arrears fell for a third straight month", "positive"),
    ("Unemployment rose to 4.1% in June", "negative"),
    ("JB Hi-Fi sales grew 9% on strong demand for electronics", "positive"),
    ("Santos turned to a profit in the first half", "positive"),
    ("The Reserve Bank left the cash rate unchanged at 4.35%", "neutral"),
    ("Xero signs a partnership agreement with a major US bank", "positive"),
    ("Insurance Australia Group reported a writedown of its investment portfolio", "negative"),
    ("The company's earnings per share declined to 45 cents from 52 cents", "negative"),
    ("Aristocrat plans to buy back up to $1 billion of its shares", "positive"),
    ("Zip Co's losses widened as bad debts increased", "negative"),
    # second batch
    ("Gross margin contracted to 31.2% from 34.5% due to discounting", "negative"),
    ("The group's order backlog reached a record $4.2 billion", "positive"),
    ("Free cash flow more than doubled to $640 million", "positive"),
    ("Net debt increased to $2.3 billion following the acquisition", "negative"),
    ("The miner cut its copper production guidance for the year", "negative"),
    ("Provisions for credit losses declined to $120 million", "positive"),
    ("The retailer said comparable store sales fell 3.2% in the second half", "negative"),
    ("Analysts expect earnings per share of 85 cents for the year", "neutral"),
    ("The company was sued by shareholders over misleading disclosures", "negative"),
    ("Net profit attributable to shareholders was $1.2 billion ( $0.9 billion )", "positive"),
    ("The airline will suspend flights to three regional destinations and stand down 200 staff", "negative"),
    ("The insurer's combined ratio deteriorated to 98% as claims increased", "negative"),
    ("The fund manager reported net inflows of $2 billion and raised its performance fees", "positive"),
    ("The chief executive will present at an investor conference in Sydney next week", "neutral"),
    ("Customer deposits grew 6% over the half", "positive"),
    ("The lender's cost-to-income ratio improved to 45%", "positive"),
    ("The company completed the sale of its New Zealand business", "neutral"),
    ("Shares tumbled 15% after the company withdrew its earnings guidance", "negative"),
    ("The developer entered voluntary administration owing creditors $100 million", "negative"),
    ("EBITDA margin widened to 22% from 19% on cost discipline", "positive"),
    # third batch, other markets and newswire headlines
    ("$TSLA shares jump 8% after deliveries top estimates", "positive"),
    ("Stocks making the biggest moves midday: Nike, FedEx, Micron", "neutral"),
    ("Oil prices steady ahead of OPEC meeting", "neutral"),
    ("Goldman Sachs profit misses as trading revenue slumps", "negative"),
    ("Apple to report quarterly results on Thursday", "neutral"),
    ("Boeing suspends dividend and cuts 10% of workforce", "negative"),
    ("Credit Suisse hit with $2bn loss from hedge fund collapse", "negative"),
    ("Microsoft raises quarterly dividend by 10%", "positive"),
    ("Nvidia revenue more than triples on AI chip demand", "positive"),
    ("The company did not provide a reason for the delay", "negative"),
    ("Moody's affirms the bank's A2 rating with a stable outlook", "neutral"),
    ("S&P downgrades Evergrande deeper into junk territory", "negative"),
    ("Profit before tax was flat at $1.1 billion", "neutral"),
    ("The merger is expected to close in the second quarter", "neutral"),
    ("Inflation eased to 3.4% in April, raising hopes of rate cuts", "positive"),
    ("Retail sales unexpectedly fell in March", "negative"),
    ("Costs were lower than a year ago thanks to efficiency savings", "positive"),
    ("Higher interest expenses weighed on the half-year result", "negative"),
    ("The lender reported no increase in bad debts", "positive"),
    ("Revenue declined 2% but margins expanded to a record 41%", "positive"),
    ("The board approved a share buyback of up to $500 million", "positive"),
    ("Shares were little changed in early trade", "neutral"),
    ("The company's chief executive will step down at the end of the year", "negative"),
    ("Group revenue was $3.2 billion (2023: $3.6 billion)", "negative"),
    ("Underlying EBIT grew 14% to $412 million", "positive"),
    ("Headcount rose to 5,200 from 4,800 as the company expanded into Asia", "positive"),
    ("The regulator launched an investigation into the company's lending practices", "negative"),
    ("The company has 25 million shares on issue", "neutral"),
    ("Write-downs of $1.3 billion pushed the miner to a net loss", "negative"),
    ("Annual general meeting to be held in Melbourne on 24 October", "neutral"),
]


# The scorer gets these wrong today; strict, so that a fix shows up here.
KNOWN_MISSES = {
    "Inflation eased to 3.4% in April, raising hopes of rate cuts": "a macro reading, weak evidence",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(text, expected, marks=pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[text]))
        if text in KNOWN_MISSES
        else (text, expected)
        for text, expected in OWN_SENTENCES
    ],
)
def test_own_sentence(text: str, expected: str) -> None:
    assert label(text) == expected


def test_own_sentences_accuracy() -> None:
    correct = sum(label(text) == expected for text, expected in OWN_SENTENCES)
    assert len(OWN_SENTENCES) == 95
    assert correct / len(OWN_SENTENCES) >= 0.9


def test_own_sentences_beat_vader() -> None:
    result = evaluate(OWN_SENTENCES, SCORER)
    assert result["scorers"]["ours"]["accuracy"] > result["scorers"]["vader"]["accuracy"] + 0.2


# --- one family of rules at a time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Revenue rose 10% in the quarter", "positive"),
        ("Revenue fell 10% in the quarter", "negative"),
        ("Operating profit increased to EUR 12 million", "positive"),
        ("Earnings decreased by a fifth", "negative"),
        ("Costs rose 10% in the quarter", "negative"),
        ("Costs fell 10% in the quarter", "positive"),
        ("Net debt was reduced by $200 million", "positive"),
        ("Impairments climbed sharply", "negative"),
        ("The company cut 300 jobs", "negative"),
        ("The company cut its costs", "positive"),
        ("Higher costs hurt the quarter", "negative"),
        ("Higher sales lifted the quarter", "positive"),
        ("Growth in net sales continued", "positive"),
    ],
)
def test_direction_times_subject(text: str, expected: str) -> None:
    assert label(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Net loss narrowed to EUR 2 million from EUR 5 million",
        "Losses decreased by 30%",
        "The operating loss improved to $1 million",
        "The company turned to a profit in the third quarter",
    ],
)
def test_smaller_loss_is_good_news(text: str) -> None:
    assert label(text) == "positive"


@pytest.mark.parametrize(
    "text",
    [
        "The net loss widened to $40 million",
        "The company swung to a loss in the second half",
        "Operating loss totalled EUR 0.3 mn, down from a profit of EUR 5.1 mn",
    ],
)
def test_larger_loss_is_bad_news(text: str) -> None:
    assert label(text) == "negative"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Operating profit was EUR 5.1 mn, up from EUR 3.2 mn.", "positive"),
        ("Net sales totalled EUR 20 mn compared to EUR 25 mn.", "negative"),
        ("Operating expenses were $40 million compared with $32 million.", "negative"),
        ("Gearing was 43% compared to 67% a year earlier.", "positive"),
        ("The group's sales were EUR 37.5 million ( EUR 48.2 million ) in the period.", "negative"),
        ("Turnover went from $1.2 billion to $1.5 billion.", "positive"),
    ],
)
def test_numbers_compared(text: str, expected: str) -> None:
    assert label(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Net sales were reported for 2009 compared to 2008.",  # years, not amounts
        "Net sales were EUR 114.4 mn ( USD 148.1 mn ) in 2009.",  # a currency conversion
    ],
)
def test_not_a_comparison(text: str) -> None:
    result = SCORER.score(text)
    assert result.label == "neutral"
    assert result.matches == ()


def test_negation_turns_a_rule_around() -> None:
    assert SCORER.score("Sales increased in the quarter").score > 0
    assert SCORER.score("Sales did not increase in the quarter").score < 0
    assert SCORER.score("Profit did not fall this year").score > 0
    assert label("The company failed to win the contract") == "negative"
    assert label("The bank will not cut jobs") == "positive"
    assert "rule: sales increase (negated)" in SCORER.score("Sales did not increase").matches


def test_profit_warning() -> None:
    assert label("The retailer issued a profit warning") == "negative"
    assert label("The miner warned of lower profits") == "negative"
    assert "rule: profit warning" in SCORER.score("Shares fell after a profit warning").matches


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Analysts downgraded the stock", "negative"),
        ("The broker issued a downgrade on the insurer", "negative"),
        ("Citi cut the stock to sell", "negative"),
        ("The broker upgraded the bank to buy", "positive"),
        ("Moody's upgrade lifts the insurer", "positive"),
        ("The 'buy' recommendation was reiterated", "positive"),
    ],
)
def test_downgrade_and_upgrade(text: str, expected: str) -> None:
    assert label(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The company beat expectations for the half", "positive"),
        ("Results were worse than expected", "negative"),
        ("The bank cuts its full-year dividend", "negative"),
        ("The bank raised its interim dividend", "positive"),
        ("The group raised its full-year guidance", "positive"),
        ("The company will close two plants", "negative"),
        ("The company won a $50 million contract", "positive"),
        ("The company was fined $2 million by the regulator", "negative"),
        ("Layoffs will affect 200 workers", "negative"),
    ],
)
def test_phrase_rules(text: str, expected: str) -> None:
    assert label(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The company will hold its annual general meeting on 3 May.",
        "Shareholders may buy shares on credit at a fixed interest rate.",
        "Please contact the company secretary for questions on capital management.",
        "The fund holds a stake in the joint venture as well as in the trust.",
    ],
)
def test_neutralised_words_stay_neutral(text: str) -> None:
    result = SCORER.score(text)
    assert result.label == "neutral"
    assert result.score == 0.0
    assert result.matches == ()


def test_neutralised_words_are_scored_by_plain_vader() -> None:
    # the same sentence reads positive to VADER: "share", "credit", "interest" are positive there
    assert SCORER.score("Shareholders may buy shares on credit at a fixed interest rate.").vader > 0.05


def test_side_clause_counts_for_less() -> None:
    assert label("Operating profit decreased while net sales increased") == "negative"
    assert label("While revenue rose, profit fell sharply") == "negative"
    assert label("Revenue rose but profit fell sharply") == "negative"


def test_matches_explain_the_score() -> None:
    result = SCORER.score("Operating profit rose 12% but the company flagged a downgrade")
    assert result.matches == ("rule: profit rose", "lexicon: downgrade")
    assert SCORER.score("Bad debts climbed").matches == ("rule: bad debts climbed",)
    assert SCORER.score("The bank reported bad debts of $1 billion").matches == ("lexicon: bad debts",)


def test_result_fields() -> None:
    result = SCORER.score("ANZ profit rises 8% to $3.6 billion")
    assert isinstance(result, TextScore)
    assert result.label == "positive"
    assert result.score == round(result.score, 4)
    assert -1.0 <= result.vader <= 1.0


# --- the neutral band ----------------------------------------------------------------------------


def test_label_for_applies_the_band() -> None:
    scorer = SentimentScorer(neutral_band=0.3)
    assert scorer.label_for(0.3) == "positive"
    assert scorer.label_for(0.2999) == "neutral"
    assert scorer.label_for(-0.2999) == "neutral"
    assert scorer.label_for(-0.3) == "negative"
    assert scorer.label_for(0.0) == "neutral"


@pytest.mark.parametrize("band", [-0.1, 1.0, 2.0])
def test_band_out_of_range(band: float) -> None:
    with pytest.raises(ValueError, match="neutral_band"):
        SentimentScorer(neutral_band=band)


# --- any text at all -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u00a0\u2003"])
def test_empty_text(text: str) -> None:
    assert SCORER.score(text) == TextScore(0.0, "neutral", 0.0, ())


@pytest.mark.parametrize(
    "text",
    [
        "Profit rose 📈🚀 and shares soared 💰",
        "😡😡😡 loss loss loss",
        "Gewinn stieg um 10 % — der Umsatz fiel",
        "利润增长 10%\uff0c收入下降",
        "الأرباح ارتفعت",
        "\x00\x01\x02 control characters \x7f",
        "zero\u200bwidth\u200djoiner\ufeff",
        "lone surrogate \ud800 in a str",
        "İSTANBUL ﬁnance ǅ ß ΣΑΣ",  # characters whose lower case is longer
        "@@@@ %%%% $$$$ (((( ))))",
        "EUR19 .9 m ( EUR -3.5 ( +1.2 ) ) from 1,2,3 to ,,, .5",
        "up down up down up down",
    ],
)
def test_odd_text_never_raises(text: str) -> None:
    result = SCORER.score(text)
    assert -1.0 <= result.score <= 1.0
    assert result.label in ("negative", "neutral", "positive")


def test_huge_text_is_capped_and_fast() -> None:
    text = "Profit rose sharply while costs fell and the bank cut 300 jobs. " * 20_000  # ~1.3 MB
    started = time.perf_counter()
    result = SCORER.score(text)
    assert time.perf_counter() - started < 2.0
    assert -1.0 <= result.score <= 1.0
    # only the first MAX_CHARS characters count
    assert result == SCORER.score(text[:MAX_CHARS])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_scores_in_range(text: str) -> None:
    result = SCORER.score(text)
    assert -1.0 <= result.score <= 1.0
    assert result.label == SCORER.label_for(result.score)
    assert -1.0 <= result.vader <= 1.0


RULE_WORDS = sorted(
    words(
        "profit loss sales costs rose fell up down not no from to compared with ( ) , ; while but EUR $ 5.1 "
        "3.2 mn % 2008 narrowed widened cut jobs warning downgrade record"
    )
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(RULE_WORDS),
        max_size=40,
    )
)
def test_rule_words_in_any_order(words: list[str]) -> None:
    result = SCORER.score(" ".join(words))
    assert -1.0 <= result.score <= 1.0


def test_same_result_from_many_threads() -> None:
    texts = [text for text, _ in OWN_SENTENCES]
    expected = [SCORER.score(text) for text in texts]
    results: dict[int, list[TextScore]] = {}

    def work(n: int) -> None:
        results[n] = [SCORER.score(text) for text in texts]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[n] == expected for n in range(8))


# --- the shared dev file ---------------------------------------------------------------------------


@pytest.mark.slow
def test_dev_file_accuracy() -> None:
    if not DEV_FILE.exists():
        pytest.skip(f"{DEV_FILE} is not here")
    result = evaluate(read_rows(DEV_FILE), SCORER)
    ours, vader, majority = (result["scorers"][name] for name in ("ours", "vader", "majority"))
    assert result["sentences"] == 2582
    assert ours["accuracy"] >= 0.72
    assert ours["accuracy"] > vader["accuracy"]
    assert ours["accuracy"] > majority["accuracy"]
    assert ours["macro_f1"] > vader["macro_f1"]
