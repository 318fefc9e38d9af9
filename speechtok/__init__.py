"""speechtok: audio tokenizers and token-LM training for speech language models."""

__version__ = "0.1.0"
__all__ = ["SemanticTokenizer", "SpeechVocab", "read_shards", "__version__"]


def __getattr__(name: str):
    # lazy, so that `tok --help` does not pay for importing torch
    if name == "SemanticTokenizer":
        from speechtok.tokenizers.semantic import SemanticTokenizer

        return SemanticTokenizer
    if name == "read_shards":
        from speechtok.shards import read_shards

        return read_shards
    if name == "SpeechVocab":
        from speechtok.lm.vocab import SpeechVocab

        return SpeechVocab
    raise AttributeError(f"module 'speechtok' has no attribute {name!r}")
