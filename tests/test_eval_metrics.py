"""Model-based evaluation (`tok eval resynth --asr/--speaker/--mos`, `tok eval generated`): known answers for
the plumbing (given transcripts, a deleted word, identical audio), the offline models on flite speech
(same voice vs another voice, clean vs noisy), transformers backends' mechanics against transformers' own
outputs with tiny random-init models."""

import hashlib
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.eval import asr as asr_mod
from speechtok.eval.asr import error_rates, normalize_text, read_transcripts
from speechtok.eval.generated import auto_bleu, distinct, entropy_bits
from speech import flite_sentence

FOX = "the quick brown fox jumps over the lazy dog"
APPLES = "seven green apples fell from the tree"


@pytest.fixture(scope="module")
def flite_clips(tmp_path_factory):
    """{name: (wav, sr)}: two sentences by the flite voice slt, the first also by rms, at 16 kHz."""
    root = tmp_path_factory.mktemp("flite")
    out = {}
    for name, voice, text in (("slt_fox", "slt", FOX), ("slt_apples", "slt", APPLES),
                              ("rms_fox", "rms", FOX)):
        flite_sentence(text, voice, root / f"{name}.wav")
        out[name] = sf.read(root / f"{name}.wav", dtype="float32")
    assert {sr for _, sr in out.values()} == {16000}
    return out


# ---- text normalisation and error rates -------------------------------------------------------------------

def test_normalisation_and_known_error_rates():
    assert normalize_text(" The  Quick, brown FOX!  It's 'done' ") == "the quick brown fox it's done"
    same = error_rates([FOX], [FOX.upper() + "."])
    assert same["wer"] == 0 and same["cer"] == 0
    deleted = error_rates([FOX], [FOX.replace("lazy ", "")])  # one of 9 words, 5 of 43 characters
    assert deleted["wer"] == pytest.approx(1 / 9) and deleted["cer"] == pytest.approx(5 / 43)
    assert deleted["deletions"] == 1 and deleted["substitutions"] == deleted["insertions"] == 0
    corpus = error_rates([FOX, APPLES, "..."],
                         [FOX.replace("lazy ", ""), "seven green apples fell from a tree", "x"])
    assert corpus["wer"] == pytest.approx(2 / 16) and corpus["empty_references"] == 1  # summed, not averaged


def test_transcripts_match_by_id_path_or_stem(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"id": "a", "text": "x y"}) + "\n" + json.dumps({"path": "d/b.flac", "text": "z"})
                 + "\nnot json\n" + json.dumps({"id": "c"}) + "\n")
    errors = []
    t = read_transcripts(f, errors)
    assert t["a"] == "x y" and t["d/b"] == "z" and t["b"] == "z"
    assert [e.split(": ")[0] for e in errors] == [f"{f}:3", f"{f}:4"]


class GivenTranscripts:
    """An ASR stand-in that 'recognises' each clip as the text registered for its length."""

    backend, model, model_sha256, sample_rate = "given", "lookup", "0" * 64, 16000

    def __init__(self, by_length):
        self.by_length = by_length

    def transcribe(self, wavs):
        return [self.by_length[len(w)] for w, _ in wavs]


def test_resynth_report_wer_dwer_plumbing(flite_clips, tmp_path, monkeypatch):
    """Reference audio recognised exactly, one resynthesis losing a word: WER = dWER = 1/16 over the corpus,
    reference-audio WER 0, per-file WER 1/9 and 0; the identical pair has similarity 1 (Resemblyzer)."""
    (ref := tmp_path / "ref").mkdir()
    (hyp := tmp_path / "hyp").mkdir()
    fox, sr = flite_clips["slt_fox"]
    apples, _ = flite_clips["slt_apples"]
    noisy = apples + 0.01 * np.random.default_rng(0).standard_normal(len(apples)).astype(np.float32)
    sf.write(ref / "fox.wav", fox, sr)
    sf.write(hyp / "fox.wav", fox, sr)
    sf.write(ref / "apples.wav", apples, sr)
    sf.write(hyp / "apples.wav", np.concatenate([noisy, np.zeros(7, np.float32)]), sr)
    given = GivenTranscripts({len(fox): FOX, len(apples): APPLES,
                              len(apples) + 7: APPLES.replace("green ", "")})
    monkeypatch.setattr(asr_mod, "load_asr", lambda spec, device, batch_size: given)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"id": i, "text": t.upper() + "."}) + "\n"
                                              for i, t in (("fox", FOX), ("apples", APPLES))))
    from speechtok.pipelines.evaluate import evaluate_resynth

    r = evaluate_resynth(ref, hyp, tmp_path / "out", 0, asr="given", transcripts=tmp_path / "t.jsonl",
                         speaker="resemblyzer")
    assert r["errors"] == [] and r["files"] == 2
    a = r["asr"]
    assert (a["resynthesis_vs_text"]["wer"] == pytest.approx(1 / 16)
            and a["dwer"]["wer"] == pytest.approx(1 / 16))
    assert a["reference_vs_text"]["wer"] == 0 and r["mean"]["wer"] == pytest.approx(1 / 16)
    rows = {row["id"]: row for row in r["per_file"]}
    assert (rows["apples"]["wer"] == pytest.approx(1 / 7) and rows["fox"]["wer"] == 0
            and rows["fox"]["dwer"] == 0)
    assert rows["fox"]["speaker_similarity"] == pytest.approx(1, abs=1e-6)
    assert rows["apples"]["speaker_similarity"] < 1 - 1e-4
    weights = Path(importlib.import_module("resemblyzer").__file__).parent / "pretrained.pt"
    assert r["speaker"]["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Text normalisation: lowercase" in md and "dWER" in md
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "elsewhere", "text": "x"}) + "\n")
    r = evaluate_resynth(ref, hyp, tmp_path / "out2", 0, asr="given", transcripts=tmp_path / "other.jsonl")
    assert r["asr"]["transcripts_missing"] == 2 and r["asr"]["dwer"]["wer"] == pytest.approx(1 / 16)
    assert len(r["errors"]) == 1 and "no transcript matches" in r["errors"][0]


# ---- offline models on synthetic speech --------------------------------------------------------------------

def test_pocketsphinx_transcribes_clean_flite_speech(flite_clips):
    pytest.importorskip("pocketsphinx")
    asr = asr_mod.load_asr("pocketsphinx")
    text = asr.transcribe([flite_clips["slt_fox"]])[0]
    assert error_rates([FOX], [text])["wer"] <= 0.25, text
    assert len(asr.model_sha256) == 64


def test_resemblyzer_same_voice_beats_other_voice(flite_clips):
    from speechtok.eval.speaker import load_speaker_encoder, speaker_similarity

    enc = load_speaker_encoder("resemblyzer")
    fox, sr = flite_clips["slt_fox"]
    assert speaker_similarity(enc, fox, sr, fox, sr) == pytest.approx(1, abs=1e-6)
    same = speaker_similarity(enc, fox, sr, *flite_clips["slt_apples"])
    other = speaker_similarity(enc, fox, sr, *flite_clips["rms_fox"])
    assert same > other + 0.1, (same, other)
    assert np.isfinite(enc.embed(fox[:200], sr)).all()  # a short clip embeds (the whole of it) ...
    with pytest.raises(ValueError, match="no samples"):  # ... an empty one (a round trip's output) does not
        enc.embed(fox[:0], sr)


def test_dnsmos_drops_with_noise(flite_clips):
    from speechtok.eval.mos import DNSMOS

    fox, sr = flite_clips["slt_fox"]
    mos = DNSMOS()
    clean = mos.score(fox, sr)
    noisy = mos.score(fox + 0.05 * np.random.default_rng(0).standard_normal(len(fox)).astype(np.float32), sr)
    assert (1 <= noisy["dnsmos_ovrl"] < clean["dnsmos_ovrl"] - 0.3
            and noisy["dnsmos_bak"] < clean["dnsmos_bak"])
    assert np.isfinite(mos.score(fox[:200], sr)["dnsmos_ovrl"])  # repeated up to 9 s
    with pytest.raises(ValueError, match="no samples"):  # was: speechmos repeating nothing, forever
        mos.score(fox[:0], sr)


def test_numpy_mel_matches_librosa_filters():
    """The librosa-free front end: Slaney mel filters equal librosa's (checked on their closed form here;
    the full spectrogram was checked equal to librosa 0.11 to 2e-7 relative)."""
    from speechtok.eval.librosa_mel import _filters, melspectrogram

    f = _filters(16000, 400, 40)
    assert f.shape == (40, 201) and np.all(f >= 0) and np.all(f.sum(1) > 0)
    x = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    m = melspectrogram(x, 16000, 400, 160, 40)
    assert m.shape == (40, 101) and _filters(16000, 400, 40)[:, 25].argmax() == m[:, 50].argmax()  # 1 kHz bin


# ---- transformers backends, tiny random-init ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory):
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    path = tmp_path_factory.mktemp("ctc") / "tiny-ctc"
    path.mkdir()
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2,
             **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (path / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), pad_token="<pad>", unk_token="<unk>",
                               word_delimiter_token="|")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(path)
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="layer", do_stable_layer_norm=True, pad_token_id=0)
    Wav2Vec2ForCTC(cfg).save_pretrained(path)
    return path


def test_transformers_ctc_asr_mechanics(tiny_ctc, flite_clips):
    """Batched transcription decodes the argmax CTC path as transformers' processor does one by one."""
    from transformers import AutoModelForCTC, AutoProcessor

    asr = asr_mod.load_asr(str(tiny_ctc), "cpu", batch_size=2)
    clips = [flite_clips["slt_fox"], flite_clips["slt_apples"]]
    got = asr.transcribe(clips)
    proc, model = AutoProcessor.from_pretrained(tiny_ctc), AutoModelForCTC.from_pretrained(tiny_ctc).eval()
    for (wav, sr), text in zip(clips, got):
        with torch.no_grad():
            ids = model(**proc(wav, sampling_rate=sr, return_tensors="pt")).logits.argmax(-1)
        assert text == proc.batch_decode(ids)[0].strip()
    assert any(got), "random-init CTC should emit some characters"
    assert asr.model_sha256 == hashlib.sha256((tiny_ctc / "model.safetensors").read_bytes()).hexdigest()


def test_transformers_seq2seq_asr_mechanics(tiny_ctc, flite_clips, tmp_path):
    """An encoder-decoder checkpoint (the Whisper path: AutoModelForSpeechSeq2Seq + generate), here a tiny
    wav2vec2 → BERT SpeechEncoderDecoder: batched transcripts equal transformers' generate one by one."""
    from transformers import (AutoModelForSpeechSeq2Seq, AutoProcessor, BertConfig, BertLMHeadModel,
                              SpeechEncoderDecoderModel, Wav2Vec2Config, Wav2Vec2Model)

    proc = AutoProcessor.from_pretrained(tiny_ctc)
    proc.save_pretrained(tmp_path / "s2s")
    torch.manual_seed(0)
    enc = Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                                       conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                       num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                                       do_stable_layer_norm=True))
    dec = BertLMHeadModel(BertConfig(vocab_size=len(proc.tokenizer), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, is_decoder=True,
                                     add_cross_attention=True, pad_token_id=0))
    model = SpeechEncoderDecoderModel(encoder=enc, decoder=dec)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 2, 0, 1
    model.generation_config.max_new_tokens = 12
    model.save_pretrained(tmp_path / "s2s")
    asr = asr_mod.load_asr(str(tmp_path / "s2s"), "cpu", batch_size=2)
    clips = [flite_clips["slt_fox"], flite_clips["slt_apples"]]
    got = asr.transcribe(clips)
    ref = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "s2s").eval()
    assert asr.seq2seq and len(got) == 2
    for (wav, sr), text in zip(clips, got):
        ids = ref.generate(**proc(wav, sampling_rate=sr, return_tensors="pt"))
        assert text == proc.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_transformers_xvector_similarity_mechanics(tmp_path, flite_clips):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    from speechtok.eval.speaker import load_speaker_encoder, speaker_similarity

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1),
                      tdnn_dilation=(1, 1), xvector_output_dim=24, num_buckets=32)
    WavLMForXVector(cfg).save_pretrained(tmp_path / "sv")
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(tmp_path / "sv")
    enc = load_speaker_encoder(str(tmp_path / "sv"))
    (fox, sr), (other, _) = flite_clips["slt_fox"], flite_clips["rms_fox"]
    fox, other = fox[:16000], other[:16000]
    assert enc.embed(fox, sr).shape == (24,)
    assert speaker_similarity(enc, fox, sr, fox, sr) == pytest.approx(1, abs=1e-6)
    assert speaker_similarity(enc, fox, sr, other, sr) < 1 - 1e-6
    # the shortest input it embeds: two TDNN frames (statistics pooling takes their std); one sample less
    # crashed or gave NaN inside transformers, now it is a one-line ValueError
    n = enc.min_samples * sr // 16000
    assert enc.min_samples == 105 and np.isfinite(enc.embed(fox[:n], sr)).all()
    with pytest.raises(ValueError, match="shorter than the 7 ms the x-vector model embeds"):
        enc.embed(fox[: n - 1], sr)
    enc.min_samples = 0
    try:
        assert not np.isfinite(enc.embed(fox[: n - 1], sr)).all()
    except RuntimeError:
        pass


# ---- generated continuations -------------------------------------------------------------------------------

def test_auto_bleu_and_diversity_known_answers():
    assert auto_bleu([1, 2, 3, 4]) == 0  # no repeated bigram
    assert auto_bleu([1, 2, 1, 2]) == pytest.approx(2 / 3)  # (1,2) twice; (2,1) once
    assert auto_bleu([1, 1, 1]) == 0  # the two (1,1) overlap, so neither counts
    assert auto_bleu("a b a b a b".split()) == 1 and auto_bleu([7]) is None
    assert distinct([1, 2, 1, 2], 1) == 0.5 and distinct([1, 2, 1, 2], 2) == pytest.approx(2 / 3)
    assert entropy_bits([3, 3, 5, 5]) == 1 and entropy_bits([4] * 5) == 0


def test_genppl_matches_transformers_loss(base_llm):
    """Corpus perplexity = exp(token-weighted mean of transformers' own per-text loss after BOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechtok.eval.generated import TextLM

    texts = ["the dog ran over the hill", "a model reads"]
    got = TextLM(str(base_llm), batch_size=2).perplexity(texts)
    tok, model = (AutoTokenizer.from_pretrained(base_llm),
                  AutoModelForCausalLM.from_pretrained(base_llm).eval())
    nll = n = 0
    for t in texts:
        ids = torch.tensor([[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            nll += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    assert got["tokens"] == n and got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_eval_generated_command(tmp_path, flite_clips):
    gen = tmp_path / "gen"
    gen.mkdir()
    sf.write(gen / "c0.wav", *flite_clips["slt_fox"])
    np.save(gen / "c0.npy", np.array([1, 2, 1, 2]))
    np.save(gen / "c1.npy", np.array([1, 2, 3, 4, 5, 6]))
    (gen / "c2.npy").write_text("not numpy")
    res = CliRunner().invoke(cli, ["eval", "generated", str(gen), "-o", str(tmp_path / "out")])
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert res.exit_code == 1 and len(r["errors"]) == 1 and "c2.npy" in r["errors"][0]
    rows = {row["id"]: row for row in r["per_file"]}
    assert rows["c0"]["unit_auto_bleu"] == pytest.approx(2 / 3) and rows["c1"]["unit_auto_bleu"] == 0
    assert r["mean"]["unit_auto_bleu"] == pytest.approx(1 / 3)
    assert r["duration"]["total_s"] == pytest.approx(len(flite_clips["slt_fox"][0]) / 16000)
