"""latentspace: reasoning in learned latent spaces (LBS, LTT, CRSM, RBS-QA, LIPO on one core)."""

__version__ = "0.1.0"
