"""`GSM8KEvaluator`: error rate of an instruction on GSM8K (prompt, final-number extraction, exact match).

Questions come from the gsm8k data set (train.jsonl / test.jsonl of openai/grade-school-math; core/data.py); the
validation set is a seeded sample of train, the test set the first `test_size` test questions. Answers come
from an `LLMClient` (core/llm.py): a real model behind an OpenAI-compatible endpoint or local HF, or,
offline, `SimulatedTaskModel`.

`SimulatedTaskModel` is NOT a language model. It is a deterministic, documented stand-in so that the whole
pipeline runs offline: it reads the instruction and the question out of the prompt and answers correctly
with probability

    p = sigmoid(1.2 + 3.0 * (quality(instruction) - 0.4) - 0.45 * (steps(question) - 3))

where `steps` is the number of calculator annotations (<<...>>) in the reference solution and
`quality` is a fixed score of the instruction's wording (see `instruction_quality`: reasoning cues +0.30,
verification +0.15, answer format +0.15, arithmetic focus +0.10, hurry cues -0.15, very short -0.10,
very long up to -0.20, plus a per-text term in [-0.05, 0.05] from a hash of the text). Whether a given
(instruction, question) pair is answered correctly is decided by a hash of both, so every run and every
fidelity sees the same outcomes. Wrong answers are a different number, so extraction and exact match run
exactly as they do on a real model's text. The weights were fixed once, before any optimiser ran.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.data import find_dataset, read_jsonl
from ..core.errors import DataError
from ..core.llm import GenerationParams, LLMClient

PROMPT_TEMPLATE = "{instruction}\n\nQuestion: {question}\nAnswer:"
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


@dataclass
class GSM8KExample:
    question: str
    answer: str  # the reference solution text
    target: float  # the final number after ####

    @property
    def steps(self) -> int:
        return max(1, self.answer.count("<<"))


def _to_number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_answer(text: str) -> float | None:
    """The final number of a model's answer: after '####', else after 'answer is', else the last number."""
    for pattern in (rf"####\s*({_NUMBER})", rf"answer is[:\s]*({_NUMBER})", rf"\\boxed\{{({_NUMBER})\}}"):
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return _to_number(found[-1])
    numbers = re.findall(_NUMBER, text)
    return _to_number(numbers[-1]) if numbers else None


def is_correct(text: str, target: float) -> bool:
    value = extract_answer(text)
    return value is not None and math.isclose(value, target, rel_tol=0.0, abs_tol=1e-6)


def load_gsm8k(split: str, data_dir: str | Path | None = None) -> list[GSM8KExample]:
    """Read train.jsonl or test.jsonl; malformed lines are an error naming the file and line."""
    path = find_dataset("gsm8k", data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected GSM8K {split}.jsonl)")
    examples = []
    for lineno, record in read_jsonl(path):
        try:
            question, answer = record["question"], record["answer"]
            target = _to_number(answer.split("####")[-1].strip())
        except (KeyError, AttributeError):
            raise DataError(f"{path}:{lineno}: expected a JSON object with 'question' and 'answer'") from None
        if target is None:
            raise DataError(f"{path}:{lineno}: the answer has no final number after '####'")
        examples.append(GSM8KExample(question, answer, target))
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def _unit_hash(*parts: str) -> float:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


_CUES = {
    "reasoning": (0.30, ("step by step", "step-by-step", "think", "reason", "work through", "break", "show your work",
                          "explain", "walk through", "one step")),
    "verification": (0.15, ("check", "verify", "double-check", "make sure", "confirm", "re-read", "review")),
    "answer_format": (0.15, ("final answer", "number", "numeric", "answer is", "####", "box", "clearly state")),
    "arithmetic": (0.10, ("calculat", "comput", "arithmetic", "quantit", "unit", "equation", "math")),
    "hurry": (-0.15, ("guess", "quickly", "briefly", "don't explain", "no explanation", "just the", "fast")),
}


def instruction_quality(instruction: str) -> float:
    """The simulated model's fixed score of an instruction's wording, in [0, 1] (see the module docstring)."""
    text = instruction.lower()
    score = 0.1
    for weight, cues in _CUES.values():
        if any(cue in text for cue in cues):
            score += weight
    words = len(text.split())
    if words < 4:
        score -= 0.10
    if words > 40:
        score -= min(0.20, 0.005 * (words - 40))
    score += 0.10 * (_unit_hash("quality", instruction) - 0.5)
    return min(1.0, max(0.0, score))


class SimulatedTaskModel:
    """Offline stand-in for the GSM8K-solving LLM (module docstring): `fn(prompt, params) -> answer text`."""

    def __init__(self, examples: Sequence[GSM8KExample]):
        self.by_question = {ex.question: ex for ex in examples}

    @staticmethod
    def probability(instruction: str, example: GSM8KExample) -> float:
        logit = 1.2 + 3.0 * (instruction_quality(instruction) - 0.4) - 0.45 * (example.steps - 3)
        return 1.0 / (1.0 + math.exp(-logit))

    def correct(self, instruction: str, example: GSM8KExample) -> bool:
        return _unit_hash("answer", instruction, example.question) < self.probability(instruction, example)

    def __call__(self, prompt: str, params: GenerationParams | None = None) -> str:
        head, sep, rest = prompt.rpartition("\n\nQuestion: ")
        question = rest.removesuffix("\nAnswer:")
        example = self.by_question.get(question)
        if not sep or example is None:
            return "I cannot answer that."
        if self.correct(head, example):
            return f"Working through the problem carefully. The answer is {_fmt(example.target)}."
        offset = 1 + int(_unit_hash("offset", head, question) * 9)
        return f"The answer is {_fmt(example.target + offset)}."

    def true_error(self, instruction: str, examples: Sequence[GSM8KExample]) -> float:
        """The error rate the simulated model would show on `examples` (no client, no calls counted)."""
        return sum(not self.correct(instruction, ex) for ex in examples) / len(examples)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class GSM8KEvaluator:
    """Error rate of instructions on GSM8K through an LLM client.

    Args:
        client: the LLMClient that answers (its call counter is the LLM-call budget).
        validation: the validation examples (fidelity b = the first b of them).
        test: the test examples.
        max_tokens: answer length limit.
    """

    def __init__(self, client: LLMClient, validation: Sequence[GSM8KExample], test: Sequence[GSM8KExample] = (),
                 max_tokens: int = 512):
        if not validation:
            raise DataError("GSM8KEvaluator needs at least one validation example")
        self.client = client
        self.validation = list(validation)
        self.test = list(test)
        self.params = GenerationParams(max_tokens=max_tokens, temperature=0.0)

    @classmethod
    def from_data(cls, client: LLMClient, validation_size: int, test_size: int, seed: int = 42,
                  data_dir: str | Path | None = None, max_tokens: int = 512) -> GSM8KEvaluator:
        train = load_gsm8k("train", data_dir)
        test = load_gsm8k("test", data_dir) if test_size > 0 else []
        if validation_size > len(train):
            raise DataError(f"validation_size {validation_size} exceeds the {len(train)} GSM8K train questions")
        validation = random.Random(seed).sample(train, validation_size)
        return cls(client, validation, test[:test_size], max_tokens=max_tokens)

    @staticmethod
    def prompt(instruction: str, question: str) -> str:
        return PROMPT_TEMPLATE.format(instruction=instruction.strip(), question=question)

    def errors(self, instruction: str, examples: Sequence[GSM8KExample]) -> list[bool]:
        """One batched, concurrent client call; True where the answer is wrong."""
        answers = self.client.generate([self.prompt(instruction, ex.question) for ex in examples], self.params)
        return [not is_correct(text, ex.target) for text, ex in zip(answers, examples, strict=True)]

    def evaluate_range(self, instruction: str, start: int, stop: int) -> float:
        """Error rate on validation questions [start, stop)."""
        if not 0 <= start < stop <= len(self.validation):
            raise DataError(f"validation range [{start}, {stop}) outside 0..{len(self.validation)}")
        wrong = self.errors(instruction, self.validation[start:stop])
        return sum(wrong) / len(wrong)

    def evaluate_test(self, instruction: str) -> float:
        if not self.test:
            raise DataError("no test questions loaded (test_size is 0)")
        wrong = self.errors(instruction, self.test)
        return sum(wrong) / len(wrong)
