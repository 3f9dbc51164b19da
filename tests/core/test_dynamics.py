import math

import pytest
import torch
from torch import nn

from latentspace.core.dynamics import flow_matching_loss, flow_matching_sample, integrate, ot_pairing


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_linear_ode_matches_closed_form(method):
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]])
    z0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
    t = torch.linspace(0, 2, 5)
    traj = integrate(lambda t, z: z @ a.T, z0, t, method=method, dt=0.001 if method == "euler" else 0.05)
    exact = torch.stack([z0 @ torch.linalg.matrix_exp(a * ti).T for ti in t])
    assert traj.shape == (5, 2, 2)
    tol = 5e-3 if method == "euler" else 1e-4
    torch.testing.assert_close(traj, exact, atol=tol, rtol=0)


def test_sde_ornstein_uhlenbeck_reaches_its_stationary_law():
    theta, sigma = 1.0, 0.5
    z0 = torch.full((4000, 1), 2.0)
    t = torch.tensor([0.0, 4.0])
    traj = integrate(lambda t, z: -theta * z, z0, t, method="euler",
                     diffusion=lambda t, z: torch.full_like(z, sigma), dt=0.01)
    end = traj[-1]
    expected_mean = 2.0 * math.exp(-theta * 4.0)
    expected_var = sigma**2 / (2 * theta) * (1 - math.exp(-2 * theta * 4.0))
    assert abs(float(end.mean()) - expected_mean) < 0.03
    assert abs(float(end.var()) - expected_var) < 0.02


def test_bad_method_and_times_are_refused():
    with pytest.raises(ValueError, match="unknown ODE method"):
        integrate(lambda t, z: z, torch.zeros(1, 1), torch.linspace(0, 1, 3), method="nope")
    with pytest.raises(ValueError, match="1-D tensor"):
        integrate(lambda t, z: z, torch.zeros(1, 1), torch.tensor(1.0))


def test_ot_pairing_minimises_cost():
    x1 = torch.randn(16, 2)
    x0 = x1[torch.randperm(16)] + 0.01 * torch.randn(16, 2)
    paired = ot_pairing(x0, x1)
    assert (paired - x1).norm(dim=1).max() < 0.1


def _mixture(n, generator=None):
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    idx = torch.randint(0, 2, (n,), generator=generator)
    return centers[idx] + 0.3 * torch.randn(n, 2, generator=generator)


def _mmd(x, y, bandwidth=1.0):
    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


class Velocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=-1))


def test_flow_matching_learns_a_two_dimensional_mixture():
    torch.manual_seed(0)
    model = Velocity()
    target = _mixture(1000, torch.Generator().manual_seed(1))
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2))
    untrained = _mmd(flow_matching_sample(model, noise, steps=20), target)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(800):
        loss = flow_matching_loss(model, _mixture(256), ot=step % 2 == 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = _mmd(flow_matching_sample(model, noise, steps=20), target)
    assert trained < 0.02
    assert trained < untrained / 5
