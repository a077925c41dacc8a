"""Accuracy of generated answers, whole strings (the Frozen protocol), never per token.

An answer comes in one of two forms: a full caption ("this is a dax", as the support captions and the
synthetic family's queries) or a bare name ("dax", as the `answer` of the released Frozen files). Both
sides are first normalised as the usual VQA answer normalisation: lower case, punctuation removed,
articles (a, an, the) dropped, whitespace collapsed. Then

- exact match compares the whole normalised strings: "This is a dax." matches "this is dax", "dax" does not;
- name match first removes, from both sides, the caption template the task's support captions share: the
  words they all begin with ("this is a" for "this is a dax" / "this is a wug"). So the generated caption
  "this is a dax" matches the bare answer "dax" and the full answer "this is a dax" alike, while "this is
  a dax dax" or "this is a wug" match neither. Frozen prompts "This is a" and scores the name the model
  generates next; name match is that score for a mapper that generates the whole caption.

Only a shared beginning is a template: a shared ending could be part of the names ("golden retriever",
"labrador retriever"). Support captions with no common first word (COCO) leave name match = exact match.
"""
from __future__ import annotations

import re
import string
from collections.abc import Sequence

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> str:
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def caption_template(captions: Sequence[str]) -> list[str]:
    """The normalised words every caption begins with, leaving at least one word of each caption for the
    name. A single caption has none: nothing tells its template from its name."""
    words = [normalise(c).split() for c in captions]
    if len(words) < 2:
        return []
    shared = []
    for column in zip(*words, strict=False):
        if len(set(column)) > 1:
            break
        shared.append(column[0])
    return shared[:min(map(len, words)) - 1]


def strip_template(text: str, template: Sequence[str]) -> str:
    """`text` normalised, less the caption template when it begins with it: the name it says."""
    words = normalise(text).split()
    return " ".join(words[len(template):] if words[:len(template)] == list(template) else words)


def exact_match(prediction: str, answer: str) -> bool:
    return normalise(prediction) == normalise(answer)


def name_match(prediction: str, answer: str, template: Sequence[str]) -> bool:
    return strip_template(prediction, template) == strip_template(answer, template)
