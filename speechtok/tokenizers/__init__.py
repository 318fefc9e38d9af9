"""Tokenizers: semantic units (SSL or spectral features + k-means)."""

__all__ = ["SemanticTokenizer"]


def __getattr__(name: str):
    # lazily: `tokenizers.spec` is imported before torch to check specs fast (cli `tok encode`)
    if name == "SemanticTokenizer":
        from speechtok.tokenizers.semantic import SemanticTokenizer

        return SemanticTokenizer
    raise AttributeError(name)
