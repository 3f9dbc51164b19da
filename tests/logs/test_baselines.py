from latentspace.logs.baselines import drain_lr, tfidf_lr
from latentspace.logs.data import split
from latentspace.logs.train import scores

from .conftest import synthetic_severity


def test_baselines_learn_synthetic_severity():
    train, test = split(synthetic_severity(200), 0.3)
    for method in (drain_lr, tfidf_lr):
        assert scores(test.labels, method(train, test, "severity"), "severity")["acc"] > 0.9
