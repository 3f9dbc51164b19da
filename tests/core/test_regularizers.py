import torch

from latentspace.core.regularizers import epps_pulley, epps_pulley_1d


def _stat(z, seed=0):
    return float(epps_pulley(z, num_slices=64, generator=torch.Generator().manual_seed(seed)))


def test_near_zero_for_standard_normal_and_larger_for_others():
    n, d = 2000, 16
    gaussian = _stat(torch.randn(n, d))
    uniform = _stat((torch.rand(n, d) - 0.5) * 12**0.5)  # unit variance, not Gaussian
    signs = torch.randint(0, 2, (n, d)) * 2.0 - 1.0
    bimodal = _stat(signs * 2.0 + 0.3 * torch.randn(n, d))
    scaled = _stat(2.5 * torch.randn(n, d))
    shifted = _stat(torch.randn(n, d) + 1.0)
    assert gaussian < 2e-3
    for other in (bimodal, scaled, shifted):
        assert other > 10 * gaussian
    assert uniform > gaussian


def test_one_dimensional_statistic_matches_quadrature_of_the_definition():
    x = torch.randn(300, 1, dtype=torch.float64) * 1.3 + 0.2
    t = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    phi = torch.exp(1j * x * t).mean(0)  # empirical CF over the full line
    integrand = (phi - torch.exp(-t**2 / 2)).abs() ** 2 * torch.exp(-t**2 / 2)
    reference = torch.trapezoid(integrand, t)
    ours = epps_pulley_1d(x, num_points=201, t_max=8.0)[0]
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-6)


def test_gradient_descent_moves_samples_toward_standard_normal():
    torch.manual_seed(0)
    z = ((torch.rand(512, 8) - 0.5) * 6 + 1.0).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.05)
    start = _stat(z.detach())
    for _step in range(300):
        loss = epps_pulley(z, num_slices=32)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = _stat(z.detach())
    assert end < start / 10
    assert z.detach().mean().abs() < 0.1
    assert abs(float(z.detach().std()) - 1.0) < 0.15


def test_scales_linearly_without_pairwise_matrix():
    z = torch.randn(50_000, 64)  # an O(N^2) statistic would need 2.5e9 pairs
    assert float(epps_pulley(z, num_slices=16)) < 1e-3
