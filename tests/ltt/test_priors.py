"""Tests of the priors: ODE matching is zero on the drift's own path; shapes and gradients of every prior."""

import pytest
import torch

from latentspace.ltt.config import LTTConfig
from latentspace.ltt.priors import build_prior, euler_rollout, ode_matching_loss


@pytest.mark.parametrize("kind", ["ode", "sde", "flow"])
def test_prior_shapes_and_gradients(kind):
    torch.manual_seed(0)
    config = LTTConfig.preset("tiny")
    prior = build_prior(config, kind)
    z = torch.randn(4, 6, config.latent_dim, requires_grad=True)
    loss, metrics = prior.matching_loss(z)
    loss.backward()
    assert torch.isfinite(loss) and z.grad is not None
    assert any(p.grad is not None for p in prior.parameters())
    z0 = prior.sample_z0(3, generator=torch.Generator().manual_seed(0))
    assert z0.shape == (3, config.latent_dim)
    with torch.no_grad():
        path = prior.rollout(z0, 6, generator=torch.Generator().manual_seed(0))
    assert path.shape == (3, 6, config.latent_dim)


def test_ode_matching_is_zero_on_the_drift_path():
    torch.manual_seed(0)
    config = LTTConfig.preset("tiny").replace(multiscale=True)
    prior = build_prior(config, "ode")
    with torch.no_grad():
        path = euler_rollout(prior.drift_net, torch.randn(5, config.latent_dim), 9)
        assert ode_matching_loss(prior.drift_net, path) < 1e-10
        assert ode_matching_loss(prior.drift_net, path + 0.1 * torch.randn_like(path)) > 1e-3
        assert ode_matching_loss(prior.drift_net, path, relative=True) < 1e-8
        solver_path = prior.rollout(path[:, 0], 9, method="euler")
    assert torch.allclose(solver_path, path, atol=1e-5)


def test_relative_ode_matching_cannot_be_lowered_by_shrinking_the_latents():
    # a linear drift f(z) = A z: scaling the path scales increments and drift alike
    A = torch.randn(4, 4)
    drift = lambda z, t: z @ A.T  # noqa: E731
    path = torch.randn(6, 10, 4)
    plain = [float(ode_matching_loss(drift, c * path)) for c in (1.0, 0.1)]
    relative = [float(ode_matching_loss(drift, c * path, relative=True)) for c in (1.0, 0.1)]
    assert plain[1] < 0.02 * plain[0]  # the collapse the plain loss rewards
    assert abs(relative[1] - relative[0]) < 1e-4 * relative[0]
    # its gradient on the latents does not point to the origin: shrinking is not a descent direction
    z = path.clone().requires_grad_(True)
    ode_matching_loss(drift, z, relative=True).backward()
    g, zz = z.grad.detach(), z.detach()
    assert abs(float((g * zz).sum())) < 1e-3 * float(g.norm() * zz.norm())


@pytest.mark.parametrize("method", ["euler", "milstein", "srk"])
def test_sde_solvers_run_and_are_reproducible(method):
    torch.manual_seed(0)
    config = LTTConfig.preset("tiny")
    prior = build_prior(config, "sde")
    z0 = torch.randn(3, config.latent_dim)
    with torch.no_grad():
        a = prior.rollout(z0, 6, method=method, generator=torch.Generator().manual_seed(1))
        b = prior.rollout(z0, 6, method=method, generator=torch.Generator().manual_seed(1))
        c = prior.rollout(z0, 6, method=method, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 6, config.latent_dim) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], z0)
