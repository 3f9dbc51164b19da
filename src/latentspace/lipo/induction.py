"""Instruction induction with a real LLM: tasks, prompt formats, the scoring rule, batched scoring, real APE.

The tasks are Honovich et al. (2022)'s instruction-induction set (the `instruction-induction` data set;
MIT). For each task, `raw/induce` demonstrations are split (seeded) into the demonstrations APE writes
instructions from and a *selection* part that optimisers evaluate instructions on; `raw/execute` is the
*credit* part: a method's final pick is credited with its accuracy there, on examples it was never selected
on.

The task model answers through a prompt format ("chat": the model's chat template, the instruction and the
input as the user's turn; "plain": `Instruction: ...\\nInput: ...\\nOutput:`). An answer is scored by a rule:
- "exact": the answer's first line, normalised (lower case, punctuation to spaces), equals the gold output;
- "contains": the gold output appears as whole words in the answer's first line, no competing answer of the
  example appears there (the other labels of a closed label set, the other items of a choose-from-the-input
  task), and the line is not the input echoed back; a one-character gold ("a", "7") must end the line, since it is
  also an ordinary word. A chatty small model ("the opposite of fortunate is unfortunate") is credited, a hedge
  ("positive or negative"), an echo or "Admission is a legal term" for the first letter of admission is not.

`AnswerCache` keeps every generated answer in an append-only JSON-lines file keyed by model, prompt format,
instruction and input, so building an outcome table is paid once and survives a crash (a torn last line is
ignored on reading).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.data import atomic_write, find_dataset
from ..core.errors import DataError

DEV_TASKS = ("antonyms", "sentiment", "larger_animal", "first_word_letter", "singular_to_plural", "sum")
PROMPT_FORMATS = ("chat", "plain")
SCORING_RULES = ("exact", "contains")
MAX_LABELS = 10  # a task whose outputs take at most this many values has a closed label set

APE_TEMPLATE = ("I gave a friend an instruction and {n} inputs. The friend read the instruction and wrote an output "
                "for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\nWhat was the "
                "instruction? Reply with the instruction only, in one sentence.")


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    competitors: tuple[str, ...] = ()


@dataclass
class InductionTask:
    """One task: APE demonstrations, the selection and credit examples, the human-written instructions."""

    name: str
    demos: list[Example]
    selection: list[Example]
    credit: list[Example]
    annotations: list[str] = field(default_factory=list)


def _read_examples(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected an instruction-induction task file)")
    try:
        records = json.loads(path.read_text())["examples"]
        return [(str(r["input"]), str(r["output"])) for r in records.values()]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise DataError(f"{path}: expected {{'examples': {{id: {{'input', 'output'}}}}}}") from None


def load_task(name: str, data_dir: str | Path | None = None, n_selection: int = 100, seed: int = 0) -> InductionTask:
    """A task by name: `n_selection` seeded induce examples to select on, the rest for APE, execute to credit."""
    root = find_dataset("instruction-induction", data_dir)
    induce = _read_examples(root / "raw" / "induce" / f"{name}.json")
    execute = _read_examples(root / "raw" / "execute" / f"{name}.json")
    annotations_path = root / "annotations" / f"{name}.json"
    annotations = json.loads(annotations_path.read_text())["annotations"] if annotations_path.is_file() else []
    if len(induce) <= n_selection:
        raise DataError(f"task {name}: {len(induce)} induce examples, need more than n_selection={n_selection}")
    labels = sorted({o for _, o in induce + execute})
    closed = labels if len(labels) <= MAX_LABELS else None

    def example(x: str, y: str) -> Example:
        if closed is not None:
            others = tuple(label for label in closed if label != y)
        else:
            items = [item.strip() for item in x.split(",")]
            others = tuple(item for item in items if item != y) if len(items) > 1 and y in items else ()
        return Example(x, y, others)

    order = list(range(len(induce)))
    random.Random(f"{seed}-{name}").shuffle(order)
    pool = [example(*induce[i]) for i in order]
    return InductionTask(name, demos=pool[n_selection:], selection=pool[:n_selection],
                         credit=[example(x, y) for x, y in execute], annotations=[str(a) for a in annotations])


def make_prompt(tokenizer, fmt: str, instruction: str, x: str) -> str:
    """The task model's prompt for one input under prompt format `fmt`."""
    if fmt == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{instruction}\n\nInput: {x}"}],
                                             tokenize=False, add_generation_prompt=True)
    if fmt == "plain":
        return f"Instruction: {instruction}\nInput: {x}\nOutput:"
    raise DataError(f"unknown prompt format {fmt!r}; known: {PROMPT_FORMATS}")


def normalise(text: str) -> str:
    """Lower case, hyphens inside words dropped (non-taxable = nontaxable), other punctuation to spaces."""
    text = re.sub(r"(?<=[0-9a-z])-(?=[0-9a-z])", "", text.lower())
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def first_line(answer: str) -> str:
    for line in answer.strip().splitlines():
        if line.strip():
            return line
    return ""


def _has_words(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def is_correct(answer: str, example: Example, rule: str = "contains") -> bool:
    """Whether `answer` gets `example` right under scoring rule `rule` (module docstring)."""
    line, gold = normalise(first_line(answer)), normalise(example.output)
    if rule == "exact":
        return line == gold
    if rule != "contains":
        raise DataError(f"unknown scoring rule {rule!r}; known: {SCORING_RULES}")
    if not _has_words(line, gold) or line == normalise(example.input):
        return False
    if len(gold) == 1 and not line.endswith(f" {gold}") and line != gold:  # "a", "i", a digit: also plain words
        return False
    return not any(_has_words(line, normalise(c)) for c in example.competitors if normalise(c) != gold)


def clean_instruction(text: str) -> str:
    """An APE sample made into one instruction: first line, quotes and a leading 'The instruction was' removed."""
    line = first_line(text).strip()
    line = re.sub(r"^(the )?instruction( was| is)?\s*[:\-]?\s*", "", line, flags=re.IGNORECASE)
    return line.strip(" \"'`*").strip()


def paraphrases(instruction: str) -> list[str]:
    """Simple rule-based paraphrases of a human instruction (pool variety at no LLM cost)."""
    text = instruction.strip().rstrip(".")
    if not text:
        return []
    lower = text[0].lower() + text[1:]
    upper = text[0].upper() + text[1:]
    return [f"{upper}.", f"Please {lower}.", f"{upper}. Give only the answer.", f"Task: {lower}."]


def key_of(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]


class AnswerCache:
    """Generated answers by (model, prompt format, instruction, input), in an append-only JSON-lines file.

    Each batch is appended, flushed and fsynced; a torn last line (a crash mid-write) is skipped on reading,
    so at most the batch in flight is generated again.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.answers: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    self.answers[record["k"]] = record["a"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def add(self, pairs: dict[str, str]) -> None:
        self.answers.update(pairs)
        if self.path is None or not pairs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write("".join(json.dumps({"k": k, "a": a}) + "\n" for k, a in pairs.items()))
            handle.flush()
            os.fsync(handle.fileno())


class LLMTaskModel:
    """A causal LM answering prompts in batches: greedy, left-padded, longest prompts first."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 24, batch_size: int = 64, model_id: str = "llm"):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.model_id = max_new_tokens, batch_size, model_id
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def generate(self, prompts: Sequence[str], sample: bool = False, temperature: float = 0.9,
                 max_new_tokens: int | None = None, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """One completion per prompt; batched (B prompts of similar length at a time)."""
        import torch

        tok, device = self.tokenizer, next(self.model.parameters()).device
        tok.padding_side = "left"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        out: list[str] = [""] * len(prompts)
        generator_seed = seed
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            batch = tok([prompts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(device) for k, v in batch.items()}
            kwargs = dict(max_new_tokens=max_new_tokens or self.max_new_tokens, pad_token_id=tok.pad_token_id,
                          do_sample=sample)
            if sample:
                torch.manual_seed(generator_seed)
                generator_seed += 1
                kwargs.update(temperature=temperature, top_p=0.95)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                ids = self.model.generate(**batch, **kwargs)
            texts = tok.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(index, texts, strict=True):
                out[i] = text
            if progress:
                progress(len(index))
        return out

    def generate_one_by_one(self, prompts: Sequence[str]) -> list[str]:
        """The unbatched reference loop (the speed baseline of the benchmark)."""
        size, self.batch_size = self.batch_size, 1
        try:
            return self.generate(prompts)
        finally:
            self.batch_size = size


def answer_all(task_model: LLMTaskModel, fmt: str, instructions: Sequence[str], examples: Sequence[Example],
               cache: AnswerCache, progress: Callable[[int], None] | None = None,
               flush_every: int = 2048) -> list[list[str]]:
    """Answers of every instruction on every example (I lists of E), generating only what the cache lacks."""
    keys = [[key_of(task_model.model_id, fmt, ins, ex.input) for ex in examples] for ins in instructions]
    todo: dict[str, str] = {}
    for ins, row in zip(instructions, keys, strict=True):
        for ex, k in zip(examples, row, strict=True):
            if k not in cache.answers and k not in todo:
                todo[k] = make_prompt(task_model.tokenizer, fmt, ins, ex.input)
    items = list(todo.items())
    for start in range(0, len(items), flush_every):
        chunk = items[start:start + flush_every]
        answers = task_model.generate([p for _, p in chunk], progress=progress)
        cache.add({k: a for (k, _), a in zip(chunk, answers, strict=True)})
    return [[cache.answers[k] for k in row] for row in keys]


def outcomes(answers: list[list[str]], examples: Sequence[Example], rule: str) -> list[str]:
    """Per instruction, a string of '0'/'1' per example (the compact form of an outcome table row)."""
    return ["".join("1" if is_correct(a, ex, rule) else "0" for a, ex in zip(row, examples, strict=True))
            for row in answers]


def ape_instructions(task_model: LLMTaskModel, task: InductionTask, n_sets: int = 60, per_set: int = 4,
                     demos_per_set: int = 5, seed: int = 0) -> list[str]:
    """APE: the LLM writes instructions from demonstration sets (sampled, `per_set` per set), cleaned, deduped."""
    rng = random.Random(f"ape-{seed}-{task.name}")
    prompts = []
    for _ in range(n_sets):
        demos = rng.sample(task.demos, demos_per_set)
        pairs = "\n\n".join(f"Input: {d.input}\nOutput: {d.output}" for d in demos)
        text = APE_TEMPLATE.format(n=demos_per_set, pairs=pairs)
        chat = task_model.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                        add_generation_prompt=True)
        prompts += [chat] * per_set
    samples = task_model.generate(prompts, sample=True, max_new_tokens=40, seed=seed)
    seen, out = set(), []
    for text in samples:
        instruction = clean_instruction(text)
        if len(instruction) >= 8 and instruction.lower() not in seen:
            seen.add(instruction.lower())
            out.append(instruction)
    return out


def instruction_pool(task: InductionTask, ape: Sequence[str]) -> list[tuple[str, str]]:
    """(instruction, source) with source "human", "paraphrase" or "ape"; deduped, human first."""
    seen, out = set(), []
    for source, texts in (("human", task.annotations),
                          ("paraphrase", [p for a in task.annotations for p in paraphrases(a)]), ("ape", ape)):
        for text in texts:
            if text.strip() and text.strip().lower() not in seen:
                seen.add(text.strip().lower())
                out.append((text.strip(), source))
    return out


def write_table(path: str | Path, task: InductionTask, pool: Sequence[tuple[str, str]], fmt: str, rule: str,
                model_id: str, selection: list[str], credit: list[str]) -> None:
    """A task's outcome table as JSON: instructions, sources, and per-instruction outcome strings."""
    table = {"task": task.name, "model": model_id, "prompt_format": fmt, "scoring_rule": rule,
             "instructions": [p[0] for p in pool], "sources": [p[1] for p in pool],
             "selection_inputs": [e.input for e in task.selection], "credit_inputs": [e.input for e in task.credit],
             "selection": selection, "credit": credit}
    atomic_write(Path(path), json.dumps(table, indent=0) + "\n")


def read_table(path: str | Path) -> dict:
    """A table written by `write_table`; outcome strings become 0/1 int matrices (I, E)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DataError(f"outcome table {path} does not exist")
    table = json.loads(path.read_text())
    for part in ("selection", "credit"):
        rows = table[part]
        if len(rows) != len(table["instructions"]) or len({len(r) for r in rows}) != 1:
            raise DataError(f"{path}: '{part}' must hold one equal-length outcome string per instruction")
        table[part] = np.array([[c == "1" for c in row] for row in rows], dtype=np.int8)
    return table


INVERSION_PROMPT = ("Here are instructions for the same task:\n{examples}\n\nWrite one new instruction for this task "
                    "that combines their ideas. Reply with the instruction only, in one sentence.")


def llm_inversion_candidates(task_model: LLMTaskModel, neighbour_sets: Sequence[Sequence[str]], per_target: int = 8,
                             seed: int = 0) -> list[list[str]]:
    """LLM inversion (InstructZero's manner): per target, the LLM writes instructions from its nearest pool ones.

    neighbour_sets: for each target, the pool instructions nearest to the decoded latent (closest first).
    Returns per target up to `per_target` distinct cleaned instructions; the caller keeps the one whose
    re-encoded embedding is closest to the target.
    """
    prompts = []
    for neighbours in neighbour_sets:
        text = INVERSION_PROMPT.format(examples="\n".join(f"- {n}" for n in neighbours))
        chat = task_model.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                        add_generation_prompt=True)
        prompts += [chat] * per_target
    samples = task_model.generate(prompts, sample=True, max_new_tokens=40, seed=seed)
    out = []
    for t in range(len(neighbour_sets)):
        cleaned = [clean_instruction(s) for s in samples[t * per_target:(t + 1) * per_target]]
        out.append(list(dict.fromkeys(c for c in cleaned if len(c) >= 8)))
    return out
