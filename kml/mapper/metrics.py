"""Exact-match accuracy of generated answers (the Frozen protocol), not per-token accuracy.

Both sides are normalised the same way before comparing whole strings: lower case, punctuation removed,
articles (a, an, the) dropped, whitespace collapsed, as the usual VQA answer normalisation. So
"This is a dax." matches "this is dax", but "this is a dax dax" or "dax" does not match "this is a dax".
"""
from __future__ import annotations

import re
import string

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> str:
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def exact_match(prediction: str, answer: str) -> bool:
    return normalise(prediction) == normalise(answer)


def accuracy(predictions: list[str], answers: list[str]) -> float:
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    return sum(exact_match(p, a) for p, a in zip(predictions, answers, strict=True)) / len(answers)
