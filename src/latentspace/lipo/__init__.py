"""LIPO: latent instruction prompt optimisation (APE -> embeddings -> VAE -> Hyperband + GP/LogEI -> inversion)."""
