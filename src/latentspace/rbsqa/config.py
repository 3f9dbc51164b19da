"""`RBSQAConfig`: the encoder, the segmenting, the gated memory, the belief tracker flags, the data and training
(`train: TrainConfig`)."""

from __future__ import annotations

import dataclasses

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.training import TrainConfig

RE_SCORING_METHODS = ("context_weighted", "learned")
TASKS = ("stories", "facts", "mixed")


@dataclasses.dataclass
class RBSQAConfig(Config):
    """Everything an RBS-QA model and its training run are built from (the seed's `RBSTrainingConfig`)."""

    # encoder: a hub id / local path, "all-MiniLM-L6-v2" (packaged, offline) or "tiny-bert" (random, tests)
    encoder: str = "all-MiniLM-L6-v2"
    freeze_encoder: bool = True  # frozen encoder: its segment encodings are computed once and cached
    encoder_layers: int = 2  # keep the encoder's first N layers (0: all); the frozen lower layers are cheap on CPU
    tiny_hidden: int = 32  # hidden size of "tiny-bert"
    # segmenting: [CLS] question [SEP] segment [SEP], segments overlap by segment_len - segment_stride tokens
    max_question_len: int = 16
    segment_len: int = 32
    segment_stride: int = 24
    max_answer_len: int = 4
    # gated memory carried from segment to segment and the trainable reasoning layers above the encoder
    model_dim: int = 128  # width D of the memory, reasoning layers and QA head (0: the encoder's width)
    num_memory_slots: int = 4
    num_heads: int = 4
    reasoning_layers: int = 1
    # a learned position embedding added to the trainable path: "the *last* move of X in this segment" needs
    # token order, which the frozen encoder's states hold only entangled with content
    position_embedding: bool = True
    # belief-state tracker (seed names)
    use_belief_state: bool = True
    belief_state_threshold: float = 0.7
    # after calibration, set belief_state_threshold to the lowest one whose F1 lost by halting on the halting-
    # validation documents is <= this with confidence 1 - halting_delta (Learn-then-Test, Hoeffding-Bentkus
    # bound; None: keep belief_state_threshold as given)
    halting_f1_tolerance: float | None = 0.01
    halting_delta: float = 0.05
    # halting also needs the same believed span for this many segments in a row (1: confidence alone; on the
    # 1000 halting-validation documents 2 read fewer segments at the certified risk with the 800-document model,
    # 1 fewer with the 2000-document one)
    halting_stable_segments: int = 1
    enable_re_scoring: bool = True
    confidence_calibration: bool = True
    re_scoring_method: str = "learned"  # trained with the model; "context_weighted" needs no training
    max_segments: int = 32
    enable_trend_analysis: bool = True
    # data: stories are generated, or real bAbI qa1 ("babi": the babi-tasks data set, full copy or the embedded
    # sample); long documents are generated unless a squad/ folder of SQuAD-format files is found
    task: str = "mixed"
    stories: str = "generated"
    data_dir: str | None = None
    train_docs: int = 2000  # 1000 stories + 1000 long documents (800 before: the QA model fell for distractors)
    val_docs: int = 100
    # long validation documents the halting threshold is selected on (a split of its own, "halt"): the
    # selection bounds the F1 lost by halting with a confidence bound, which needs hundreds of documents
    halting_val_docs: int = 1000
    test_docs: int = 120
    story_sentences: int = 16
    distractors: int = 5
    # training of the memory, reasoning layers and QA head (the encoder stays frozen by default); train.seed is
    # the run's one seed: the generated documents, the new layers' initialisation, the batches and the fit loop
    batch_size: int = 16
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=900, lr=1e-3, warmup_steps=None, log_every=18, cpu=True))

    PRESETS = {
        "tiny": {"encoder": "tiny-bert", "freeze_encoder": False, "tiny_hidden": 32, "model_dim": 0, "num_heads": 2,
                 "train_docs": 24, "halting_val_docs": 12, "val_docs": 12, "test_docs": 12, "batch_size": 4,
                 "story_sentences": 10, "distractors": 2, "train": {"steps": 20, "log_every": 1}},
        "demo": {"stories": "babi", "train_docs": 200, "val_docs": 40, "test_docs": 40, "halting_val_docs": 300,
                 "train": {"steps": 200, "log_every": 4}},
        "small": {"train_docs": 400, "val_docs": 60, "test_docs": 80, "halting_val_docs": 500,
                  "train": {"steps": 400, "log_every": 8}},
        "base": {},
    }

    @classmethod
    def from_dict(cls, data):
        """Build from a dict; the flat config.json of a checkpoint from before `train` (steps, lr, seed) converts."""
        if any(key in data for key in _LEGACY):
            data = dict(data)
            train = {_LEGACY[key]: data.pop(key) for key in list(data) if key in _LEGACY}
            if "steps" in train:  # what training ran with: log_every followed steps
                train["log_every"] = max(1, train["steps"] // 50)
            data["train"] = {**train, **data.get("train", {})}
        return super().from_dict(data)

    def __post_init__(self):
        if self.re_scoring_method not in RE_SCORING_METHODS:
            raise ConfigError(f"re_scoring_method {self.re_scoring_method!r}: expected one of {RE_SCORING_METHODS}")
        if self.stories not in ("generated", "babi"):
            raise ConfigError(f"stories {self.stories!r}: expected 'generated' or 'babi'")
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r}: expected one of {TASKS}")
        if not 0 < self.segment_stride <= self.segment_len:
            raise ConfigError(f"segment_stride {self.segment_stride} must be in (0, segment_len={self.segment_len}]")
        if not 0.0 <= self.belief_state_threshold <= 1.0:
            raise ConfigError(f"belief_state_threshold {self.belief_state_threshold} must lie in [0, 1]")
        if self.halting_stable_segments < 1 or not 0.0 < self.halting_delta < 1.0:
            raise ConfigError("halting_stable_segments must be >= 1 and halting_delta in (0, 1)")
        if self.max_answer_len < 1 or self.max_segments < 1:
            raise ConfigError("max_answer_len and max_segments must be >= 1")

    @property
    def seed(self) -> int:
        """The run's one seed (`train.seed`)."""
        return self.train.seed

    @property
    def seq_len(self) -> int:
        """Length of one segment input: [CLS] question(padded) [SEP] segment [SEP]."""
        return self.max_question_len + self.segment_len + 3

    @property
    def context_start(self) -> int:
        """Index of the first segment token in a segment input."""
        return self.max_question_len + 2


# the flat fields before `train` -> their TrainConfig field
_LEGACY = {"steps": "steps", "lr": "lr", "seed": "seed"}

RBSTrainingConfig = RBSQAConfig  # the seed's name for the same flags
