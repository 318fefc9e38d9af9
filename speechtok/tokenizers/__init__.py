"""Tokenizers: semantic units (SSL or spectral features + k-means)."""

from speechtok.tokenizers.semantic import SemanticTokenizer

__all__ = ["SemanticTokenizer"]
