"""`InstructionDeepKernelGP` (GPyTorch ExactGP + BoTorch model), `GPWithEI` and a numerically stable LogEI.

The GP sees VAE latents (B, 64), normalised to the unit cube by the training data's min/max (BoTorch
`Normalize` with fixed bounds), maps them through a trainable adapter (64 -> 10) and a Matern-5/2 ARD
kernel with the seed's Gamma priors. Targets are error rates; the model is fitted on y = -error
(BoTorch maximises), standardised by `Standardize`. Training maximises the exact marginal likelihood with
AdamW and early stopping; acquisition is BoTorch's qLogExpectedImprovement optimised by `optimize_acqf`
inside bounds that extend the training latents by a 20% margin.

Fitting cost. One epoch of the exact marginal likelihood is a Cholesky factorisation of the (N, N) kernel
matrix. `exact_mll` computes the same objective as GPyTorch's `ExactMarginalLogLikelihood` (the reference
its test compares against) but differentiates the Gaussian log density analytically, dL/dK = (K^-1 - a a^T)/2
with a = K^-1 y, instead of backpropagating through the Cholesky factorisation: about half the time per
epoch at N = 1000. When N exceeds `subset_size`, `GPWithEI.fit` first fits kernel, noise and adapter on a
random subset (the same exact MLL of those points, m^3 instead of N^3 per epoch) and then refines them with
full-batch epochs on all N points, early-stopped on the full marginal likelihood; refits in the BO loop start
from the previous fit (warm start). The model that is fitted and queried is always the exact GP on all N.
"""

from __future__ import annotations

import math

import gpytorch
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf
from gpytorch.constraints import Interval
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.means import ZeroMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.models import ExactGP
from gpytorch.priors import GammaPrior
from torch import nn

from ..core.errors import DataError

CHOLESKY_JITTER = 1e-4
MAX_CHOLESKY_SIZE = 20_000  # posterior solves by Cholesky up to this N (GPyTorch's default 800 switches to CG)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_HALF_LOG_PI_OVER_2 = 0.5 * math.log(math.pi / 2)


def make_adapter(input_dim: int, output_dim: int = 10) -> nn.Module:
    """The seed's adapter: Linear(d, 32) -> ReLU -> LayerNorm(32) -> Linear(32, 10)."""
    return nn.Sequential(nn.Linear(input_dim, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, output_dim))


class InstructionDeepKernelGP(ExactGP, GPyTorchModel):
    """Exact GP with a deep kernel: k(x, x') = s * Matern52_ARD(adapter(x), adapter(x')), zero mean.

    Args:
        train_X: (N, D) raw inputs (VAE latents); normalised by `input_transform` inside the model.
        train_Y: (N, 1) targets to maximise; standardised by `outcome_transform`.
        likelihood: a GaussianLikelihood, or a FixedNoiseGaussianLikelihood when `train_Yvar` is given.
        adapter: module (..., D) -> (..., k); `nn.Identity()` makes this a plain Matern GP on the inputs.
        ard_num_dims: k, the adapter output size.
        train_Yvar: (N, 1) known observation noise variances of train_Y (e.g. binomial noise of an error measured
            on a few questions); standardised with train_Y and set as the likelihood's fixed noise.
    """

    _num_outputs = 1

    def __init__(self, train_X: torch.Tensor, train_Y: torch.Tensor, likelihood: GaussianLikelihood,
                 adapter: nn.Module, ard_num_dims: int, input_transform=None, outcome_transform=None,
                 train_Yvar: torch.Tensor | None = None):
        if outcome_transform is not None:
            outcome_transform.train()
            train_Y, train_Yvar = outcome_transform(train_Y, train_Yvar)
        if train_Yvar is not None:
            if not isinstance(likelihood, FixedNoiseGaussianLikelihood):
                raise DataError("known observation noise (train_Yvar) needs a FixedNoiseGaussianLikelihood")
            likelihood.noise_covar.noise = train_Yvar.squeeze(-1).clamp_min(1e-6)  # GPyTorch floor
        # raw inputs are stored; forward normalises them in training, eval() stores the normalised ones (BoTorch)
        ExactGP.__init__(self, train_X, train_Y.squeeze(-1), likelihood)
        self.adapter = adapter
        self.mean_module = ZeroMean()
        self.covar_module = ScaleKernel(
            MaternKernel(nu=2.5, ard_num_dims=ard_num_dims, lengthscale_prior=GammaPrior(3.0, 6.0)),
            outputscale_prior=GammaPrior(2.0, 0.15),
        )
        if input_transform is not None:
            self.input_transform = input_transform
        if outcome_transform is not None:
            self.outcome_transform = outcome_transform
        self.to(train_X)

    def forward(self, x: torch.Tensor) -> MultivariateNormal:
        """x: (..., N, D) normalised inputs -> the prior over f at them."""
        if self.training:
            x = self.transform_inputs(x)
        latent = self.adapter(x)  # (..., N, k)
        return MultivariateNormal(self.mean_module(latent), self.covar_module(latent))


class _GaussianNegLogDensity(torch.autograd.Function):
    """y^T K^-1 y / 2 + log|K| / 2 for K (N, N), y (N,), with the analytic gradient (K^-1 - a a^T) / 2, a = K^-1 y."""

    @staticmethod
    def forward(ctx, K: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        L = _cholesky(K)  # (N, N) lower
        alpha = torch.cholesky_solve(y.unsqueeze(-1), L).squeeze(-1)  # (N,)
        ctx.save_for_backward(L, alpha)
        return 0.5 * (y @ alpha) + L.diagonal().log().sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        L, alpha = ctx.saved_tensors
        grad_K = torch.cholesky_inverse(L)  # (N, N) K^-1
        grad_K.sub_(torch.outer(alpha, alpha)).mul_(0.5 * grad)
        return grad_K, grad * alpha


def _cholesky(K: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of K (N, N); adds CHOLESKY_JITTER x 10^k on the diagonal only if it fails (as GPyTorch)."""
    L, info = torch.linalg.cholesky_ex(K)
    jitter = CHOLESKY_JITTER
    while int(info) != 0:
        if jitter > 1.0:
            raise DataError("the GP kernel matrix is not positive definite even with jitter 1.0")
        L, info = torch.linalg.cholesky_ex(K + jitter * torch.eye(K.shape[-1], dtype=K.dtype, device=K.device))
        jitter *= 10
    return L


def exact_mll(model: InstructionDeepKernelGP, index: torch.Tensor | None = None) -> torch.Tensor:
    """Exact marginal log likelihood per data point plus the log priors, as GPyTorch's ExactMarginalLogLikelihood.

    Args:
        model: an InstructionDeepKernelGP in train mode (raw inputs, standardised targets stored).
        index: (m,) rows to use (a subset fit); None: all N.
    Returns:
        a scalar tensor to maximise: (log N(y | 0, K + noise I) + sum log prior) / m.
    """
    x, y = model.train_inputs[0], model.train_targets  # (N, D), (N,)
    noise = model.likelihood.noise.reshape(-1)  # (1,) learned, or (N,) fixed per point + learned
    if index is not None:
        x, y = x[index], y[index]
        if noise.numel() > 1:
            noise = noise[index]
    latent = model.adapter(model.transform_inputs(x))  # (m, k)
    K = model.covar_module(latent).to_dense()  # (m, m)
    K = K + torch.diag_embed(noise.expand(y.shape[0]))
    log_density = -_GaussianNegLogDensity.apply(K, y) - 0.5 * y.shape[0] * math.log(2 * math.pi)
    for _, module, prior, closure, _ in model.named_priors():
        log_density = log_density + prior.log_prob(closure(module)).sum()
    return log_density / y.shape[0]


def _reference_mll(model: InstructionDeepKernelGP):
    """GPyTorch's ExactMarginalLogLikelihood as an `exact_mll`-shaped objective (all points only)."""
    mll = ExactMarginalLogLikelihood(model.likelihood, model)

    def objective(model: InstructionDeepKernelGP, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is not None:
            raise ValueError("the reference marginal likelihood fits all points (use subset_size=0)")
        return mll(model(*model.train_inputs), model.train_targets)

    return objective


def log_h(z: torch.Tensor) -> torch.Tensor:
    """log(phi(z) + z * Phi(z)) in three branches, finite for every finite z.

    1. z > -1: direct.
    2. -1/sqrt(eps) < z <= -1: log phi(z) + log1p(-sqrt(pi/2) |z| erfcx(|z|/sqrt 2)).
    3. z <= -1/sqrt(eps): asymptotic -z^2/2 - log sqrt(2 pi) - 2 log|z|.
    """
    eps = torch.finfo(z.dtype).eps
    bound = -1.0 / math.sqrt(eps)
    normal = torch.distributions.Normal(torch.zeros((), dtype=z.dtype), torch.ones((), dtype=z.dtype))
    z_up = z.clamp(min=-1.0)
    direct = torch.log(normal.log_prob(z_up).exp() + z_up * normal.cdf(z_up))
    z_mid = z.clamp(min=bound, max=-1.0)
    w = torch.log(z_mid.abs()) + torch.log(torch.special.erfcx(-z_mid / math.sqrt(2.0))) + _HALF_LOG_PI_OVER_2
    middle = -0.5 * z_mid**2 - _LOG_SQRT_2PI + torch.log(-torch.expm1(w))
    z_low = z.clamp(max=bound)
    asymptotic = -0.5 * z_low**2 - _LOG_SQRT_2PI - 2.0 * torch.log(z_low.abs())
    return torch.where(z > -1.0, direct, torch.where(z > bound, middle, asymptotic))


def log_expected_improvement(mean: torch.Tensor, std: torch.Tensor, best_f: float, minimize: bool = True,
                             xi: float = 0.0) -> torch.Tensor:
    """LogEI = log h(z) + log sigma with z = (best - mu - xi) / sigma (minimisation) or (mu - best - xi) / sigma."""
    z = ((best_f - mean) if minimize else (mean - best_f)) - xi
    z = z / std
    return log_h(z) + torch.log(std)


def expected_improvement(mean: torch.Tensor, std: torch.Tensor, best_f: float, minimize: bool = True) -> torch.Tensor:
    """Plain analytic EI = sigma (phi(z) + z Phi(z)); the slow reference that underflows far from the incumbent."""
    z = ((best_f - mean) if minimize else (mean - best_f)) / std
    normal = torch.distributions.Normal(torch.zeros((), dtype=z.dtype), torch.ones((), dtype=z.dtype))
    return std * (normal.log_prob(z).exp() + z * normal.cdf(z))


def get_latent_bounds(X_train: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Box (2, D) around training latents (N, D), extended by `margin` x range on each side (the seed's 20%)."""
    z_min, z_max = X_train.min(dim=0).values, X_train.max(dim=0).values
    z_range = (z_max - z_min).clamp(min=1e-6)
    return torch.stack([z_min - margin * z_range, z_max + margin * z_range])


class DecodedAcquisition(AcquisitionFunction):
    """acq(decode(z)): an acquisition over GP inputs x, optimised over latents z through a differentiable decoder.

    The seed's CompositeLogEI: when the GP models the error on sentence embeddings, InvBO still searches the
    VAE latent; z (b, q, latent) -> decode -> x (b, q, E) -> qLogEI.
    """

    def __init__(self, acq: AcquisitionFunction, decode):
        super().__init__(model=acq.model)
        self.acq, self.decode = acq, decode

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.acq(self.decode(X))


class GPWithEI:
    """Fits an InstructionDeepKernelGP on (latent, error) pairs, predicts errors, proposes latents by qLogEI.

    Args:
        input_dim: D of the latents (64 for the VAE; the embedding size for an HbBoPs-style GP).
        gp_latent_dim: adapter output size k (10).
        adapter: an adapter to share (e.g. VAEWithAdapter.adapter); default: a fresh `make_adapter`.
        subset_size: above this many observations, fit first on a random subset of this size (0: never).
        full_epochs: most evaluations of the full-batch L-BFGS refinement after a subset fit.
    """

    def __init__(self, input_dim: int, gp_latent_dim: int = 10, adapter: nn.Module | None = None, seed: int = 0,
                 subset_size: int = 256, full_epochs: int = 30):
        self.input_dim = input_dim
        self.gp_latent_dim = gp_latent_dim
        self.seed = seed
        self.subset_size, self.full_epochs = subset_size, full_epochs
        torch.manual_seed(seed)
        self.adapter = adapter if adapter is not None else make_adapter(input_dim, gp_latent_dim)
        self.X = torch.empty(0, input_dim, dtype=torch.float64)
        self.y = torch.empty(0, dtype=torch.float64)  # error rates
        self.y_var = torch.empty(0, dtype=torch.float64)  # known noise variances of the error rates (0: exact)
        self._best_error: float | None = None
        self.model: InstructionDeepKernelGP | None = None
        self._warm_state: dict | None = None
        self.last_fit: dict[str, float] = {}

    @property
    def n(self) -> int:
        return int(self.y.numel())

    @property
    def noisy(self) -> bool:
        """Whether some observation carries known noise (then the likelihood is a FixedNoiseGaussianLikelihood)."""
        return bool((self.y_var > 0).any())

    @property
    def best_error(self) -> float:
        """The reference of LogEI: the lowest observed error; with noisy observations the lowest posterior mean at
        the observed points (a lucky 0/10 on a few questions would otherwise make every improvement look hopeless)."""
        if self.noisy and self._best_error is not None:
            return self._best_error
        return float(self.y.min())

    def set_data(self, X: torch.Tensor, errors: torch.Tensor, error_var: torch.Tensor | None = None) -> None:
        """Replace the training data: X (N, D), errors (N,), optional known noise variances (N,) (None: exact)."""
        X = torch.as_tensor(X, dtype=torch.float64)
        errors = torch.as_tensor(errors, dtype=torch.float64).reshape(-1)
        if X.ndim != 2 or X.shape[1] != self.input_dim or X.shape[0] != errors.shape[0]:
            raise DataError(f"GP data must be X (N, {self.input_dim}) and errors (N,), got {tuple(X.shape)} "
                            f"and {tuple(errors.shape)}")
        if not (torch.isfinite(X).all() and torch.isfinite(errors).all()):
            raise DataError("GP training data hold NaN or inf")
        var = torch.zeros_like(errors) if error_var is None else torch.as_tensor(error_var, dtype=torch.float64)
        var = var.reshape(-1)
        if var.shape != errors.shape or not torch.isfinite(var).all() or bool((var < 0).any()):
            raise DataError(f"GP noise variances must be (N,) = {tuple(errors.shape)}, finite and >= 0")
        self.X, self.y, self.y_var = X, errors, var
        self._best_error = None

    def add_observation(self, x: torch.Tensor, error: float, error_var: float = 0.0) -> None:
        self.set_data(torch.cat([self.X, torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)]),
                      torch.cat([self.y, torch.tensor([float(error)], dtype=torch.float64)]),
                      torch.cat([self.y_var, torch.tensor([float(error_var)], dtype=torch.float64)]))

    def _build(self) -> InstructionDeepKernelGP:
        bounds = torch.stack([self.X.min(0).values, self.X.max(0).values])
        bounds[1] = torch.maximum(bounds[1], bounds[0] + 1e-6)
        if self.noisy:  # known per-point noise + the learned noise of the exact case
            likelihood = FixedNoiseGaussianLikelihood(noise=torch.full((self.n,), 1e-6, dtype=torch.float64),
                                                      learn_additional_noise=True,
                                                      noise_constraint=Interval(0.001, 0.1))
        else:
            likelihood = GaussianLikelihood(noise_constraint=Interval(0.001, 0.1))
        model = InstructionDeepKernelGP(
            self.X, -self.y.unsqueeze(-1), likelihood, self.adapter.double(), self.gp_latent_dim,
            input_transform=Normalize(d=self.input_dim, bounds=bounds), outcome_transform=Standardize(m=1),
            train_Yvar=self.y_var.unsqueeze(-1) if self.noisy else None,
        )
        if self._warm_state is not None:  # incremental retrain: start from the last kernel, noise and adapter
            model.load_state_dict(self._warm_state, strict=False)
        return model

    def fit(self, epochs: int = 10000, lr: float = 0.01, patience: int = 100, reference: bool = False
            ) -> dict[str, float]:
        """Maximise the exact marginal likelihood with AdamW; early stopping keeps the best state.

        N <= subset_size: full-batch epochs on all points (at most `epochs`, `patience`). N > subset_size: the
        same schedule on a random subset of subset_size points (skipped when a previous fit gives a warm
        start), then full-batch L-BFGS on all N with at most `full_epochs` evaluations of the full marginal
        likelihood, stopped when it changes by less than 1e-4 per point. `reference`: every epoch through GPyTorch's
        ExactMarginalLogLikelihood (autograd through the Cholesky factor), the slow reference of `exact_mll`.
        """
        if self.n < 2:
            raise DataError(f"the GP needs at least 2 observations, got {self.n}")
        warm = self._warm_state is not None
        model = self._build()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        objective = _reference_mll(model) if reference else exact_mll
        epochs_run = 0
        if self.subset_size and self.n > self.subset_size:
            if not warm:
                generator = torch.Generator().manual_seed(self.seed + self.n)
                index = torch.randperm(self.n, generator=generator)[: self.subset_size]
                epochs_run, _, _ = self._adam(model, optimizer, objective, epochs, patience, index)
            full_epochs, best = self._lbfgs(model, objective, self.full_epochs)
        else:
            full_epochs, best, best_state = self._adam(model, optimizer, objective, epochs, patience, None)
            if best_state is not None:
                model.load_state_dict(best_state)
        model.eval()
        self.model = model
        self._warm_state = {k: v for k, v in model.state_dict().items()
                            if not k.startswith(("input_transform", "outcome_transform"))
                            and k != "likelihood.noise_covar.noise"}  # the fixed noise belongs to the data
        if self.noisy:
            self._best_error = float(self.predict(self.X)[0].min())
        self.last_fit = {"gp_epochs": epochs_run + full_epochs, "gp_full_epochs": full_epochs, "gp_neg_mll": best}
        return self.last_fit

    @staticmethod
    def _adam(model: InstructionDeepKernelGP, optimizer: torch.optim.Optimizer, objective, epochs: int,
              patience: int, index: torch.Tensor | None) -> tuple[int, float, dict | None]:
        """Adam epochs on -objective (of `index` rows, or all); returns (epochs run, best loss, best state)."""
        best, best_state, since, epochs_run = math.inf, None, 0, 0
        for epoch in range(epochs):
            epochs_run = epoch + 1
            optimizer.zero_grad(set_to_none=True)
            with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER):
                loss = -objective(model, index)
            loss.backward()
            value = float(loss.detach())
            if value < best - 1e-4:
                best, since = value, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since += 1
                if since >= patience:
                    break
            optimizer.step()
        return epochs_run, best, best_state

    @staticmethod
    def _lbfgs(model: InstructionDeepKernelGP, objective, max_evals: int) -> tuple[int, float]:
        """Full-batch L-BFGS (strong Wolfe line search) on -objective, at most max_evals evaluations; it stops
        when the loss changes by less than 1e-4 per point. Returns (evaluations, final loss)."""
        optimizer = torch.optim.LBFGS(list(model.parameters()), lr=1.0, max_iter=max_evals, max_eval=max_evals,
                                      history_size=20, tolerance_change=1e-4, line_search_fn="strong_wolfe")
        evaluations = 0

        def closure() -> torch.Tensor:
            nonlocal evaluations
            evaluations += 1
            optimizer.zero_grad(set_to_none=True)
            with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER):
                loss = -objective(model, None)
            loss.backward()
            return loss

        if max_evals > 0:
            optimizer.step(closure)
        with torch.no_grad():
            final = float(-objective(model, None))
        return evaluations, final

    @torch.no_grad()
    def predict(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of the error rate at X (B, D): mean (B,), std (B,), in error units."""
        if self.model is None:
            raise DataError("GPWithEI.predict before fit")
        with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY_SIZE):
            post = self.model.posterior(torch.as_tensor(X, dtype=torch.float64))
        return -post.mean.squeeze(-1), post.variance.clamp_min(1e-12).sqrt().squeeze(-1)

    def log_ei(self, X: torch.Tensor, best_error: float | None = None) -> torch.Tensor:
        """Analytic LogEI of lowering the error below `best_error` (default: the best observed) at X (B, D)."""
        mean, std = self.predict(X)
        return log_expected_improvement(mean, std, self.best_error if best_error is None else best_error)

    def optimize(self, num_restarts: int = 64, raw_samples: int = 1024, margin: float = 0.2,
                 maxiter: int = 200, seed: int = 0, batch_limit: int | None = None, decode=None,
                 search_points: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """The point maximising qLogEI (q=1) inside the margin-extended box: ((D,), log EI value).

        batch_limit: restarts optimised together (default: all of them, one posterior call per iteration).
        decode: a differentiable map z (..., d) -> GP inputs (..., D); the search then runs over z in the box
            around `search_points` (M, d) (e.g. the training instructions' VAE latents) and returns z (d,).
        """
        if self.model is None:
            raise DataError("GPWithEI.optimize before fit")
        acq = qLogExpectedImprovement(model=self.model, best_f=-self.best_error)
        if decode is not None:
            if search_points is None:
                raise DataError("GPWithEI.optimize with decode needs search_points (the latents to search around)")
            acq = DecodedAcquisition(acq, decode)
            bounds = get_latent_bounds(torch.as_tensor(search_points, dtype=torch.float64), margin)
        else:
            bounds = get_latent_bounds(self.X, margin)
        torch.manual_seed(seed)
        with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER), gpytorch.settings.max_cholesky_size(MAX_CHOLESKY_SIZE):
            candidate, value = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=num_restarts,
                                             raw_samples=raw_samples,
                                             options={"maxiter": maxiter, "batch_limit": batch_limit or num_restarts})
        return candidate.reshape(-1).detach(), float(value)
