import math

import pytest
import torch
from botorch.acquisition.analytic import _log_ei_helper
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import nn

from latentspace.core.errors import DataError
from latentspace.lipo.gp import (
    GPWithEI,
    InstructionDeepKernelGP,
    exact_mll,
    expected_improvement,
    get_latent_bounds,
    log_expected_improvement,
    log_h,
)


def _branin_like(x):
    return torch.sin(3 * x[:, 0]) + 0.5 * torch.cos(5 * x[:, 1]) + x[:, 2] ** 2


def _set_hypers(model, lengthscale, outputscale, noise):
    model.covar_module.base_kernel.lengthscale = lengthscale
    model.covar_module.outputscale = outputscale
    model.likelihood.noise = noise


def test_posterior_matches_botorch_and_closed_form():
    torch.manual_seed(0)
    X = torch.rand(25, 3, dtype=torch.float64) * 4 - 2
    Y = _branin_like(X).unsqueeze(-1)
    Xt = torch.rand(7, 3, dtype=torch.float64) * 4 - 2
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    ours = InstructionDeepKernelGP(X, Y, GaussianLikelihood(), nn.Identity(), 3,
                                   input_transform=Normalize(d=3, bounds=bounds), outcome_transform=Standardize(m=1))
    ref = SingleTaskGP(X, Y, input_transform=Normalize(d=3, bounds=bounds), outcome_transform=Standardize(m=1),
                       covar_module=ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=3)))
    ref.mean_module.constant.data.fill_(0.0)  # our GP has a zero mean
    for model in (ours, ref):
        _set_hypers(model, torch.tensor([[0.3, 0.5, 0.7]], dtype=torch.float64), 1.3, 0.01)
        model.eval()
    post_ours, post_ref = ours.posterior(Xt), ref.posterior(Xt)
    assert torch.allclose(post_ours.mean, post_ref.mean, atol=1e-6)
    assert torch.allclose(post_ours.variance, post_ref.variance, atol=1e-6)
    # slow reference: the GP equations written out on standardised targets
    y_mean, y_std = Y.mean(), Y.std()
    y = (Y.squeeze(-1) - y_mean) / y_std
    xn, xtn = (X - bounds[0]) / (bounds[1] - bounds[0]), (Xt - bounds[0]) / (bounds[1] - bounds[0])
    kernel = ours.covar_module
    with torch.no_grad():
        K = kernel(xn).to_dense() + 0.01 * torch.eye(25, dtype=torch.float64)
        Ks = kernel(xtn, xn).to_dense()
        mean = Ks @ torch.linalg.solve(K, y)
        var = kernel(xtn).to_dense().diagonal() - (Ks @ torch.linalg.solve(K, Ks.T)).diagonal()
    assert torch.allclose(post_ours.mean.squeeze(-1), mean * y_std + y_mean, atol=1e-6)
    assert torch.allclose(post_ours.variance.squeeze(-1), var * y_std**2, atol=1e-6)


def test_seed_priors_and_kernel():
    g = GPWithEI(4, gp_latent_dim=3)
    g.set_data(torch.rand(6, 4), torch.rand(6))
    g.fit(epochs=5, lr=0.01, patience=5)
    kernel = g.model.covar_module
    assert kernel.base_kernel.nu == 2.5 and kernel.base_kernel.ard_num_dims == 3
    prior = kernel.base_kernel.lengthscale_prior
    assert (float(prior.concentration), float(prior.rate)) == pytest.approx((3.0, 6.0))
    assert (float(kernel.outputscale_prior.concentration), float(kernel.outputscale_prior.rate)) == pytest.approx(
        (2.0, 0.15))
    noise = g.model.likelihood.noise_covar.raw_noise_constraint
    assert (float(noise.lower_bound), float(noise.upper_bound)) == pytest.approx((0.001, 0.1))


def test_log_h_matches_botorch_and_stays_finite_where_ei_underflows():
    z = torch.cat([torch.linspace(-50, 5, 200), torch.tensor([-1e4, -1e7])]).double()
    ours = log_h(z)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, _log_ei_helper(z), rtol=1e-6, atol=1e-8)
    mean, std = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.01], dtype=torch.float64)
    plain = expected_improvement(mean, std, best_f=0.5)  # minimisation: 50 sigma worse than the incumbent
    assert float(plain) == 0.0
    log_ei = log_expected_improvement(mean, std, best_f=0.5)
    assert torch.isfinite(log_ei).all() and float(log_ei) < -1000
    # where EI is representable, exp(LogEI) is EI
    mean = torch.linspace(0.2, 0.8, 7, dtype=torch.float64)
    std = torch.full_like(mean, 0.1)
    assert torch.allclose(log_expected_improvement(mean, std, 0.5).exp(), expected_improvement(mean, std, 0.5),
                          rtol=1e-6)


def test_bounds_have_a_twenty_percent_margin():
    X = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    b = get_latent_bounds(X, 0.2)
    assert torch.allclose(b, torch.tensor([[-0.2, 0.6], [1.2, 3.4]]))


def test_fit_predict_and_optimize():
    torch.manual_seed(0)
    X = torch.rand(30, 5, dtype=torch.float64)
    err = ((X[:, :2] - 0.3) ** 2).sum(-1)
    g = GPWithEI(5, gp_latent_dim=3)
    g.set_data(X, err)
    info = g.fit(epochs=80, lr=0.02, patience=20)
    assert info["gp_epochs"] >= 1 and math.isfinite(info["gp_neg_mll"])
    mean, std = g.predict(X)
    assert torch.corrcoef(torch.stack([mean, err]))[0, 1] > 0.9
    assert (std > 0).all()
    z, value = g.optimize(num_restarts=2, raw_samples=32, maxiter=10)
    bounds = get_latent_bounds(g.X, 0.2)
    assert z.shape == (5,) and math.isfinite(value)
    assert ((z >= bounds[0] - 1e-9) & (z <= bounds[1] + 1e-9)).all()
    assert g.log_ei(X[:3]).shape == (3,)
    g.add_observation(z, 0.01)
    assert g.n == 31 and g.best_error == pytest.approx(0.01)


def test_bad_data_errors():
    g = GPWithEI(3)
    with pytest.raises(DataError):
        g.set_data(torch.rand(4, 2), torch.rand(4))
    with pytest.raises(DataError, match="NaN"):
        g.set_data(torch.rand(2, 3), torch.tensor([0.1, float("nan")]))
    with pytest.raises(DataError, match="before fit"):
        g.predict(torch.rand(1, 3))


def test_exact_mll_and_its_gradient_match_gpytorch():
    torch.manual_seed(1)
    g = GPWithEI(6, gp_latent_dim=3)
    g.set_data(torch.rand(40, 6, dtype=torch.float64), torch.rand(40, dtype=torch.float64))
    model = g._build()
    model.train()
    _set_hypers(model, torch.tensor([[0.4, 0.9, 1.7]], dtype=torch.float64), 0.8, 0.02)
    params = [p for p in model.parameters() if p.requires_grad]
    fast = exact_mll(model)
    fast_grads = torch.autograd.grad(fast, params)
    reference = ExactMarginalLogLikelihood(model.likelihood, model)(model(*model.train_inputs), model.train_targets)
    reference_grads = torch.autograd.grad(reference, params)
    assert torch.allclose(fast, reference, rtol=1e-9, atol=1e-9)
    for a, b in zip(fast_grads, reference_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
    # a subset's objective is the exact MLL of those points alone
    index = torch.arange(0, 40, 3)
    sub = GPWithEI(6, gp_latent_dim=3)
    sub.set_data(g.X[index], g.y[index])
    sub_model = sub._build()
    sub_model.load_state_dict(model.state_dict())
    sub_model.train_targets = model.train_targets[index]
    sub_model.train()
    assert torch.allclose(exact_mll(model, index), exact_mll(sub_model), rtol=1e-9)


def test_subset_then_full_fit_reaches_the_full_fit_likelihood():
    torch.manual_seed(0)
    X = torch.rand(120, 5, dtype=torch.float64)
    err = ((X[:, :2] - 0.3) ** 2).sum(-1) + 0.01 * torch.randn(120, dtype=torch.float64)
    full = GPWithEI(5, gp_latent_dim=3, subset_size=0)
    full.set_data(X, err)
    full.fit(epochs=150, lr=0.02, patience=20)
    staged = GPWithEI(5, gp_latent_dim=3, subset_size=40, full_epochs=30)
    staged.set_data(X, err)
    info = staged.fit(epochs=150, lr=0.02, patience=20)
    assert 1 <= info["gp_full_epochs"] <= 30
    # both are judged by the same full-data objective
    with torch.no_grad():
        full.model.train()
        staged.model.train()
        full_value, staged_value = float(exact_mll(full.model)), float(exact_mll(staged.model))
    assert staged_value > full_value - 0.15
    staged.model.eval()
    mean, _ = staged.predict(X)
    assert torch.corrcoef(torch.stack([mean, err]))[0, 1] > 0.9
    # a warm refit after one more observation skips the subset stage
    staged.add_observation(X[0] * 0.5, 0.2)
    again = staged.fit(epochs=150, lr=0.02, patience=20)
    assert again["gp_epochs"] == again["gp_full_epochs"] <= 30


def test_reference_fit_uses_gpytorch_mll():
    torch.manual_seed(0)
    X = torch.rand(20, 3, dtype=torch.float64)
    g = GPWithEI(3, gp_latent_dim=2, subset_size=0)
    g.set_data(X, X.sum(-1))
    info = g.fit(epochs=20, lr=0.02, patience=5, reference=True)
    assert math.isfinite(info["gp_neg_mll"])
    staged = GPWithEI(3, gp_latent_dim=2, subset_size=4)
    staged.set_data(X, X.sum(-1))
    with pytest.raises(ValueError, match="subset_size=0"):
        staged.fit(epochs=5, reference=True)


def test_optimize_through_a_decoder_searches_the_latent_box():
    """GP on x = decode(z) (embedding-like inputs), acquisition optimised over z (the seed's CompositeLogEI)."""
    torch.manual_seed(0)
    W = torch.randn(2, 6, dtype=torch.float64)

    def decode(z):  # (..., 2) -> (..., 6)
        return torch.tanh(z @ W)

    Z = torch.rand(25, 2, dtype=torch.float64) * 2 - 1
    err = ((Z - torch.tensor([0.5, -0.5], dtype=torch.float64)) ** 2).sum(-1)  # best near z = (0.5, -0.5)
    g = GPWithEI(6, gp_latent_dim=3, subset_size=0)
    g.set_data(decode(Z), err)
    g.fit(epochs=150, lr=0.02, patience=30)
    with pytest.raises(DataError, match="search_points"):
        g.optimize(num_restarts=2, raw_samples=16, maxiter=5, decode=decode)
    z, value = g.optimize(num_restarts=4, raw_samples=128, maxiter=30, decode=decode, search_points=Z)
    bounds = get_latent_bounds(Z, 0.2)
    assert z.shape == (2,) and math.isfinite(value)
    assert ((z >= bounds[0] - 1e-9) & (z <= bounds[1] + 1e-9)).all()
    # the optimum beats every random latent of the box under the same LogEI of the decoded point
    rand = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(256, 2, dtype=torch.float64)
    assert float(g.log_ei(decode(z).unsqueeze(0))) >= float(g.log_ei(decode(rand)).max()) - 1e-3


def test_known_noise_mll_matches_gpytorch_and_weighs_noisy_points_less():
    """Per-point known noise (a FixedNoiseGaussianLikelihood): exact_mll (all points and a subset) equals GPyTorch's
    marginal likelihood, and a noisy observation pulls the posterior less than an exact one at the same input."""
    from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

    torch.manual_seed(2)
    X = torch.rand(30, 4, dtype=torch.float64)
    err = X[:, 0] * 0.5
    var = torch.where(torch.arange(30) % 2 == 0, 0.0, 0.004).to(torch.float64)
    g = GPWithEI(4, gp_latent_dim=2)
    g.set_data(X, err, var)
    assert g.noisy
    model = g._build()
    assert isinstance(model.likelihood, FixedNoiseGaussianLikelihood)
    model.train()
    fixed = model.likelihood.noise_covar.noise  # standardised: var / std(y)^2 (the GPyTorch floor 1e-6 at 0)
    assert torch.allclose(fixed, (var / err.std() ** 2).clamp_min(1e-6), rtol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    fast = exact_mll(model)
    reference = ExactMarginalLogLikelihood(model.likelihood, model)(model(*model.train_inputs), model.train_targets)
    assert torch.allclose(fast, reference, rtol=1e-9, atol=1e-9)
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(reference, params), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
    index = torch.arange(1, 30, 2)  # a subset keeps its own points' noise
    sub = GPWithEI(4, gp_latent_dim=2)
    sub.set_data(X[index], err[index], var[index])
    sub_model = sub._build()
    sub_model.load_state_dict({k: v for k, v in model.state_dict().items() if k != "likelihood.noise_covar.noise"},
                              strict=False)
    sub_model.train_targets = model.train_targets[index]
    sub_model.likelihood.noise_covar.noise = fixed[index]
    sub_model.train()
    assert torch.allclose(exact_mll(model, index), exact_mll(sub_model), rtol=1e-9)

    # one surprising observation (error 0.9 where the rest say ~0.25) at a new input: exact vs noisy
    x_new = torch.full((1, 4), 0.5, dtype=torch.float64)
    pulls = {}
    for noise in (0.0, 0.05):
        h = GPWithEI(4, gp_latent_dim=2, seed=0)
        h.set_data(torch.cat([X, x_new]), torch.cat([err, torch.tensor([0.9], dtype=torch.float64)]),
                   torch.cat([torch.zeros(30, dtype=torch.float64), torch.tensor([noise], dtype=torch.float64)]))
        h.fit(epochs=100, lr=0.02, patience=20)
        pulls[noise] = float(h.predict(x_new)[0])
    assert pulls[0.0] > pulls[0.05] + 0.05  # the noisy point is believed less
    # with noisy data the LogEI reference is the lowest posterior mean at the data, not a lucky raw value
    h.add_observation(torch.full((1, 4), 0.9, dtype=torch.float64), 0.0, 0.02)
    h.fit(epochs=100, lr=0.02, patience=20)
    assert h.best_error == pytest.approx(float(h.predict(h.X)[0].min())) and h.best_error > 0.0
    with pytest.raises(DataError, match="noise variances"):
        h.set_data(X, err, -var)
