import pytest
import torch
from torch.distributions import Normal, kl_divergence

from latentspace.core.gaussian import DiagGaussian, annealed_free_nats, beta_schedule, kl_loss


def _random_gaussian(shape):
    return DiagGaussian(torch.randn(shape), torch.randn(shape).clamp(-3, 3))


def test_kl_closed_form_matches_torch_distributions():
    p, q = _random_gaussian((7, 5, 16)), _random_gaussian((7, 5, 16))
    ours = p.kl_to(q)
    reference = kl_divergence(Normal(p.mu, p.std), Normal(q.mu, q.std)).sum(-1)
    assert ours.shape == (7, 5)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_log_prob_and_entropy_match_torch():
    p = _random_gaussian((4, 3))
    x = torch.randn(4, 3)
    torch.testing.assert_close(p.log_prob(x), Normal(p.mu, p.std).log_prob(x).sum(-1))
    torch.testing.assert_close(p.entropy(), Normal(p.mu, p.std).entropy().sum(-1))


def test_rsample_has_the_right_moments_and_gradients():
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, 1.0], requires_grad=True)
    samples = DiagGaussian(mu, logvar).rsample(20000)
    assert samples.shape == (20000, 2)
    torch.testing.assert_close(samples.mean(0), mu.detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(samples.var(0), logvar.detach().exp(), atol=0.1, rtol=0.05)
    samples.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_free_nats_anneal_linearly_to_zero():
    assert annealed_free_nats(3.0) == 3.0
    assert annealed_free_nats(3.0, 0, 100) == 3.0
    assert annealed_free_nats(3.0, 50, 100) == pytest.approx(1.5)
    assert annealed_free_nats(3.0, 100, 100) == 0.0
    assert annealed_free_nats(3.0, 200, 100) == 0.0


def test_free_nats_clamp_below_slack_and_subtract_above():
    prior = DiagGaussian.standard((2, 4))
    post = DiagGaussian(torch.tensor([[0.1, 0, 0, 0], [3.0, 0, 0, 0]]), torch.zeros(2, 4))
    kl = post.kl_to(prior)  # [0.005, 4.5]
    per_sample = kl_loss(post, prior, free_nats=1.0, reduction="none")
    torch.testing.assert_close(per_sample, torch.stack([torch.tensor(0.0), kl[1] - 1.0]))
    half = kl_loss(post, prior, free_nats=1.0, step=50, total_steps=100, reduction="none")
    torch.testing.assert_close(half[1], kl[1] - 0.5)


def test_kl_balancing_routes_gradients():
    prior = DiagGaussian(torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True))
    post = DiagGaussian(torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True))
    plain = kl_loss(post, prior)
    balanced = kl_loss(post, prior, balance=0.8)
    torch.testing.assert_close(plain, balanced)  # same value, different gradient routing
    balanced.backward()
    # d/d prior_mu of 0.8 * KL: -0.8 * (1 - 0); d/d post_mu of 0.2 * KL: 0.2 * 1
    torch.testing.assert_close(prior.mu.grad, torch.full((3,), -0.8))
    torch.testing.assert_close(post.mu.grad, torch.full((3,), 0.2))
    with pytest.raises(ValueError):
        kl_loss(post, prior, balance=1.5)


def test_beta_schedules():
    assert beta_schedule(0, 0.003, 500) == 0.0
    assert beta_schedule(250, 0.003, 500) == pytest.approx(0.0015)
    assert beta_schedule(900, 0.003, 500) == pytest.approx(0.003)
    assert beta_schedule(10, 1.0, 100, kind="constant") == 1.0
    assert beta_schedule(50, 1.0, 100, kind="cosine") == pytest.approx(0.5)
    assert beta_schedule(25, 1.0, 100, kind="cyclical", cycles=2) == pytest.approx(1.0)
    assert beta_schedule(50, 1.0, 100, kind="cyclical", cycles=2) == 0.0
    with pytest.raises(ValueError):
        beta_schedule(1, 1.0, 10, kind="nope")


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        DiagGaussian(torch.zeros(2, 3), torch.zeros(3))
