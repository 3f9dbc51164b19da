"""LTT: the Latent Trajectory Transformer (ltt.md): tokens -> latent path, ODE/SDE/flow priors, latent planning."""
