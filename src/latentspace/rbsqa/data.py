"""Documents read segment by segment: generated bAbI-style stories, bAbI and SQuAD loaders, long documents.

A `Document` is a context, a question and its answer events: each `AnswerEvent` is the answer as it
stands from some point of the context on (a person moves, so "Where is Mary?" changes answer). A story
has many events; a SQuAD question has one. `encode_document` splits the context into overlapping token
segments, each fed as `[CLS] question [SEP] segment [SEP]`, and derives per segment the gold span (or
null), the answer believed after that segment, and the ground-truth revision points.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import torch

from ..core.data import find_dataset
from ..core.errors import DataError
from .config import RBSQAConfig

PEOPLE = ["Mary", "John", "Sandra", "Daniel", "Emma", "Lucas", "Julie", "Fred"]
LOCATIONS = ["kitchen", "garden", "office", "hallway", "bathroom", "bedroom", "garage", "cellar"]
OBJECTS = ["football", "apple", "milk", "keys"]
MOVE_VERBS = ["moved", "went", "travelled", "journeyed"]
FIRST_NAMES = ["Alice", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Karin",
               "Leon", "Mira", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Stefan", "Tara", "Ulrich", "Vera"]
LAST_NAMES = ["Adler", "Brandt", "Castro", "Dorn", "Ekberg", "Fischer", "Gomez", "Hartley", "Ivanov", "Jansen",
              "Keller", "Lindqvist", "Moreau", "Novak", "Ortega", "Petrov", "Quist", "Rossi", "Sato", "Tanaka"]
CITIES = ["Lisbon", "Oslo", "Madrid", "Vienna", "Prague", "Dublin", "Athens", "Warsaw", "Helsinki", "Geneva"]
JOBS = ["baker", "pilot", "nurse", "painter", "lawyer", "farmer", "teacher", "chemist", "sailor", "tailor"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
ANIMALS = ["cat", "dog", "horse", "parrot", "rabbit", "goat"]


@dataclasses.dataclass
class AnswerEvent:
    """The answer is `text` (context[char_start:char_end]) from character `at_char` of the context on."""

    char_start: int
    char_end: int
    text: str
    at_char: int = -1

    def __post_init__(self):
        if self.at_char < 0:
            self.at_char = self.char_end


@dataclasses.dataclass
class Document:
    """A context and a question whose answer may change as the context is read (events in reading order)."""

    doc_id: str
    context: str
    question: str
    events: list[AnswerEvent]
    kind: str = "story"

    @property
    def answer(self) -> str:
        """The final answer ("" for a document read without a known answer)."""
        return self.events[-1].text if self.events else ""


@dataclasses.dataclass
class EncodedDocument:
    """A document cut into S segments of one fixed input length L (see `encode_document`).

    input_ids, attention_mask: (S, L). context_mask: (S, L) True on segment tokens.
    gold_start, gold_end: (S,) positions in the input, 0 (the [CLS] null) when the segment holds no gold span.
    offsets[s]: global token index of segment s's first token. token_chars: (N, 2) char span of each token.
    states[s]: the answer after reading segment s (None before the first event).
    revision_points: segments where an existing answer changes to a new one.
    """

    doc: Document
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    context_mask: torch.Tensor
    gold_start: torch.Tensor
    gold_end: torch.Tensor
    offsets: list[int]
    token_chars: list[tuple[int, int]]
    states: list[str | None]
    revision_points: list[int]

    @property
    def num_segments(self) -> int:
        return self.input_ids.shape[0]

    def span_text(self, span: tuple[int, int] | None) -> str:
        """The context text of a global (start, end) token span (inclusive), "" for None."""
        if span is None:
            return ""
        start, end = span
        return self.doc.context[self.token_chars[start][0] : self.token_chars[end][1]]

    def cache_keys(self) -> list[str]:
        """One content key per segment input (the token ids), for `EmbeddingCache`."""
        return [" ".join(map(str, row.tolist())) for row in self.input_ids]


# ---- generated bAbI-style stories ------------------------------------------------------------------------


def generate_story(rng: random.Random, n_sentences: int = 16, object_question: bool = False,
                   doc_id: str = "story") -> Document:
    """A story of people moving between places and carrying objects; the question's answer changes.

    "Where is <person>?" changes at each of the person's moves; "Where is the <object>?" changes when its
    carrier moves. At least two answer changes happen, so later segments revise earlier answers.
    """
    while True:
        people = rng.sample(PEOPLE, 3)
        where: dict[str, tuple[int, int, str] | None] = {p: None for p in people}  # last location token span
        carrier: dict[str, str | None] = {o: None for o in OBJECTS[:2]}
        target = people[0]
        target_object = rng.choice(list(carrier))
        parts: list[str] = []
        events: list[AnswerEvent] = []
        pos = 0
        for i in range(n_sentences):
            person = target if (i == 0 or rng.random() < 0.35) else rng.choice(people[1:])
            held = [o for o, c in carrier.items() if c == person]
            free = [o for o, c in carrier.items() if c is None]
            roll = rng.random()
            if where[person] is not None and free and roll < 0.15:
                obj = rng.choice(free)
                sentence = f"{person} picked up the {obj}."
                carrier[obj] = person
                if object_question and obj == target_object:
                    start, end, text = where[person]
                    events.append(AnswerEvent(start, end, text, at_char=pos + len(sentence)))
            elif held and roll < 0.25:
                obj = rng.choice(held)
                sentence = f"{person} dropped the {obj}."
                carrier[obj] = None
            else:
                current = where[person][2] if where[person] else None
                place = rng.choice([loc for loc in LOCATIONS if loc != current])
                sentence = f"{person} {rng.choice(MOVE_VERBS)} to the {place}."
                start = pos + sentence.index(place, len(person))
                where[person] = (start, start + len(place), place)
                if (not object_question and person == target) or (
                        object_question and carrier[target_object] == person):
                    events.append(AnswerEvent(start, start + len(place), place))
            parts.append(sentence)
            pos += len(sentence) + 1
        changes = sum(1 for a, b in zip(events, events[1:], strict=False) if a.text != b.text)
        if changes >= 2:
            question = f"Where is the {target_object}?" if object_question else f"Where is {target}?"
            return Document(doc_id, " ".join(parts), question, events, kind="story")


# ---- SQuAD-format fact paragraphs and long documents ------------------------------------------------------


def generate_fact_paragraphs(n: int, rng: random.Random) -> dict:
    """`n` SQuAD-format paragraphs about distinct people (born in, works as, pet colour), one question each."""
    names = [f"{a} {b}" for a in FIRST_NAMES for b in LAST_NAMES]
    rng.shuffle(names)
    if n > len(names):
        raise DataError(f"at most {len(names)} fact paragraphs can be generated, asked for {n}")
    data = []
    for i, name in enumerate(names[:n]):
        city, city2 = rng.sample(CITIES, 2)
        job, color, animal = rng.choice(JOBS), rng.choice(COLORS), rng.choice(ANIMALS)
        sentences = [f"{name} was born in {city}.", f"{name} works as a {job} in {city2}.",
                     f"{name} has a {color} {animal}."]
        rng.shuffle(sentences)
        context = " ".join(sentences)
        kind = rng.randrange(3)
        if kind == 0:
            question, answer, anchor = f"Where was {name} born?", city, f"born in {city}"
        elif kind == 1:
            question, answer, anchor = f"What does {name} work as?", job, f"as a {job}"
        else:
            question, answer, anchor = f"What color is the {animal} of {name}?", color, f"a {color} {animal}"
        start = context.index(anchor) + anchor.index(answer)
        data.append({"title": name, "paragraphs": [{"context": context, "qas": [
            {"id": f"fact-{i}", "question": question, "answers": [{"text": answer, "answer_start": start}]}]}]})
    return {"version": "generated-facts", "data": data}


def parse_squad(obj: dict, source: str = "squad") -> list[Document]:
    """Documents from a SQuAD-format object (v1.1 or v2.0; unanswerable questions are skipped)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise DataError(f"{source}: not SQuAD format (expected an object with a 'data' list)")
    docs = []
    for article in obj["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{source}: a paragraph has no 'context' text")
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers") or []
                if qa.get("is_impossible") or not answers:
                    continue
                ans = answers[0]
                text, start = ans.get("text"), ans.get("answer_start")
                if not isinstance(text, str) or not isinstance(start, int):
                    raise DataError(f"{source}: question {qa.get('id')} has an answer without text/answer_start")
                if context[start : start + len(text)] != text:
                    raise DataError(f"{source}: answer {text!r} of {qa.get('id')} is not at char {start}")
                docs.append(Document(str(qa.get("id", len(docs))), context, qa["question"],
                                     [AnswerEvent(start, start + len(text), text)], kind="squad"))
    if not docs:
        raise DataError(f"{source}: no answerable questions found")
    return docs


def load_squad(path: str | Path) -> list[Document]:
    """Documents from a SQuAD-format JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SQuAD file {path} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not JSON ({err})") from None
    return parse_squad(obj, str(path))


_BABI_LINE = re.compile(r"^(\d+)\s+(.*)$")


def load_babi(path: str | Path) -> list[Document]:
    """Documents from a bAbI task file (`N sentence` lines; questions `N question?<TAB>answer<TAB>support`).

    Each question becomes a document over the story so far. For "Where is X?" the events are X's moves
    (every sentence naming X and ending in a place), so the revision points are known; for other
    questions the single event is the answer's last mention.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"bAbI file {path} does not exist")
    docs: list[Document] = []
    story: list[str] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        match = _BABI_LINE.match(raw.strip("\n"))
        if not match:
            raise DataError(f"{path}:{lineno}: expected 'N text', got {raw[:60]!r}")
        if int(match.group(1)) == 1:
            story = []
        body = match.group(2)
        if "\t" not in body:
            story.append(body.strip())
            continue
        fields = body.split("\t")
        if len(fields) < 2:
            raise DataError(f"{path}:{lineno}: a question needs a tab-separated answer")
        question, answer = fields[0].strip(), fields[1].strip().split(",")[0]
        context = " ".join(story)
        events: list[AnswerEvent] = []
        subject = re.match(r"where is (?:the )?(\w+)\?", question.lower())
        pos = 0
        for sentence in story:
            words = sentence.rstrip(".").split()
            if subject and words and subject.group(1) in sentence.lower().split()[0:1] and len(words) >= 2:
                place = words[-1]
                start = pos + sentence.rindex(place)
                events.append(AnswerEvent(start, start + len(place), place))
            pos += len(sentence) + 1
        if not events or events[-1].text != answer:
            start = context.rfind(answer)
            if start < 0:
                raise DataError(f"{path}:{lineno}: answer {answer!r} does not occur in the story")
            events = [AnswerEvent(start, start + len(answer), answer)]
        docs.append(Document(f"{path.stem}-{lineno}", context, question, events, kind="babi"))
    if not docs:
        raise DataError(f"{path}: no questions found")
    return docs


def long_documents(docs: list[Document], distractors: int, rng: random.Random,
                   pool_docs: list[Document] | None = None) -> list[Document]:
    """Each document's paragraph placed at a random position among `distractors` other paragraphs.

    Distractors are drawn from the contexts of `pool_docs` (default: `docs` themselves).
    """
    pool = list(dict.fromkeys(d.context for d in (pool_docs or docs)))
    if len(pool) <= distractors:
        raise DataError(f"need more than {distractors} distinct paragraphs for distractors, have {len(pool)}")
    out = []
    for doc in docs:
        others = rng.sample([c for c in pool if c != doc.context], distractors)
        at = rng.randrange(distractors + 1)
        before = " ".join(others[:at])
        shift = len(before) + (1 if before else 0)
        context = " ".join([*others[:at], doc.context, *others[at:]])
        events = [AnswerEvent(e.char_start + shift, e.char_end + shift, e.text, e.at_char + shift) for e in doc.events]
        out.append(Document(doc.doc_id, context, doc.question, events, kind="long"))
    return out


def _real_file(name: str, pattern: str, data_dir: str | None) -> Path | None:
    folder = find_dataset(name, data_dir, required=False)
    if folder is None:
        return None
    files = sorted(folder.rglob(pattern))
    return files[0] if files else None


FACT_CHUNK = 400  # long documents generated per call of generate_fact_paragraphs (at most 440 people)


def build_documents(config: RBSQAConfig, split: str) -> list[Document]:
    """The documents of a split ("train", "val", "test"): real bAbI / SQuAD files when present, else generated.

    Stories come from bAbI's `qa1_*train.txt` when `config.stories == "babi"`, long documents from
    `squad/*.json` when found in `config.data_dir`.
    """
    sizes = {"train": config.train_docs, "val": config.val_docs, "test": config.test_docs,
             "halt": config.halting_val_docs}
    if split not in sizes:
        raise DataError(f"unknown split {split!r}: expected train, val, test or halt")
    n = sizes[split]
    rng = random.Random(f"{config.seed}-{split}")
    if split == "halt":  # the halting-validation split: long documents only (halting is measured on them)
        n_stories = 0 if config.task != "stories" else n
    else:
        n_stories = n if config.task == "stories" else 0 if config.task == "facts" else n // 2
    n_long = n - n_stories
    docs: list[Document] = []
    if n_stories:
        babi = _real_file("babi-tasks", "*qa1_*train.txt", config.data_dir) if config.stories == "babi" else None
        if config.stories == "babi" and babi is None:
            raise DataError("bAbI qa1 (qa1_*train.txt) not found in the babi-tasks data set")
        if babi is not None:
            docs += _take_split(load_babi(babi), split, n_stories)
        else:
            docs += [generate_story(rng, config.story_sentences, doc_id=f"{split}-story-{i}")
                     for i in range(n_stories)]
    if n_long:
        squad = _real_file("squad", "*.json", config.data_dir)
        if squad is not None:
            base = _take_split(load_squad(squad), split, n_long + config.distractors + 1)
            docs += long_documents(base[:n_long], config.distractors, rng, pool_docs=base)
        else:
            # in chunks: the generator has a bounded number of distinct people per call
            for at in range(0, n_long, FACT_CHUNK):
                size = min(FACT_CHUNK, n_long - at)
                base = parse_squad(generate_fact_paragraphs(size + config.distractors + 1, rng), "generated facts")
                docs += long_documents(base[:size], config.distractors, rng, pool_docs=base)
    return docs


def _take_split(docs: list[Document], split: str, n: int) -> list[Document]:
    """A deterministic disjoint split of a real data set by document order (train 80%, val 10%, test 10%)."""
    cut1, cut2 = int(len(docs) * 0.8), int(len(docs) * 0.9)
    # the halting-validation split is drawn from the validation part too
    part = {"train": docs[:cut1], "val": docs[cut1:cut2], "halt": docs[cut1:cut2], "test": docs[cut2:]}[split]
    return part[:n]


# ---- tokenizing into segments ------------------------------------------------------------------------------


def encode_document(doc: Document, tokenizer, config: RBSQAConfig) -> EncodedDocument:
    """Cut a document into overlapping segments and derive gold spans, states and revision points."""
    if not doc.context.strip():
        raise DataError(f"document {doc.doc_id} has an empty context")
    if not doc.question.strip():
        raise DataError(f"document {doc.doc_id} has an empty question")
    enc = tokenizer(doc.context, add_special_tokens=False, return_offsets_mapping=True)
    ids, chars = enc["input_ids"], [tuple(c) for c in enc["offset_mapping"]]
    q_ids = tokenizer(doc.question, add_special_tokens=False)["input_ids"][: config.max_question_len]
    n, seg, stride = len(ids), config.segment_len, config.segment_stride
    starts = list(range(0, max(1, n - seg + stride), stride)) or [0]
    starts = [s for s in starts if s < n] or [0]
    events = []
    for e in doc.events:  # event -> (first token, last token, token at which it takes effect, text)
        toks = [i for i, (a, b) in enumerate(chars) if a < e.char_end and b > e.char_start]
        if not toks:
            raise DataError(f"document {doc.doc_id}: answer {e.text!r} does not align with any token")
        at = max([i for i, (a, _) in enumerate(chars) if a < e.at_char] or [toks[-1]])
        events.append((toks[0], toks[-1], max(at, toks[-1]), e.text))
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    cs, length = config.context_start, config.seq_len
    S = len(starts)
    input_ids = torch.full((S, length), pad, dtype=torch.long)
    attention = torch.zeros(S, length, dtype=torch.long)
    context_mask = torch.zeros(S, length, dtype=torch.bool)
    gold_start = torch.zeros(S, dtype=torch.long)
    gold_end = torch.zeros(S, dtype=torch.long)
    states: list[str | None] = []
    for s, start in enumerate(starts):
        window = ids[start : start + seg]
        input_ids[s, 0] = cls
        input_ids[s, 1 : 1 + len(q_ids)] = torch.tensor(q_ids, dtype=torch.long)
        input_ids[s, cs - 1] = sep
        input_ids[s, cs : cs + len(window)] = torch.tensor(window, dtype=torch.long)
        input_ids[s, cs + len(window)] = sep
        attention[s, : 1 + len(q_ids)] = 1
        attention[s, cs - 1 : cs + len(window) + 1] = 1
        context_mask[s, cs : cs + len(window)] = True
        end = start + len(window) - 1
        seen = [e for e in events if e[2] <= end]
        current = seen[-1] if seen else None
        states.append(current[3] if current else None)
        if current is not None and current[0] >= start and current[1] <= end:
            gold_start[s], gold_end[s] = cs + current[0] - start, cs + current[1] - start
    revisions = [s for s in range(1, S) if states[s - 1] is not None and states[s] != states[s - 1]]
    return EncodedDocument(doc, input_ids, attention, context_mask, gold_start, gold_end, starts, chars, states,
                           revisions)
