"""Audio reading and corpus parsing, including the inputs that must fail with a clear reason."""

import json

import numpy as np
import pytest
import soundfile as sf

from speechtok.audio import AudioError, load_utterance, read_audio, resample, utterance_seconds
from speechtok.corpus import CorpusError, Utterance, load_corpus


def test_stereo_is_downmixed_and_span_is_cut(tmp_path):
    sr = 8000
    left = np.linspace(-0.5, 0.5, sr * 2, dtype=np.float32)
    stereo = np.stack([left, -left * 0 + 0.25], axis=1)
    path = tmp_path / "st.flac"
    sf.write(path, stereo, sr)
    wav, got_sr = read_audio(str(path), start=0.5, end=1.0)
    assert got_sr == sr and wav.dtype == np.float32 and len(wav) == 4000
    np.testing.assert_allclose(wav, (left[4000:8000] + 0.25) / 2, atol=1e-4)
    assert utterance_seconds(Utterance("x", str(path), start=0.5, end=1.0)) == pytest.approx(0.5)


@pytest.mark.parametrize("sr_in", [8000, 22050, 44100, 48000])
def test_resample_length_and_tone(sr_in):
    t = np.arange(sr_in) / sr_in
    wav = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(wav, sr_in, 16000)
    assert len(out) == 16000 and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1


def test_bad_audio_reasons(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        read_audio(str(empty))
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or Inf"):
        read_audio(str(nan))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00junk" * 10)
    with pytest.raises(AudioError, match="cannot"):
        load_utterance(Utterance("j", str(junk)), 16000)
    with pytest.raises(AudioError, match="file not found"):
        utterance_seconds(Utterance("m", str(tmp_path / "missing.wav")))


def test_folder_scan_is_recursive_and_sorted(tmp_path):
    for rel in ["b/2.wav", "a/1.flac", "a/sub/3.ogg", "notes.txt", "c.mp3"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    ids = [u.id for u in load_corpus(tmp_path)]
    assert ids == ["c", "a/1", "a/sub/3", "b/2"]


def test_manifest_bad_lines_are_reported_and_skipped(tmp_path):
    lines = [
        json.dumps({"id": "u1", "path": "a.wav", "text": "hi", "speaker": "s",
                    "words": [{"word": "hi", "start": 0, "end": 0.3}]}),
        "{not json",
        json.dumps({"id": "u2"}),
        json.dumps({"id": "u3", "path": "c.wav", "start": 2.0, "end": 1.0}),
        json.dumps({"id": "u1", "path": "dup.wav"}),
        json.dumps({"id": "u4", "path": "/abs/d.wav", "words": [{"word": "x"}]}),
        "",
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(("\n".join(lines)).encode() + b"\n\xff\xfe broken utf8\n")
    errors: list[CorpusError] = []
    utts = load_corpus(manifest, errors)
    assert [u.id for u in utts] == ["u1", "u4"]
    assert utts[1].words is None  # bad word timings drop the words, not the utterance
    assert utts[0].path == str(tmp_path / "a.wav")
    assert utts[0].labels() == {"text": "hi", "words": [{"word": "hi", "start": 0.0, "end": 0.3}],
                                "speaker": "s"}
    reasons = [(e.file.rsplit(":", 1)[-1] if e.file.startswith(str(manifest)) else e.file, e.reason)
               for e in errors]
    assert ("2", "bad JSON (Expecting property name enclosed in double quotes)") in reasons
    assert ("3", "missing 'path'") in reasons
    assert ("4", "end 1.0 is not after start 2.0") in reasons
    assert ("6", "words dropped, utterance kept: word 1 ('x') needs 'start' and 'end'") in reasons
    assert ("8", "line is not valid UTF-8") in reasons
    assert any("duplicate id 'u1'" in r for _, r in reasons)
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nope")
