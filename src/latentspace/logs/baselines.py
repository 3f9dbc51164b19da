"""Baselines measured beside the model: Drain3 template + logistic regression, TF-IDF + logistic regression."""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import OneHotEncoder

from .data import Examples, split
from .parse import LogTemplates, mask_variables, prepare


def _texts(examples: Examples, task: str) -> list[str]:
    return [prepare(line, task)[1] for line in examples.lines]


SIM_THRESHOLDS = (0.4, 0.5, 0.6, 0.7)


def drain_lr(train: Examples, test: Examples, task: str, sim_th: float | None = None) -> list[str]:
    """Drain3 template ids (mined on the training lines; unseen test lines -> "unknown") one-hot, then LR.

    Drain's similarity threshold is chosen on a held-out 30% of the training lines when not given.
    """
    if sim_th is None:
        fit_part, held_out = split(train, 0.3, seed=1)
        best = max(SIM_THRESHOLDS, key=lambda th: f1_score(
            held_out.labels, drain_lr(fit_part, held_out, task, th), average="macro", zero_division=0))
        return drain_lr(train, test, task, best)
    templates = LogTemplates(sim_th=sim_th)
    train_ids = [[templates.add(text)[0]] for text in _texts(train, task)]
    test_ids = [[templates.match(text)[0]] for text in _texts(test, task)]
    encoder = OneHotEncoder(handle_unknown="ignore")
    classifier = LogisticRegression(max_iter=2000, class_weight="balanced")
    classifier.fit(encoder.fit_transform(train_ids), train.labels)
    return list(classifier.predict(encoder.transform(test_ids)))


def tfidf_lr(train: Examples, test: Examples, task: str) -> list[str]:
    """TF-IDF of masked word unigrams and bigrams, then LR."""
    vectorizer = TfidfVectorizer(preprocessor=lambda t: mask_variables(t).lower(), ngram_range=(1, 2),
                                 token_pattern=r"<\w+>|[a-z_]+", min_df=1, sublinear_tf=True)
    classifier = LogisticRegression(max_iter=2000, class_weight="balanced")
    classifier.fit(vectorizer.fit_transform(_texts(train, task)), train.labels)
    return list(classifier.predict(vectorizer.transform(_texts(test, task))))
