from collections import Counter

import pytest

from latentspace.core.errors import DataError
from latentspace.logs.data import load_examples, split


def test_bgl_alert_labels(loghub):
    examples = load_examples("bgl_alert", ["BGL"], loghub.parent)
    assert len(examples) == 2000
    assert Counter(examples.labels)["alert"] == 143  # loghub's README: 143 alerts in the 2k sample
    train, test = split(examples, 0.3, seed=0)
    assert len(train) + len(test) == 2000 and not set(train.lines) & set(test.lines) - set(train.lines)
    assert abs(Counter(test.labels)["alert"] - 43) <= 1


def test_unknown_system_and_unlabelled_system(loghub):
    with pytest.raises(DataError, match="not found"):
        load_examples("severity", ["NoSuchSystem"], loghub.parent)
    with pytest.raises(DataError, match="no line labelled"):
        load_examples("severity", ["HealthApp"], loghub.parent)
