import pytest
import torch

from latentspace.lbs.config import LBSConfig
from latentspace.lbs.goal import GoalLBS
from latentspace.lbs.model import BaseLBS


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    return LBSConfig.preset("tiny")


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return BaseLBS(tiny_cfg)


@pytest.fixture
def goal_model(tiny_cfg):
    torch.manual_seed(0)
    return GoalLBS(tiny_cfg)
