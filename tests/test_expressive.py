"""Expressive sequences: units, pitch and style merged by time as Spirit-LM Expressive orders them, checked
token by token on hand-built streams; the vocabulary ranges; splitting a generated sequence."""

from types import SimpleNamespace

import numpy as np

from speechtok.lm.sequences import SequenceBuilder
from speechtok.lm.vocab import SpeechVocab
from speechtok.prosody.expressive import split_generated

U, P, S = 100, 200, 300  # first ids of units, pitch and style


def vocab() -> SpeechVocab:
    return SpeechVocab(semantic_stream="units", k=10, semantic_first_id=U, text_id=1, speech_id=2, dedup=True,
                       frame_rate=25.0, pitch_stream="pitch", pitch_k=5, pitch_first_id=P, pitch_rate=12.5,
                       style_stream="style", style_k=3, style_first_id=S, style_rate=1.0)


SAMPLE = {"units": np.array([5, 5, 7, 7, 7, 2, 2, 9]),  # 25 Hz: runs start at 0, .08, .20, .28 s
          "pitch": np.array([1, 4, 3, 3]),  # 12.5 Hz: runs start at 0, .08, .16 s
          "style": np.array([2])}  # 1 Hz: at 0 s


def builder() -> SequenceBuilder:
    return SequenceBuilder(vocab(), SimpleNamespace(bos_token_id=None, eos_token_id=0))


def test_speech_sequence_merges_streams_by_start_time():
    """t=0: style, pitch, unit (ties: style, then pitch, then unit); .08: pitch 4 before unit 7; .16: pitch 3;
    .20: unit 2; .28: unit 9 — deduplicated runs placed at their first frame, style never deduplicated."""
    want = [2, S + 2, P + 1, U + 5, P + 4, U + 7, P + 3, U + 2, U + 9, 0]
    assert builder().speech(SAMPLE) == want


def test_speech_span_keeps_the_pitch_and_style_that_start_inside_it():
    """Frames [2, 6) = .08–.24 s: pitch frames 1 and 2 (.08, .16) start inside, style's (0 s) does not."""
    assert builder().speech_ids(SAMPLE, 2, 6) == [P + 4, U + 7, P + 3, U + 2]


def test_split_generated_gives_each_stream_back_in_order():
    ids = builder().speech(SAMPLE)
    streams = split_generated(vocab(), ids)
    assert streams["units"].tolist() == [5, 7, 2, 9]
    assert streams["pitch"].tolist() == [1, 4, 3] and streams["style"].tolist() == [2]


def test_plain_vocab_sequences_unchanged():
    """Without pitch / style streams the speech sequence is the units alone, as before."""
    v = vocab()
    v.pitch_stream = v.style_stream = None
    b = SequenceBuilder(v, SimpleNamespace(bos_token_id=None, eos_token_id=0))
    assert b.speech(SAMPLE) == [2, U + 5, U + 7, U + 2, U + 9, 0]


def test_extend_vocab_adds_pitch_and_style_ranges(base_llm):
    from speechtok.lm.vocab import extend_vocab, load_base

    manifest = {"tokenizers": {"semantic": {"type": "semantic", "k": 12, "frame_rate": 50.0},
                               "pitch": {"type": "pitch", "codebook_size": 17, "frame_rate": 12.5},
                               "style": {"type": "style", "codebook_size": 4, "frame_rate": 1.0}}}
    model, tok = load_base(str(base_llm))
    v = extend_vocab(model, tok, manifest, pitch="pitch", style="style")
    assert tok.convert_tokens_to_ids([f"<p_{i}>" for i in range(17)]) == list(range(v.pitch_first_id,
                                                                                     v.pitch_first_id + 17))
    assert tok.convert_tokens_to_ids(["<st_0>", "<st_3>"]) == [v.style_first_id, v.style_first_id + 3]
    assert v.pitch_rate == 12.5 and v.style_rate == 1.0 and v.expressive
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
