"""Streaming classification: raw bytes in, alerts out as lines arrive, learning from labelled feedback.

Input is read from a file descriptor in chunks, so whatever has arrived is classified as one batch. A
feedback line has the form

    #label <LABEL> <log line>

(LABEL one of the model's labels, case-insensitive); it is not classified but queued, and every
`update_batch` feedback lines trigger one Raccoon continuous update. Bad input never stops the stream:
binary junk and empty lines are skipped and counted, lines past `MAX_LINE_CHARS` are cut (a 1 MB line
is never held whole), undecodable bytes fall back to Latin-1, and a last line without a newline (an
interrupted stream) is still processed. The learner's state is saved atomically every `save_every`
updates or `save_seconds` (5 minutes) after the last save, whichever comes first, and when the stream ends
or is interrupted, so a restart (even after a kill -9) continues from the last save.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .parse import MAX_LINE_CHARS, decode_line
from .raccoon import RaccoonLearner

FEEDBACK_PREFIX = "#label "


@dataclass
class StreamStats:
    lines: int = 0
    classified: int = 0
    alerts: int = 0
    feedback: int = 0
    bad_feedback: int = 0
    updates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_feedback(text: str, labels) -> tuple[str | None, str] | None:
    """`#label LABEL line` -> (label or None when unknown, line); None when the text is not feedback."""
    if not text.startswith(FEEDBACK_PREFIX):
        return None
    _, _, rest = text.partition(" ")
    label, _, line = rest.strip().partition(" ")
    by_upper = {name.upper(): name for name in labels}
    return by_upper.get(label.upper()), line


class LineReader:
    """Split a byte stream (a file descriptor or a binary file object) into lines, never holding more than
    `max_bytes` of one line.

    Yields lists of raw lines (bytes, no newline) per chunk read; a line longer than `max_bytes` is cut
    and flagged by `self.cut` (count). At end of stream an unterminated last line is yielded too and
    `self.unterminated` is set.
    """

    def __init__(self, source, chunk: int = 1 << 16, max_bytes: int = 4 * MAX_LINE_CHARS):
        if isinstance(source, int):
            self.read = lambda n: os.read(source, n)  # returns what has arrived, up to n bytes
        else:
            self.read = getattr(source, "read1", source.read)
        self.chunk = chunk
        self.max_bytes = max_bytes
        self.cut = 0
        self.unterminated = False

    def batches(self):
        pending = b""
        dropping = False  # inside the rest of an over-long line
        while True:
            data = self.read(self.chunk)
            if not data:
                break
            parts = (pending + data).split(b"\n")
            pending = parts.pop()
            out = []
            for part in parts:
                if dropping:
                    dropping = False
                    continue
                out.append(part)
            if len(pending) > self.max_bytes:
                if not dropping:
                    out.append(pending[: self.max_bytes])
                    self.cut += 1
                dropping = True
                pending = b""
            if out:
                yield out
        if pending and not dropping:
            self.unterminated = True
            yield [pending]


class LogStream:
    """Classify streamed lines with a learner's model, print alerts, learn from feedback.

    Args:
        learner: a RaccoonLearner (its model classifies; its update rule learns).
        state_dir: where the learner is saved (None: never saved).
        out: where alerts go (stdout); err: where notes go (stderr).
        as_json: one JSON object per alert instead of text.
        anomaly_threshold: an anomaly score above this is an alert even when the label is not.
        save_every: save after this many continuous updates.
        save_seconds: also save after an update once this many seconds passed since the last save (0: never).
    """

    def __init__(self, learner: RaccoonLearner, state_dir: Path | None = None, out=None, err=None,
                 as_json: bool = False, anomaly_threshold: float = 1.0, save_every: int = 10,
                 save_seconds: float = 300.0):
        self.learner = learner
        self.model = learner.model
        self.state_dir = state_dir
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.as_json = as_json
        self.anomaly_threshold = anomaly_threshold
        self.save_every = save_every
        self.save_seconds = save_seconds
        self._saved_at = time.monotonic()
        self.stats = StreamStats()
        self._queue: list[tuple[str, str]] = []
        self._warned: set[str] = set()

    def _note(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            print(f"note: {message} (further ones are counted, see the summary)", file=self.err)

    def process(self, raw_lines: list[bytes | str]) -> list[dict]:
        """Classify a batch of raw lines and queue feedback; returns the alerts (also printed)."""
        texts = []
        for raw in raw_lines:
            self.stats.lines += 1
            decoded = decode_line(raw)
            if decoded.issue:
                self.stats.skipped[decoded.issue] = self.stats.skipped.get(decoded.issue, 0) + 1
                if decoded.issue == "binary":
                    self._note("binary", f"skipped a binary line (line {self.stats.lines})")
                elif decoded.issue == "truncated":
                    self._note("truncated", f"cut a line longer than {MAX_LINE_CHARS} characters")
                elif decoded.issue == "latin-1":
                    self._note("latin-1", f"line {self.stats.lines} is not UTF-8; read it as Latin-1")
            if decoded.text is None:
                continue
            feedback = parse_feedback(decoded.text, self.model.labels)
            if feedback is None:
                texts.append(decoded.text)
                continue
            label, line = feedback
            if label is None or not line.strip():
                self.stats.bad_feedback += 1
                self._note("feedback", f"ignored feedback line {self.stats.lines}: expected "
                           f"'{FEEDBACK_PREFIX}<{'|'.join(self.model.labels)}> <log line>'")
                continue
            self.stats.feedback += 1
            self._queue.append((line, label))
        alerts = []
        if texts:
            predictions = self.model.classify_lines(texts, anomaly_threshold=self.anomaly_threshold)
            self.stats.classified += len(texts)
            for text, pred in zip(texts, predictions, strict=True):
                if pred.alert:
                    alert = {"label": pred.label, "confidence": round(pred.confidence, 4),
                             "anomaly_score": round(pred.anomaly_score, 4), "line": text}
                    alerts.append(alert)
                    if self.as_json:
                        print(json.dumps(alert), file=self.out)
                    else:
                        print(f"ALERT {pred.label} conf={pred.confidence:.2f} anomaly={pred.anomaly_score:.2f} | "
                              f"{text[:300]}", file=self.out)
            self.out.flush()
            self.stats.alerts += len(alerts)
        self._learn()
        return alerts

    def _learn(self, flush: bool = False) -> None:
        """Run continuous updates on queued feedback, `update_batch` lines at a time."""
        size = self.model.config.update_batch
        while len(self._queue) >= size or (flush and self._queue):
            chunk, self._queue = self._queue[:size], self._queue[size:]
            ids, _ = self.model.encode_lines([line for line, _ in chunk])
            import torch

            tokens, _ = self.model.tokenizer.pad(ids)
            labels = torch.tensor([self.model.labels.index(label) for _, label in chunk])
            self.learner.continuous_update(tokens, labels)
            self.stats.updates += 1
            due = (self.save_every and self.stats.updates % self.save_every == 0) or (
                self.save_seconds and time.monotonic() - self._saved_at >= self.save_seconds)
            if self.state_dir is not None and due:
                self.learner.save(self.state_dir)
                self._saved_at = time.monotonic()

    def finish(self) -> StreamStats:
        """Learn from what feedback is left and save the state."""
        self._learn(flush=True)
        if self.state_dir is not None:
            self.learner.save(self.state_dir)
        return self.stats

    def run(self, source) -> StreamStats:
        """Stream from a file descriptor or binary file until its end (or Ctrl-C); always finishes and saves."""
        reader = LineReader(source)
        try:
            for batch in reader.batches():
                self.process(batch)
        except (KeyboardInterrupt, BrokenPipeError) as err:
            print(f"note: stream interrupted ({type(err).__name__}); saving the learner state", file=self.err)
        finally:
            if reader.cut:
                self.stats.skipped["cut_over_long"] = reader.cut
            if reader.unterminated:
                self.stats.skipped["unterminated_last_line"] = 1
                self._note("unterminated", "the stream ended inside a line (no final newline); it was processed")
            self.finish()
        return self.stats
