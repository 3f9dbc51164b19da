"""The docstring -> function benchmark: metrics, the split by package, a small end-to-end run."""

import pytest

from latentspace.codesearch.config import EvalConfig
from latentspace.codesearch.evaluate import (
    build_dataset,
    held_out,
    package_examples,
    package_folders,
    retrieval_metrics,
    run_evaluation,
)
from latentspace.core.errors import DataError

PACKAGES = "json,html,csv,argparse,zipfile,shlex,textwrap,string,gzip,calendar"


def test_retrieval_metrics():
    rankings = [[3, 1, 2], [0, 5], [9] * 10 + [7]]
    metrics = retrieval_metrics(rankings, [3, 5, 7])
    assert metrics["mrr10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["recall1"] == pytest.approx(1 / 3)
    assert metrics["recall10"] == pytest.approx(2 / 3)


def test_examples_strip_the_docstring_from_the_target():
    folders = package_folders("json")
    examples = package_examples("json", folders["json"])
    assert examples, "the json package has documented functions"
    for example in examples:
        assert len(example.query.split()) >= 4 and example.code.lstrip().startswith(("def ", "async def ", "@"))
        assert example.query not in example.code
        assert '"""' not in example.code.split("\n", 2)[1]


def test_split_is_by_package_and_stable():
    assert held_out("email", 0.3) == held_out("email", 0.3)
    config = EvalConfig(packages=PACKAGES, eval_fraction=0.4, max_pool=200, max_queries=50)
    train, pool, queries = build_dataset(config)
    assert {e.package for e in train}.isdisjoint({e.package for e in pool})
    assert len(queries) <= 50 and len(pool) <= 200
    assert len({e.query for e in train + pool}) == len(train) + len(pool)


def test_small_bm25_run_is_far_above_chance():
    config = EvalConfig(packages=PACKAGES, eval_fraction=0.4, max_pool=200, max_queries=60, methods="bm25")
    result = run_evaluation(config)
    assert result["metrics"]["mrr10_bm25"] > 10 * (1 / result["sizes"]["pool"])
    assert result["sizes"]["queries"] == min(60, result["sizes"]["pool"])


def test_unknown_package_is_a_clear_error():
    with pytest.raises(DataError, match="not installed"):
        package_folders("no_such_package_xyz")
