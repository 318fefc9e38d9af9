"""Prosody: F0 trackers, F0 and pitch tokens (bins, VQ-VAE), style tokens, expressive sequences."""
