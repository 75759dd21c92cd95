"""Finance vocabulary for the sentiment scorer: word valences, subjects, directions and phrase rules.

Plain data, no scoring logic. Valences are on VADER's scale (about -4 .. +4). The words carry what an investor
reads into them, not their everyday meaning: "interest", "share" and "credit" are nouns of the trade and
say nothing good; "loss", "impairment" and "downgrade" say something bad even in a flat sentence.
Nothing here names a company, a person or a place.
"""

from __future__ import annotations

import re
from types import MappingProxyType


def words(text: str) -> frozenset[str]:
    """A set of words written as one string, the way a word list reads best."""
    return frozenset(text.split())


# Words whose valence the finance reading sets (added to VADER's lexicon, or replacing its value).
LEXICON = MappingProxyType(
    {
        # results and trading
        "profit": 0.6,
        "profits": 0.6,
        "profitable": 1.6,
        "profitability": 0.8,
        "unprofitable": -1.8,
        "loss": -1.6,
        "losses": -1.6,
        "loss-making": -2.0,
        "deficit": -1.2,
        "shortfall": -1.6,
        "outperform": 1.8,
        "outperformed": 1.8,
        "underperform": -1.8,
        "underperformed": -1.8,
        "beat": 1.2,
        "exceeded": 1.2,
        "upbeat": 1.6,
        "bullish": 1.6,
        "bearish": -1.6,
        "rally": 1.4,
        "rallied": 1.6,
        "surge": 1.6,
        "surged": 1.8,
        "soared": 1.8,
        "jumped": 1.4,
        "rebound": 1.2,
        "rebounded": 1.4,
        "recovery": 1.0,
        "recovered": 1.2,
        "upturn": 1.4,
        "downturn": -1.6,
        "slump": -1.8,
        "slumped": -1.8,
        "plunge": -2.0,
        "plunged": -2.0,
        "tumbled": -1.8,
        "slowdown": -1.4,
        "recession": -2.0,
        "headwinds": -1.4,
        "weakness": -1.4,
        "weakened": -1.4,
        "deteriorated": -1.8,
        "deterioration": -1.8,
        "slid": -1.2,
        "sank": -1.4,
        "fell": -0.8,
        "declined": -0.8,
        "decreased": -0.6,
        "dropped": -0.8,
        "rose": 0.6,
        "increased": 0.5,
        "grew": 0.8,
        "growth": 1.2,
        "expansion": 1.0,
        "expand": 0.8,
        "expanded": 0.8,
        "expanding": 0.8,
        "strengthened": 1.2,
        "strengthen": 1.0,
        "improved": 1.6,
        "improving": 1.4,
        "improvement": 1.4,
        "efficiency": 0.6,
        "synergies": 0.8,
        "savings": 1.0,
        "indebtedness": -0.6,
        "record": 0.4,
        # the analyst's vocabulary
        "upgrade": 1.8,
        "upgraded": 1.8,
        "upgrades": 1.6,
        "downgrade": -2.0,
        "downgraded": -2.0,
        "downgrades": -1.8,
        "overweight": 1.0,
        "underweight": -1.0,
        "buyback": 1.2,
        # balance sheet and credit quality
        "impairment": -1.8,
        "impairments": -1.8,
        "writedown": -2.0,
        "writedowns": -2.0,
        "write-down": -2.0,
        "write-downs": -2.0,
        "write-off": -1.8,
        "write-offs": -1.8,
        "writeoff": -1.8,
        "arrears": -1.6,
        "delinquencies": -1.6,
        "defaults": -1.6,
        "default": -1.2,
        "insolvency": -2.4,
        "insolvent": -2.4,
        "bankruptcy": -2.6,
        "bankrupt": -2.6,
        "receivership": -2.4,
        "liquidation": -2.0,
        "dilution": -1.0,
        "dilutive": -1.2,
        "accretive": 1.2,
        "remediation": -1.4,
        "provisions": -0.6,
        "inflows": 1.2,
        "outflows": -1.2,
        "redemptions": -0.6,
        # jobs and operations
        "layoff": -2.0,
        "layoffs": -2.0,
        "lay-off": -2.0,
        "lay-offs": -2.0,
        "redundancies": -1.8,
        "redundancy": -1.6,
        "closure": -1.6,
        "closures": -1.6,
        "shutdown": -1.6,
        "halted": -1.4,
        "suspended": -1.2,
        "delayed": -1.0,
        "delays": -1.0,
        "restructuring": -0.8,
        "recall": -1.2,
        "strike": -1.0,
        "dismissed": -1.4,
        "resigned": -0.8,
        "resignation": -0.8,
        # legal and regulatory
        "lawsuit": -1.8,
        "lawsuits": -1.8,
        "sued": -1.8,
        "litigation": -1.4,
        "fined": -2.0,
        "penalty": -1.6,
        "penalties": -1.6,
        "probe": -1.4,
        "investigation": -1.0,
        "fraud": -2.6,
        "misconduct": -2.2,
        "sanctions": -1.2,
        "breach": -1.6,
        "dispute": -1.2,
        "disputes": -1.2,
        "snag": -1.2,
        "setback": -1.4,
        # operations and competition
        "interrupted": -1.2,
        "stoppage": -1.4,
        "oversupply": -1.4,
        "overcapacity": -1.4,
        "devalue": -1.4,
        "devalued": -1.4,
        "devaluation": -1.4,
        "misleading": -1.6,
        "disagree": -1.0,
        "disagreement": -1.2,
        "uncompetitive": -1.6,
        "competitive": 0.8,
        "competitiveness": 0.8,
        # contracts and deals
        "awarded": 1.4,
        "won": 1.4,
        "wins": 1.4,
        "secured": 1.2,
        "order": 0.3,
        "orders": 0.3,
        "contract": 0.6,
        "contracts": 0.6,
        "partnership": 0.6,
        "agreement": 0.4,
        "acquisition": 0.3,
        "acquired": 0.3,
        "launch": 0.3,
        "launched": 0.3,
        "milestone": 1.2,
        "approved": 1.2,
        "approval": 1.0,
        # how management says it feels, in releases and interviews
        "pleased": 1.8,
        "delighted": 2.0,
        "excited": 1.6,
        "thrilled": 2.0,
        "proud": 1.4,
        "satisfied": 1.4,
        "glad": 1.4,
        # trading conditions
        "breakthrough": 1.6,
        "warning": -1.4,
        "volatile": -0.8,
        "volatility": -0.6,
        "uncertainty": -1.2,
        "uncertain": -1.0,
        "turmoil": -1.8,
        "tight": -0.4,
        "tightened": -0.6,
        "weak": -1.6,
        "weaker": -1.6,
        "strong": 1.6,
        "stronger": 1.6,
        # everyday words VADER rates too strongly for financial text
        "gain": 0.8,
        "gains": 0.8,
        "benefit": 0.6,
        "benefits": 0.6,
        "opportunity": 0.5,
        "opportunities": 0.5,
        "award": 0.8,
        "pressure": -0.6,
        "risk": -0.4,
        "risks": -0.4,
        "debt": -0.3,
        "charge": -0.4,
        "charges": -0.4,
        # against expectations
        "higher-than-expected": 1.6,
        "better-than-expected": 1.8,
        "lower-than-expected": -1.6,
        "worse-than-expected": -1.8,
    }
)

# Everyday words VADER scores that carry no investor sentiment in financial text.
NEUTRAL_WORDS = words(
    "share shares interest interests credit credits please like top yes trust trusts value care free "
    "support supports supported help helps save security securities secure ha hand kind pretty solution "
    "solutions solve committed commitment bonus united true respect matter dear fine demand cut cuts "
    "lower increase ensure innovative special original clear clearly certain popular natural smart "
    "intelligent grant granted grants prize reward rewards easy easily asset assets straight ready god "
    "hope hopes want wish chance chances party parties no number energy gross pay fair worth safety play "
    "played heart waste intelligence limited demanding respective respectively authority mandatory "
    "exploits attacks unsecured"
)

# Subjects of a change, with their polarity and how much a move in them counts.
# "profit rose" is good news (positive subject); "costs rose" is bad news (negative subject).
POSITIVE_SUBJECTS = MappingProxyType(
    {
        # earnings lines count the most
        "profit": 1.0,
        "profits": 1.0,
        "earnings": 1.0,
        "eps": 1.0,
        "ebit": 1.0,
        "ebitda": 1.0,
        "ebita": 1.0,
        "income": 0.8,
        "result": 0.9,
        "results": 0.8,
        "profitability": 1.0,
        "margin": 0.9,
        "margins": 0.9,
        "return": 0.6,
        "returns": 0.6,
        "dividend": 1.0,
        "dividends": 1.0,
        "cash flow": 0.9,
        "cash": 0.5,
        "liquidity": 0.6,
        # top line and activity
        "sales": 0.7,
        "revenue": 0.7,
        "revenues": 0.7,
        "turnover": 0.7,
        "orders": 0.8,
        "order intake": 0.9,
        "order book": 0.9,
        "order backlog": 0.9,
        "backlog": 0.8,
        "bookings": 0.8,
        "demand": 0.8,
        "market share": 0.9,
        "volume": 0.6,
        "volumes": 0.6,
        "deliveries": 0.6,
        "shipments": 0.6,
        "exports": 0.6,
        "production": 0.5,
        "output": 0.5,
        "capacity": 0.6,
        "productivity": 0.8,
        "efficiency": 0.8,
        "competitiveness": 0.8,
        "traffic": 0.6,
        "passengers": 0.6,
        "customers": 0.6,
        "subscribers": 0.6,
        "occupancy": 0.6,
        "market value": 0.8,
        "inflows": 0.8,
        "net inflows": 0.8,
        "market capitalisation": 0.8,
        "market capitalization": 0.8,
        "funds under management": 0.9,
        "assets under management": 0.9,
        "fum": 0.9,
        "aum": 0.9,
        "deposits": 0.6,
        "lending": 0.6,
        "loan book": 0.6,
        "valuation": 0.6,
        "net asset value": 0.8,
        "equity ratio": 0.6,
        "solvency": 0.6,
        # the market
        "share price": 1.0,
        "stock price": 1.0,
        "shares": 0.8,
        "stock": 0.8,
        "stocks": 0.6,
        "index": 0.6,
        "price target": 0.8,
        "target price": 0.8,
        "rating": 0.8,
        "guidance": 1.0,
        "outlook": 0.8,
        "forecast": 0.6,
        # people
        "jobs": 0.8,
        "workforce": 0.8,
        "staff": 0.7,
        "personnel": 0.7,
        "employees": 0.7,
        "employment": 0.7,
        "headcount": 0.6,
        "workers": 0.7,
        "wages": 0.4,
    }
)

NEGATIVE_SUBJECTS = MappingProxyType(
    {
        "loss": 1.0,
        "losses": 1.0,
        "net loss": 1.0,
        "operating loss": 1.0,
        "deficit": 0.8,
        "costs": 0.8,
        "cost": 0.8,
        "expenses": 0.8,
        "expenditure": 0.5,
        "overheads": 0.7,
        "debt": 0.8,
        "net debt": 0.8,
        "indebtedness": 0.8,
        "borrowings": 0.7,
        "liabilities": 0.6,
        "gearing": 0.7,
        "leverage": 0.6,
        "impairment": 0.9,
        "impairments": 0.9,
        "impairment charges": 0.9,
        "writedowns": 0.9,
        "write-downs": 0.9,
        "provisions": 0.8,
        "bad debts": 1.0,
        "bad debt": 1.0,
        "bad loans": 1.0,
        "non-performing assets": 1.0,
        "impairment losses": 0.9,
        "credit impairments": 1.0,
        "loan impairments": 1.0,
        "outflows": 0.8,
        "net outflows": 0.8,
        "redemptions": 0.6,
        "loan losses": 1.0,
        "credit losses": 1.0,
        "non-performing loans": 1.0,
        "arrears": 1.0,
        "delinquencies": 1.0,
        "defaults": 1.0,
        "unemployment": 0.8,
        "inflation": 0.5,
        "churn": 0.8,
        "complaints": 0.7,
        "inventories": 0.4,
        "raw material prices": 0.7,
        "raw materials prices": 0.7,
        "raw material costs": 0.8,
        "raw materials costs": 0.8,
        "prices of raw materials": 0.7,
        "input prices": 0.7,
        "input costs": 0.8,
        "interest expenses": 0.7,
        "tax rate": 0.4,
        "risk": 0.6,
        "risks": 0.6,
        "uncertainty": 0.7,
        "layoffs": 0.8,
        "lay-offs": 0.8,
        "job cuts": 0.8,
    }
)

# Subjects that are news by themselves when nothing says which way they moved: "bad debts" is bad,
# "bad debts fell" is good. (Single words of this kind are in LEXICON.)
SUBJECT_VALENCE = MappingProxyType(
    {
        "bad debts": -2.0,
        "bad debt": -2.0,
        "bad loans": -2.0,
        "loan losses": -2.0,
        "credit losses": -2.0,
        "non-performing loans": -2.0,
        "non-performing assets": -2.0,
        "impairment charges": -1.8,
        "impairment losses": -1.8,
        "credit impairments": -1.8,
        "loan impairments": -1.8,
        "net inflows": 1.2,
        "net outflows": -1.2,
    }
)

# Words that say which way a quantity moved. Values scale the move (1.0 = plain).
UP_WORDS = MappingProxyType(
    {
        "rose": 1.0,
        "rise": 1.0,
        "rises": 1.0,
        "risen": 1.0,
        "rising": 1.0,
        "increase": 1.0,
        "increased": 1.0,
        "increases": 1.0,
        "increasing": 1.0,
        "grew": 1.0,
        "grow": 1.0,
        "grows": 1.0,
        "grown": 1.0,
        "growing": 1.0,
        "growth": 1.0,
        "climbed": 1.0,
        "climb": 1.0,
        "gained": 1.0,
        "gain": 1.0,
        "gains": 1.0,
        "jumped": 1.2,
        "jump": 1.2,
        "surged": 1.3,
        "surge": 1.3,
        "soared": 1.3,
        "advanced": 0.8,
        "rebounded": 1.1,
        "doubled": 1.3,
        "double": 1.3,
        "doubles": 1.3,
        "triples": 1.3,
        "above": 0.8,
        "doubling": 1.3,
        "added": 0.8,
        "tripled": 1.3,
        "triple": 1.3,
        "higher": 1.0,
        "boosted": 1.0,
        "boost": 1.0,
        "expanded": 0.8,
        "widened": 1.0,
        "up": 1.0,
        "raised": 1.0,
        "raise": 1.0,
        "raises": 1.0,
        "lifted": 1.0,
        "upgraded": 1.0,
        "exceeded": 1.0,
        "climbs": 1.0,
        "jumps": 1.2,
        "surges": 1.3,
        "soars": 1.3,
        "soar": 1.3,
        "advances": 0.8,
        "rebounds": 1.1,
        "rebound": 1.1,
        "rallied": 1.1,
        "rallies": 1.1,
        "boosts": 1.0,
        "expands": 0.8,
        "expand": 0.8,
        "widens": 1.0,
        "widen": 1.0,
        "tops": 0.8,
        "topped": 0.8,
    }
)

DOWN_WORDS = MappingProxyType(
    {
        "fell": 1.0,
        "fall": 1.0,
        "falls": 1.0,
        "fallen": 1.0,
        "falling": 1.0,
        "decrease": 1.0,
        "decreased": 1.0,
        "decreases": 1.0,
        "decreasing": 1.0,
        "declined": 1.0,
        "decline": 1.0,
        "declines": 1.0,
        "declining": 1.0,
        "dropped": 1.0,
        "drop": 1.0,
        "drops": 1.0,
        "dipped": 0.8,
        "slipped": 0.8,
        "slid": 1.0,
        "sank": 1.1,
        "plunged": 1.3,
        "plummeted": 1.3,
        "tumbled": 1.2,
        "slumped": 1.2,
        "shrank": 1.0,
        "shrunk": 1.0,
        "contracted": 0.9,
        "eased": 0.7,
        "halved": 1.3,
        "lower": 1.0,
        "lowered": 1.0,
        "down": 1.0,
        "narrowed": 1.0,
        "smaller": 1.0,
        "below": 0.8,
        "narrower": 1.0,
        "reduced": 1.0,
        "reduce": 1.0,
        "reduces": 1.0,
        "reducing": 1.0,
        "reduction": 1.0,
        "reductions": 1.0,
        "cut": 1.0,
        "cuts": 1.0,
        "cutting": 1.0,
        "slashed": 1.2,
        "slash": 1.2,
        "trimmed": 0.8,
        "shed": 1.0,
        "lost": 1.0,
        "downgraded": 1.0,
        "missed": 1.0,
        "slumps": 1.2,
        "slump": 1.2,
        "plunges": 1.3,
        "plunge": 1.3,
        "plummets": 1.3,
        "tumbles": 1.2,
        "tumble": 1.2,
        "sinks": 1.1,
        "sink": 1.1,
        "slides": 1.0,
        "slide": 1.0,
        "dips": 0.8,
        "dip": 0.8,
        "slips": 0.8,
        "slip": 0.8,
        "shrinks": 1.0,
        "shrink": 1.0,
        "loses": 1.0,
        "lose": 1.0,
        "misses": 1.0,
        "miss": 1.0,
        "lowers": 1.0,
        "slashes": 1.2,
        "halves": 1.3,
        "eases": 0.7,
        "ease": 0.7,
        "retreated": 0.8,
        "retreats": 0.8,
        "narrows": 1.0,
    }
)

# Words that say a subject got better or worse whichever way its amount moved: "loss improved" is
# good news although the loss got smaller.
BETTER_WORDS = words(
    "improved improve improves improving improvement improvements strengthened strengthen strengthens "
    "strengthening recovered recovering enhance enhances enhanced enhancing"
)
WORSE_WORDS = words(
    "weakened weaken weakens weakening deteriorated deteriorate deteriorates deteriorating deterioration "
    "worsened worsen worsens worsening"
)

# Words that open a clause which qualifies the main one ("..., while sales rose"); evidence inside it
# counts for less.
SUBORDINATORS = words("while whereas although though despite")

# Direction words that only mean a move when a figure follows ("added 0.5 pct", not "the company added").
NEEDS_FIGURE = frozenset(("added", "shed"))

# Subjects that mean a share count rather than a price when these words come shortly before them
# ("the number of shares grew", "issued new shares").
SHARE_COUNT_WORDS = frozenset(("number", "new", "issue", "issued", "issuing"))

# Direction words that read forwards ("higher costs", "cut 40 jobs", "growth in sales") more often than
# backwards ("costs were higher").
FORWARD_FIRST = words(
    "higher lower increased reduced rising falling growing declining improved weakened cut cuts cutting "
    "slashed slash reduce reduces reducing raise raises raised lifted boost boosted lowered increase "
    "improve improves improving trimmed double doubled"
)

NEGATORS = words(
    "not no never without neither nor cannot didn't doesn't don't isn't wasn't weren't won't hasn't "
    "haven't hadn't couldn't wouldn't shouldn't didnt doesnt dont isnt wasnt werent wont hasnt havent "
    "failed fail fails unable"
)

# Words that end the clause a subject reaches across to find its direction word.
CLAUSE_BREAKS = words("; : while whereas but although though however and")

# Phrases made of scored words that mean nothing to an investor; they are taken out before scoring.
NEUTRAL_PHRASES = re.compile(
    r"\bas well(?: as)?\b|\bcapital gains?\b|\binterest rates?\b|\bshare capital\b|\bfree of charge\b|"
    r"\bin charge of\b|\bjoint venture\b|\bcredit (?:cards?|facilit(?:y|ies)|lines?|agreements?)\b|"
    r"\bgreat britain\b|\bno longer\b|\bup to\b|\b(?:as a )?result of\b|\bas a result\b"
)

# Multi-word phrases with a fixed reading. Longer, more specific phrases first; a phrase that matches
# takes its words out of the rest of the scoring.
_R = re.compile
PHRASE_RULES: tuple[tuple[str, re.Pattern[str], float], ...] = (
    (
        "profit warning",
        _R(
            r"\bprofit warnings?\b|\bwarn(?:s|ed|ing)? (?:of|on|about) (?:lower |weaker )?"
            r"(?:profits?|earnings|results|sales)\b"
        ),
        -2.6,
    ),
    (
        "swung to a loss",
        _R(
            r"\b(?:swung|swing|swings|turned|turn|turns|slipped|fell|dipped|plunged|sank)"
            r" (?:in)?to (?:an? )?(?:\w+ ){0,2}(?:loss|deficit|the red)\b"
        ),
        -2.6,
    ),
    (
        "turned to a profit",
        _R(
            r"\b(?:swung|swing|swings|turned|turn|turns|returned|return|returns|back)"
            r" (?:in)?to (?:an? )?(?:\w+ ){0,2}(?:profit|profitability|the black|growth)\b"
            r"|\bturned profitable\b|\bbreak(?:s)? even\b|\bbroke even\b"
        ),
        2.4,
    ),
    (
        "loss from a profit",
        _R(
            r"\bloss\b[^;]{0,60}?\b(?:compared (?:to|with)|from|versus|vs\.?|against)"
            r" (?:an? )?(?:\w+ ){0,2}profit\b"
        ),
        -2.6,
    ),
    (
        "profit from a loss",
        _R(
            r"\bprofit\b[^;]{0,60}?\b(?:compared (?:to|with)|from|versus|vs\.?|against)"
            r" (?:an? )?(?:\w+ ){0,2}loss\b"
        ),
        2.6,
    ),
    (
        "beat expectations",
        _R(
            r"\b(?:beat|beats|beating|exceeded|exceeds|exceeding|topped|tops|above|ahead of|"
            r"outpaced|surpassed|better than)(?: \w+){0,2} (?:expectations?|forecasts?|"
            r"estimates?|consensus|guidance|targets?)\b|\bbetter than expected\b|"
            r"\b(?:higher|stronger|better)[- ]than[- ](?:expected|anticipated|forecast)\b"
        ),
        2.2,
    ),
    (
        "missed expectations",
        _R(
            r"\b(?:miss(?:ed|es)?|below|short of|fell short of|falls short of|"
            r"worse than|undershot)(?: \w+){0,2} (?:expectations?|forecasts?|estimates?|"
            r"consensus|guidance|targets?)\b|\bworse than expected\b|"
            r"\b(?:lower|weaker|worse)[- ]than[- ](?:expected|anticipated|forecast)\b|"
            r"\b(?:not|n't|never|failed to|fail to|fails to|failing to|unable to) (?:meet|reach|achieve|hit)"
            r"(?: \w+){0,3} (?:targets?|expectations?|forecasts?|guidance|goals?)\b"
        ),
        -2.2,
    ),
    (
        "met targets",
        _R(
            r"\b(?:met|meets|meeting|reached|achieved|achieves|hit) (?:its |their |the |all )?(?:\w+ )?"
            r"(?:targets?|goals?|guidance)\b"
        ),
        1.4,
    ),
    (
        "record result",
        _R(
            r"\brecord[- ](?:high|\w+ )?(?:profits?|earnings|sales|revenues?|results?|year|quarter|"
            r"orders?|turnover|levels?|highs?|growth|margins?|dividend)\b|\ball-time high\b|"
            r"\bbest (?:\w+ ){0,2}(?:ever|in (?:our|its|the company 's) history)\b|"
            r"\b(?:reached|reaches|hit|hits|posted|posts|set|sets|achieved|at|to) (?:a |an )?(?:new )?"
            r"record\b"
        ),
        2.2,
    ),
    ("record low", _R(r"\brecord[- ](?:low|losses?)\b|\ball-time low\b|\bworst (?:\w+ ){0,2}ever\b"), -2.2),
    (
        "raised guidance",
        _R(
            r"\b(?:raised|raises|raise|raising|lifted|lifts|upgraded|upgrades|increased|"
            r"boosted)(?: its| their| the)?(?: \w+){0,2} (?:guidance|forecast|forecasts|"
            r"outlook|targets?|estimates?|price target|target price|rating|recommendation)\b"
        ),
        2.2,
    ),
    (
        "cut guidance",
        _R(
            r"\b(?:cut|cuts|cutting|lowered|lowers|lower|lowering|reduced|reduces|trimmed|"
            r"downgraded|downgrades|slashed)(?: its| their| the)?(?: \w+){0,2} (?:guidance|"
            r"forecast|forecasts|outlook|targets?|estimates?|price target|target price|rating|"
            r"recommendation|projections?|expectations)\b"
        ),
        -2.2,
    ),
    (
        "dividend cut",
        _R(
            r"\bdividends? (?:cut|cuts|slashed|suspended|scrapped|omitted)\b|"
            r"\b(?:cut|cuts|slashed|slashes|suspended|suspends|scrapped|scraps|axed|omit|omits|"
            r"omitted|skip|skips|skipped)(?: its| their| the)?(?: \w+){0,2} dividends?\b|"
            r"\bno dividend\b"
        ),
        -2.4,
    ),
    (
        "buyback",
        _R(r"\bbuy[- ]?backs?\b|\bbuy(?:s|ing)? back\b|\bbought back\b|\b(?:share|stock) repurchases?\b"),
        1.6,
    ),
    (
        "dividend raised",
        _R(
            r"\b(?:raised|raises|increased|increases|lifted|boosted|hiked)(?: its| their| the)?"
            r"(?: \w+){0,2} dividends?\b|\bspecial dividend\b|\bdividend (?:increase|hike)\b"
        ),
        2.2,
    ),
    (
        "job cuts",
        _R(
            r"\bjob (?:cuts|losses|reductions)\b|\b(?:cut|cuts|cutting|slash|slashes|slashed|shed|"
            r"sheds|shedding|eliminate|eliminates|eliminated|axe|axes|axed|reduce|reduces|reduced)"
            r" (?:a total of |some |about |around |up to |approximately |nearly |almost |over |"
            r"more than |less than |\d[\d,]* |its |their |the )*(?:\w+ )?(?:jobs|positions|"
            r"workers|employees|staff|personnel|workforce|headcount|roles|people)\b|"
            r"\b(?:lay|lays|laying|laid) off\b|\b(?:staff|personnel|workforce|headcount|employee)"
            r" (?:cuts|reductions?)\b|\bredundanc(?:y|ies)\b|\bmade redundant\b|"
            r"\b(?:jobs|positions) (?:are |will be |were )?(?:under threat|at risk|lost|axed|cut)\b|"
            r"\bemployment\b[^.;]{0,100}?\b(?:terminated|end|ends|ended|cease|ceases)\b|"
            r"\bterminat\w*(?: \S+){0,10}? employment\b|"
            r"\bgiven notice\b|\btemporar(?:y|ily) lay[- ]?offs?\b|\bredundant\b|"
            r"\b(?:reduce|reduces|reduced|reducing|cut|cuts|cutting)(?: the)? number of(?: \w+){0,2}? "
            r"(?:jobs|positions|workers|employees|staff|personnel|people)\b|"
            r"\breductions? (?:of|by) (?:\w+ )?\d[\d,]* (?:\w+ )?(?:jobs|positions|workers|employees|"
            r"people|persons)\b|\breductions? in (?:the )?(?:staff|personnel|workforce|headcount|jobs)\b|"
            r"\b(?:lose|loose|lost|losing) (?:their|\d[\d,]*) jobs\b|\bdismiss(?:ed|es|al|als)?\b"
        ),
        -2.4,
    ),
    (
        "closure",
        _R(
            r"\b(?:close|closes|closed|closing|shut|shuts|shutting|shut down|shuts down|mothball|"
            r"mothballs|mothballed)(?: down)?(?: its| their| the| a| an| two| three| four| five|"
            r" several| some| all)?(?: \w+){0,2} (?:plants?|mills?|factor(?:y|ies)|units?|stores?|"
            r"shops?|branch(?:es)?|offices?|sites?|lines?|operations|facilit(?:y|ies)|outlets?|"
            r"production)\b|\bclosure of\b|\bproduction\b[^.;]{0,50}?\b(?:stopped|halted|suspended|"
            r"discontinued|ceased)\b|\b(?:halt|halts|halted|suspend|suspends|suspended|stop|stops|stopped)"
            r"(?: its| the)? production\b"
        ),
        -2.2,
    ),
    (
        "one-off charge",
        _R(
            r"\b(?:one-off|one-time|non-recurring|restructuring|remediation|exceptional) "
            r"(?:charges?|costs?|items?|expenses?|provisions?)\b|\bburdened by\b|"
            r"\bweighed (?:on|down)\b|\bhit by\b|\bhurt by\b"
        ),
        -1.6,
    ),
    (
        "legal action",
        _R(
            r"\b(?:class action|lawsuits?|legal action|legal proceedings|sued|sues|suing|"
            r"fined|fines? of|penalt(?:y|ies)|investigation into|probe into|charged with|"
            r"settlement with regulators?|breach(?:ed|es)?)\b"
        ),
        -1.8,
    ),
    (
        "bankruptcy",
        _R(
            r"\b(?:filed for|files for|entered|enters|went into|goes into|go into|placed into|placed in|"
            r"put into) (?:voluntary |compulsory )?(?:bankruptcy|insolvency|administration|receivership|"
            r"liquidation|chapter 11)\b|\bwent bust\b|\bcollapsed?\b"
        ),
        -2.8,
    ),
    (
        "contract won",
        _R(
            r"\b(?:won|wins|win|winning|secured|secures|secure|awarded|landed|lands|clinched|"
            r"clinches|bagged|received|receives|receive|signed|signs|sign|booked|books|gets|got|"
            r"obtained)(?: \w+){0,5}? (?:contracts?|orders?|deals?|agreements?|tenders?|"
            r"mandates?|projects?|licen[cs]es?|approval|framework agreement)\b|"
            r"\b(?:has|have|had) been (?:selected|chosen|awarded|contracted)\b|"
            r"\b(?:selected|chose|chosen|picked|commissioned)(?: \w+){0,3} (?:to (?:supply|deliver|"
            r"provide|build|expand|design|implement)|as (?:its|their|the) \w+)\b|"
            r"\bcontract (?:win|award)s?\b|\border (?:win|intake rose)\b"
        ),
        1.6,
    ),
    (
        "supply deal",
        _R(r"\b(?:will|to|shall) (?:supply|deliver)\b|\bdelivery (?:contract|order)\b"),
        1.0,
    ),
    (
        "expansion",
        _R(
            r"\b(?:expand|expands|expanded|expanding|expansion of|extend|extends|extended|"
            r"strengthen|strengthens|strengthened|strengthening|grow|grows)(?: \w+){0,3}? "
            r"(?:operations|business|presence|capacity|footprint|network|portfolio|offering|"
            r"market share|production|position|customer base|cooperation|partnership|reach)\b|"
            r"(?<![\w-])new (?:plant|factory|production line|production facility|facility|stores?|markets?|"
            r"customers?|clients?|orders?|routes?|flights?)\b|"
            r"\bopen(?:s|ed|ing)? (?:a |its |the )?(?:new |first |second )?"
            r"(?:plant|factory|stores?|offices?|branch|unit|facility)\b"
        ),
        1.2,
    ),
    (
        "cost savings",
        _R(
            r"\bcost[- ](?:savings?|efficienc(?:y|ies)|synergies|reductions?|cutting|cuts?)\b|"
            r"\bsavings? of\b|\bsynergy (?:benefits|savings)\b"
        ),
        1.4,
    ),
    (
        "market gain",
        _R(
            r"\b(?:shares?|stocks?|index|indices) (?:\w+ )?(?:closed|ended|finished|traded|"
            r"opened) (?:up|higher)\b"
        ),
        1.6,
    ),
    (
        "market loss",
        _R(
            r"\b(?:shares?|stocks?|index|indices) (?:\w+ )?(?:closed|ended|finished|traded|"
            r"opened) (?:down|lower)\b"
        ),
        -1.6,
    ),
    (
        "deal ended",
        _R(
            r"\b(?:end|ends|ending|ended|terminate|terminates|terminated|terminating|cancel|cancels|"
            r"cancelled|canceled|cancelling|scrap|scraps|scrapped|lost|loses|lose) (?:\w+ ){0,3}?"
            r"(?:cooperation|partnership|contracts?|agreements?|deals?|alliance|orders?|licen[cs]e)\b|"
            r"\b(?:contract|agreement|deal|order|licen[cs]e)s? (?:was |were |has been |have been )?"
            r"(?:cancelled|canceled|terminated|scrapped|lost)\b"
        ),
        -1.8,
    ),
    (
        "leadership change",
        _R(
            r"\b(?:step|steps|stepped|stepping) down\b|\bresign(?:s|ed|ing|ation)?\b|\bquits?\b|"
            r"\bousted\b|\b(?:departure|exit) of (?:the |its |their )?(?:chief|ceo|cfo|chair)"
        ),
        -1.2,
    ),
    (
        "performing well",
        _R(
            r"\b(?:performed|performs|perform|performing|did|doing|went|going|progressed|developed|"
            r"developing|positioned|placed|sold|selling|received|traded|trading) (?:very |extremely |"
            r"particularly |exceptionally |really |relatively |reasonably )?well\b"
        ),
        1.6,
    ),
    (
        "on track",
        _R(
            r"\b(?:on|ahead of) (?:track|target|schedule|plan)\b|\b(?:picked|picks|pick|picking) up"
            r"(?= again| in | strongly| sharply| markedly| significantly| during| towards?| ?[,.;]|$)|"
            r"\bbounced back\b|\bback on track\b|\bturn-?around\b|\bin (?:good|great|solid) shape\b"
        ),
        1.2,
    ),
    (
        "step forward",
        _R(r"\b(?:significant|important|major|big|key|decisive) step\b|\bstep forward\b"),
        1.4,
    ),
    (
        "chosen as supplier",
        _R(
            r"\b(?:selected|chosen|chose|chooses|picked|named)\b[^.;]{0,80}?\bas (?:its|their|the|an?|"
            r"exclusive|sole|preferred)(?: \w+){0,3}? (?:supplier|provider|partner|vendor|contractor)\b"
        ),
        1.6,
    ),
    (
        "buy rating",
        _R(
            r"\b(?:buy|outperform|overweight|accumulate)['\"`]* (?:recommendation|rating)s?\b|"
            r"\b(?:upgraded|upgrades|raised|raises|lifted) (?:\w+ ){0,4}?to ['\"`]*(?:buy|outperform|"
            r"overweight|accumulate|add)\b|\brated ['\"`]*(?:buy|outperform|overweight)\b"
        ),
        1.8,
    ),
    (
        "sell rating",
        _R(
            r"\b(?:sell|underperform|underweight|reduce)['\"`]* (?:recommendation|rating)s?\b|"
            r"\b(?:downgraded|downgrades|cut|cuts|lowered|lowers) (?:\w+ ){0,4}?to ['\"`]*(?:sell|"
            r"underperform|underweight|reduce|hold|neutral)\b|"
            r"\brated ['\"`]*(?:sell|underperform|underweight)\b"
        ),
        -1.8,
    ),
    (
        "hiring",
        _R(
            r"\b(?:hire|hires|hired|hiring|recruit|recruits|recruited|recruiting|create|creates|created|"
            r"creating|add|adds|added|generate|generates|generated|generating)(?: \w+){0,3}? (?:new )?"
            r"(?:jobs|staff|employees|workers|people|specialists|engineers|positions)\b|\bnew jobs\b"
        ),
        1.4,
    ),
)
