"""Pieces shared by the output-format parsers."""

from __future__ import annotations

import re

from ..diagnosis import Diagnosis


class DiagnosisParseError(ValueError):
    """Strict parsing found problems; ``.problems`` lists them and ``.partial`` holds what was read."""

    def __init__(self, problems: list[str], partial: Diagnosis | None = None):
        self.problems = list(problems)
        self.partial = partial
        super().__init__("model output does not follow the format: " + "; ".join(self.problems))


_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|(?=<answer>)|\Z)", re.S | re.I)
_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S | re.I)
TASK_TOKENS = ("<MIS>", "<ART>")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def split_think_answer(text: str, problems: list[str]) -> tuple[str, str]:
    """(think, answer) blocks; missing tags are noted in ``problems``, never raised."""
    think_m = _THINK_RE.search(text)
    answer_m = _ANSWER_RE.search(text)
    think = think_m.group(1).strip() if think_m else ""
    if answer_m:
        answer = answer_m.group(1)
        if "</answer>" not in text.lower():
            problems.append("unterminated <answer> block")
    else:
        problems.append("no <answer> block; read the whole output instead")
        answer = text[think_m.end():] if think_m else text
    if think_m and "</think>" not in text.lower():
        problems.append("unterminated <think> block")
    return think, answer


def strip_task_tokens(text: str) -> str:
    for tok in TASK_TOKENS:
        text = text.replace(tok, "")
    return text


def to_float(s: str) -> float | None:
    try:
        value = float(s)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if value == value and abs(value) != float("inf") else None


NUMBER_RE = _NUMBER
