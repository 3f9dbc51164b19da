"""`APEGenerator`: diverse task instructions in five style categories, generated in batches and cached as JSON.

Each call asks the writer model for `ape_batch_size` instructions of one style (a numbered list), at the
style's temperature; styles take turns until `ape_num_instructions` distinct instructions exist. The
writer is any `LLMClient`; offline it is `OfflineInstructionWriter`, a seeded phrase grammar behind a
`CallableBackend` that answers the same meta-prompt with the same numbered-list format, so parsing,
de-duplication and caching run exactly as with a real model.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

from ..core.data import atomic_write
from ..core.errors import DataError
from ..core.llm import GenerationParams, LLMClient
from ..core.progress import progress_bar

STYLE_CATEGORIES = {
    "minimalist": {
        "description": "Ultra-short, terse (1-5 words only)",
        "examples": ["Solve:", "Answer:", "Calculate.", "Find:"],
        "temperature": 1.0,
    },
    "direct_command": {
        "description": "Short imperative commands (6-15 words)",
        "examples": ["Find the answer to this problem.", "Compute the result and give the final number."],
        "temperature": 0.9,
    },
    "chain_of_thought": {
        "description": "Step-by-step reasoning triggers",
        "examples": ["Let's think step by step.", "Work through the problem one step at a time."],
        "temperature": 0.8,
    },
    "pedagogical": {
        "description": "Patient teacher/tutor persona",
        "examples": ["You are a patient tutor. Explain each step to a student.",
                     "As a friendly math teacher, guide the learner to the answer."],
        "temperature": 0.9,
    },
    "analytical": {
        "description": "Focus on logical structure and analysis",
        "examples": ["Analyze the logical structure of the problem before computing.",
                     "Identify the known quantities and the relationships between them."],
        "temperature": 0.8,
    },
}

META_PROMPT = """You write instructions for a language model that solves grade-school math word problems.
Style: {style} - {description}.
Examples of this style:
{examples}
Write {n} new, diverse instructions in this style (batch {batch}).
Output a numbered list, one per line, nothing else."""


def parse_numbered_list(text: str) -> list[str]:
    """Items of a numbered or bulleted list ("1. ...", "2) ...", "- ..."), stripped of quotes."""
    items = []
    for line in text.splitlines():
        match = re.match(r"^\s*(?:\d+[.)]|[-*\u2022])\s*(.+?)\s*$", line)
        if match:
            item = match.group(1).strip().strip('"').strip("'").strip()
            if item:
                items.append(item)
    return items


class OfflineInstructionWriter:
    """Offline APE writer: a seeded phrase grammar per style, answering META_PROMPT with a numbered list.

    The randomness is seeded by the prompt (which holds the style and the batch number), so reruns give
    the same instructions and different batches give different ones.
    """

    OPENERS = {
        "minimalist": ["Solve", "Answer", "Calculate", "Find", "Compute", "Work it out", "Result", "Solve carefully",
                       "Answer quickly", "Think, then answer", "Final number", "Show work", "Just the number",
                       "Reason it out", "Check and solve", "Step by step"],
        "direct_command": ["Find the answer to this problem", "Compute the result", "Solve the word problem",
                           "Work out the value asked for", "Determine the correct number", "Calculate what is asked",
                           "Read the problem and solve it", "Give the solution", "Answer the question quickly",
                           "Guess the most likely answer", "Figure out the quantity requested"],
        "chain_of_thought": ["Let's think step by step", "Work through the problem one step at a time",
                             "Break the problem into smaller steps", "Reason carefully through each step",
                             "First list what you know, then solve step by step", "Think it through before answering",
                             "Walk through the reasoning slowly", "Solve it in stages, explaining each one"],
        "pedagogical": ["You are a patient tutor", "As a friendly math teacher", "Imagine you are teaching a student",
                        "You are an encouraging mentor", "Act as a careful teaching assistant",
                        "Pretend you are explaining to a ten-year-old", "As an experienced math coach"],
        "analytical": ["Analyze the logical structure of the problem", "Identify the known quantities",
                       "Map out the relationships between the numbers", "Translate the story into an equation",
                       "Decompose the problem into its parts", "Examine which operations the problem needs",
                       "Model the situation with variables"],
    }
    MIDDLES = ["", "show your work", "explain each calculation", "keep track of units", "use simple arithmetic",
               "write the equation first", "be concise", "do not skip steps", "avoid unnecessary words",
               "note every quantity", "reason about each sentence", "focus on the question asked",
               "go through it quickly", "use only the numbers given"]
    CLOSERS = ["", "Give the final answer as a number.", "Double-check your arithmetic.",
               "Verify the result before answering.", "State the final answer clearly.",
               "End with 'The answer is N'.", "Make sure the answer makes sense.", "Put the final number last.",
               "Then answer.", "Be brief.", "No explanation needed.", "Review your work at the end."]

    def __init__(self, seed: int = 0):
        self.seed = seed

    def compose(self, style: str, rng: random.Random) -> str:
        opener = rng.choice(self.OPENERS[style])
        if style == "minimalist":
            return opener + rng.choice([":", ".", "", " now.", ":"])
        middle = rng.choice(self.MIDDLES)
        closer = rng.choice(self.CLOSERS)
        text = opener + (f" and {middle}" if middle else "") + "."
        if style == "pedagogical":
            text = opener + ". " + rng.choice(["Guide the learner", "Explain each step", "Help the student",
                                               "Show the reasoning"]) + (f" and {middle}" if middle else "") + "."
        return (text + (" " + closer if closer else "")).strip()

    def __call__(self, prompt: str, params: GenerationParams | None = None) -> str:
        style_match = re.search(r"^Style: (\w+)", prompt, flags=re.MULTILINE)
        count_match = re.search(r"Write (\d+) new", prompt)
        if not style_match or style_match.group(1) not in self.OPENERS or not count_match:
            return "1. Solve the problem."
        rng = random.Random(f"{self.seed}\x00{prompt}\x00{params.seed if params else 0}")
        lines = [f"{i + 1}. {self.compose(style_match.group(1), rng)}" for i in range(int(count_match.group(1)))]
        return "\n".join(lines)


class APEGenerator:
    """Generate `num_instructions` distinct instructions across STYLE_CATEGORIES, batched, cached as JSON.

    Args:
        client: the writer LLM client.
        num_instructions, batch_size, max_tokens, max_length: the seed's `ape_*` settings.
        cache_path: JSON file {"model", "created", "instructions": [{"text", "style"}]}; reused when it holds
            enough instructions of the same model.
    """

    def __init__(self, client: LLMClient, num_instructions: int = 1000, batch_size: int = 10, max_tokens: int = 100,
                 max_length: int = 500, cache_path: str | Path | None = None, seed: int = 0):
        self.client = client
        self.num_instructions = num_instructions
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.cache_path = Path(cache_path) if cache_path else None
        self.seed = seed

    def load_cache(self) -> list[dict] | None:
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        try:
            data = json.loads(self.cache_path.read_text())
            items = data["instructions"]
            assert all(isinstance(i["text"], str) and i["text"].strip() for i in items)
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
            raise DataError(f"{self.cache_path}: not an APE cache (expected {{'instructions': [{{'text', "
                            "'style'}]}); delete it or pass another ape_cache_path") from None
        if data.get("model") != self.client.model or len(items) < self.num_instructions:
            return None
        return items[: self.num_instructions]

    def save_cache(self, items: list[dict]) -> None:
        if self.cache_path is None:
            return
        payload = {"model": self.client.model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "instructions": items}
        atomic_write(self.cache_path, json.dumps(payload, indent=1, ensure_ascii=False))

    def meta_prompt(self, style: str, batch: int) -> str:
        info = STYLE_CATEGORIES[style]
        examples = "\n".join(f"- {e}" for e in info["examples"])
        return META_PROMPT.format(style=style, description=info["description"], examples=examples,
                                  n=self.batch_size, batch=batch)

    def generate(self, quiet: bool = True, max_rounds: int | None = None) -> list[dict]:
        """Distinct instructions [{"text", "style"}], from the cache when it has enough."""
        cached = self.load_cache()
        if cached is not None:
            return cached
        styles = list(STYLE_CATEGORIES)
        seen: dict[str, dict] = {}  # lower-cased text -> {"text", "style"} (first spelling kept)
        rounds = max_rounds or 20 * (self.num_instructions // (self.batch_size * len(styles)) + 1)
        with progress_bar(quiet, unit="instr") as bar:
            task = bar.add_task("APE", total=self.num_instructions, info="")
            for round_index in range(rounds):
                # one prompt per style per round, sent together (concurrently on HTTP backends)
                prompts = [self.meta_prompt(style, round_index * len(styles) + k) for k, style in enumerate(styles)]
                params = [GenerationParams(max_tokens=self.max_tokens * self.batch_size,
                                           temperature=STYLE_CATEGORIES[style]["temperature"], seed=self.seed)
                          for style in styles]
                for style, text in zip(styles, self._generate_mixed(prompts, params), strict=True):
                    for item in parse_numbered_list(text):
                        if len(item) <= self.max_length and item.lower() not in seen:
                            seen[item.lower()] = {"text": item, "style": style}
                bar.update(task, completed=min(len(seen), self.num_instructions))
                if len(seen) >= self.num_instructions:
                    break
        if len(seen) < 2:
            raise DataError(f"APE produced only {len(seen)} distinct instruction(s); check the writer model")
        items = list(seen.values())[: self.num_instructions]
        self.save_cache(items)
        return items

    def _generate_mixed(self, prompts: list[str], params: list[GenerationParams]) -> list[str]:
        """Send prompts grouped by their params, concurrently within each group; answers in prompt order."""
        out: list[str | None] = [None] * len(prompts)
        for prm in dict.fromkeys(params):
            idx = [i for i, p in enumerate(params) if p == prm]
            for i, text in zip(idx, self.client.generate([prompts[i] for i in idx], prm), strict=True):
                out[i] = text
        return out  # type: ignore[return-value]

