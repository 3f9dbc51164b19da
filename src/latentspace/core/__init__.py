"""The shared core: what two or more latentspace families really share."""
