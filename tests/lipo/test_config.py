import pytest

from latentspace.core.errors import ConfigError
from latentspace.lipo.config import LIPOConfig


def test_seed_preset_is_the_seed_tables():
    c = LIPOConfig.preset("seed")
    assert (c.ape_num_instructions, c.ape_batch_size, c.ape_max_tokens, c.ape_max_length) == (1000, 10, 100, 500)
    assert (c.vae_beta, c.vae_epochs, c.vae_annealing_epochs, c.vae_patience) == (0.003, 10000, 500, 500)
    assert c.vae_lr == 3e-4
    assert (c.embedding_dim, c.latent_dim, c.gp_latent_dim) == (768, 64, 10)
    assert (c.bmin, c.eta, c.random_interleaving_prob, c.min_fidelity_pct) == (10, 2.0, 0.1, 0.75)
    assert (c.num_restarts, c.raw_samples, c.max_inversion_iters, c.gap_threshold) == (64, 1024, 3, 0.1)
    assert (c.inversion_n_steps, c.inversion_lr, c.latent_margin) == (100, 0.1, 0.2)
    assert c.for_hyperband_gp() == {"epochs": 3000, "lr": 0.01, "patience": 50}


def test_json_round_trip_and_presets():
    c = LIPOConfig()  # the defaults run offline on CPU
    assert LIPOConfig.from_json(c.to_json()) == c
    assert c.offline and not LIPOConfig.preset("seed").offline
    assert LIPOConfig.preset("cpu") == c  # the old name of the defaults
    assert LIPOConfig.preset("debug").ape_num_instructions == 10
    assert LIPOConfig.preset("debug").offline
    assert (LIPOConfig.preset("seed").invbo_rank, c.invbo_rank) == ("log_ei", "mean")  # chosen on the validation table
    with pytest.raises(ConfigError, match="unknown preset"):
        LIPOConfig.preset("huge")


@pytest.mark.parametrize("bad", [{"eta": 1.0}, {"bmin": 0}, {"validation_size": 5}, {"inverter": "x"},
                                 {"min_fidelity_pct": 0.0}, {"invbo_rank": "ucb"},
                                 {"gp_fidelity": "low"}])
def test_invalid_values_are_named(bad):
    with pytest.raises(ConfigError):
        LIPOConfig(**bad)
