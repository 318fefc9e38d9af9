"""Corpora as users hold them: lhotse manifests and Shar, Hugging Face `datasets`. Each is built by the
library itself and must give the same shards as the equivalent speechtok JSONL."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from speechtok.cli.main import cli
from speechtok.corpus import CorpusSource, load_corpus

lhotse = pytest.importorskip("lhotse")
datasets = pytest.importorskip("datasets")

N = 5  # utterances of the speech corpus used here (encoding stays fast)
# the span cut from odd utterances (whole samples at 16 and 22.05 kHz: lhotse snaps to samples)
SPAN = (0.5, 2.0)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tok_dir(tiny_ssl, speech_corpus, tmp_path_factory):
    """A semantic tokenizer whose 16 centroids are frames of the corpus (so units vary)."""
    import torch

    from speechtok.audio import load_utterance
    from speechtok.tokenizers.semantic import SemanticTokenizer
    from speechtok.tokenizers.ssl_features import SSLFeatures

    feats = SSLFeatures(tiny_ssl("hubert"), 2)
    wav = torch.from_numpy(load_utterance(load_corpus(speech_corpus)[0], 16000))[None]
    frames, n = feats(wav, torch.tensor([wav.shape[1]]))
    centroids = frames[0, : int(n[0])][:: max(1, int(n[0]) // 16)][:16].detach().numpy()
    out = tmp_path_factory.mktemp("tok") / "tok"
    SemanticTokenizer(feats, centroids.astype(np.float32)).save(out)
    return out


@pytest.fixture(scope="module")
def lhotse_corpus(speech_corpus, tmp_path_factory):
    """lhotse RecordingSet + SupervisionSet (one stereo recording read on channel 1, odd utterances cut to
    SPAN, word alignments in recording time), the CutSet of their supervisions, and the equivalent JSONL."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    root = tmp_path_factory.mktemp("lhotse")
    rows = [json.loads(x) for x in speech_corpus.read_text().splitlines()][:N]
    recs, sups, lines = [], [], []
    for i, row in enumerate(rows):
        path = str(speech_corpus.parent / row["path"])
        channel = None
        if i == 2:  # stereo: the speech on channel 1, noise on channel 0
            wav, sr = sf.read(path, dtype="int16")
            noise = np.random.default_rng(0).integers(-3000, 3000, len(wav)).astype(np.int16)
            path = str(root / "stereo.wav")
            sf.write(path, np.stack([noise, wav], axis=1), sr)
            channel = 1
        rec = Recording.from_file(path, recording_id=f"rec{i}")
        start, end = SPAN if i % 2 else (0.0, rec.duration)
        words = [w for w in row["words"] if w["start"] >= start and w["end"] <= end]
        sups.append(SupervisionSegment(
            id=row["id"], recording_id=rec.id, start=start, duration=round(end - start, 6),
            channel=channel or 0, text=row["text"], speaker=row["speaker"], language="en",
            alignment={"word": [AlignmentItem(w["word"], w["start"], round(w["end"] - w["start"], 6))
                                for w in words]}))
        recs.append(rec)
        line = {"id": row["id"], "path": path, "text": row["text"], "speaker": row["speaker"],
                "language": "en",
                "words": [{"word": w["word"], "start": round(w["start"] - start, 6),
                           "end": round(w["end"] - start, 6)}
                          for w in words]}
        if i % 2:
            line.update(start=start, end=end)
        if channel is not None:
            line["channel"] = channel
        lines.append(line)
    recordings, supervisions = RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    recordings.to_file(root / "corpus_recordings_dev.jsonl.gz")
    supervisions.to_file(root / "corpus_supervisions_dev.jsonl.gz")
    CutSet.from_manifests(recordings=recordings, supervisions=supervisions).trim_to_supervisions().to_file(
        root / "cuts.jsonl.gz")
    (root / "same.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))}


def samples(folder: Path) -> dict[str, tuple]:
    """id → every field of each sample of a shard folder (metadata, token arrays as lists)."""
    from speechtok import read_shards

    return {s["id"]: {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in s.items()}
            for s in read_shards(folder)}


def encode(corpus, tok_dir, out, *options):
    r = run("encode", corpus, "-t", tok_dir, "-o", out, "-q", "--num-workers", 0, "--batch-seconds", 8,
            *options)
    assert r.exit_code == 0, r.output
    return shards(out)


@pytest.fixture(scope="module")
def lhotse_reference(lhotse_corpus, tok_dir, tmp_path_factory) -> Path:
    """The shards of the equivalent speechtok JSONL."""
    out = tmp_path_factory.mktemp("lhotse_ref")
    encode(lhotse_corpus / "same.jsonl", tok_dir, out)
    return out


def fields(u) -> tuple:
    return u.id, u.start, u.end, u.channel, u.labels()


def test_lhotse_utterances_carry_span_channel_and_supervisions(lhotse_corpus):
    cuts = load_corpus(lhotse_corpus / "cuts.jsonl.gz")
    jsonl = load_corpus(lhotse_corpus / "same.jsonl")
    assert [fields(u) for u in cuts] == [fields(u) for u in jsonl]
    assert cuts[1].start == SPAN[0] and cuts[2].channel == 1 and cuts[0].language == "en"
    assert cuts[1].seconds == pytest.approx(SPAN[1] - SPAN[0])  # from the manifest, not from a header
    # a RecordingSet finds its SupervisionSet by name (or --supervisions) and is cut into its supervisions
    recs = load_corpus(lhotse_corpus / "corpus_recordings_dev.jsonl.gz")
    named = load_corpus(CorpusSource(str(lhotse_corpus / "corpus_recordings_dev.jsonl.gz"),
                                     supervisions=str(lhotse_corpus / "corpus_supervisions_dev.jsonl.gz")))
    assert [fields(u) for u in recs] == [fields(u) for u in named] == [fields(u) for u in jsonl]


def test_lhotse_cuts_give_the_jsonl_shards(lhotse_corpus, lhotse_reference, tok_dir, tmp_path):
    expected = shards(lhotse_reference)
    assert expected and encode(lhotse_corpus / "cuts.jsonl.gz", tok_dir, tmp_path) == expected
    assert (tmp_path / "errors.jsonl").read_text() == ""


def test_lhotse_shar_gives_the_jsonl_samples(lhotse_corpus, lhotse_reference, tok_dir, tmp_path):
    """Whole-recording mono cuts exported to Shar (audio in tars) read like the files they came from."""
    cuts = lhotse.load_manifest(lhotse_corpus / "cuts.jsonl.gz")
    whole = cuts.filter(lambda c: c.start == 0 and c.channel == 0)
    (tmp_path / "shar").mkdir()
    whole.to_shar(tmp_path / "shar", fields={"recording": "wav"}, shard_size=1)
    assert len(whole.to_eager()) == 2 and len(list((tmp_path / "shar").glob("recording.*.tar"))) == 2
    encode(tmp_path / "shar", tok_dir, tmp_path / "out")
    got, expected = samples(tmp_path / "out"), samples(lhotse_reference)
    assert got == {k: expected[k] for k in got} and len(got) == 2


@pytest.fixture(scope="module")
def hf_corpus(speech_corpus, tmp_path_factory):
    """The first N utterances as a `datasets` Dataset with differently named columns: saved with
    save_to_disk (audio bytes embedded), as parquet with paths, as parquet with embedded bytes."""
    from datasets import Audio, Dataset
    from datasets.table import embed_table_storage

    root = tmp_path_factory.mktemp("hf")
    rows = [json.loads(x) for x in speech_corpus.read_text().splitlines()][:N]
    ds = Dataset.from_dict({"utt": [r["id"] for r in rows], "transcription": [r["text"] for r in rows],
                            "spk": [r["speaker"] for r in rows],
                            "audio": [str(speech_corpus.parent / r["path"]) for r in rows]})
    ds = ds.cast_column("audio", Audio())
    ds.save_to_disk(root / "saved")
    ds.to_parquet(root / "paths.parquet")
    ds.with_format("arrow").map(embed_table_storage, batched=True).to_parquet(root / "bytes.parquet")
    lines = [{"id": r["id"], "path": str(speech_corpus.parent / r["path"]), "text": r["text"],
              "speaker": r["speaker"]} for r in rows]
    (root / "same.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


COLUMNS = ("--id-column", "utt", "--speaker-column", "spk")  # transcription is a default text column


def test_hf_dataset_rows_hold_bytes_or_paths(hf_corpus):
    from speechtok.audio import read_utterance

    src = dict(id_column="utt", speaker_column="spk")
    jsonl = load_corpus(hf_corpus / "same.jsonl")
    for name in ("saved", "paths.parquet", "bytes.parquet"):
        utts = load_corpus(CorpusSource(str(hf_corpus / name), **src))
        assert [(u.id, u.labels()) for u in utts] == [(u.id, u.labels()) for u in jsonl], name
        for u, ref in zip(utts, jsonl):
            np.testing.assert_array_equal(read_utterance(u)[0], read_utterance(ref)[0])
    saved = datasets.load_from_disk(hf_corpus / "saved")
    assert saved.data.column("audio").chunk(0).field("bytes").is_valid().to_pylist() == [True] * N


def test_align_output_of_a_dataset_reads_the_same_audio(hf_corpus, tmp_path):
    """`tok align` / `tok segment` write a speechtok JSONL; for audio inside a container the line keeps
    `member`, so the output reads the same samples."""
    from speechtok.align.pipeline import manifest_row
    from speechtok.audio import read_utterance

    utts = load_corpus(CorpusSource(str(hf_corpus / "bytes.parquet"), id_column="utt"))
    rows = [manifest_row(u, tmp_path) for u in utts]
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    back = load_corpus(tmp_path / "out.jsonl")
    assert [r["member"] for r in rows] == [f"audio/{i}" for i in range(N)]
    for u, b in zip(utts, back):
        np.testing.assert_array_equal(read_utterance(b)[0], read_utterance(u)[0])


def test_hf_dataset_gives_the_jsonl_shards_and_resumes(hf_corpus, tok_dir, tmp_path):
    out = tmp_path / "saved"
    assert encode(hf_corpus / "saved", tok_dir, out, *COLUMNS) == encode(hf_corpus / "same.jsonl", tok_dir,
                                                                         tmp_path / "jsonl")
    again = run("encode", hf_corpus / "saved", "-t", tok_dir, "-o", out, *COLUMNS, "--num-workers", 0,
                "--batch-seconds", 8)  # the same batch plan: another one is refused (token settings)
    assert again.exit_code == 0 and f"{N} utterances ({N} from a previous run)" in again.output
    # other labels (no speaker column) make another corpus for the job in `out`: refused, exit 2
    other = run("encode", hf_corpus / "saved", "-t", tok_dir, "-o", out, "-q", "--id-column", "utt",
                "--batch-seconds", 8)
    assert other.exit_code == 2 and "error: " in other.output and "changed" in other.output


def test_corpus_options_fail_in_one_line(hf_corpus, lhotse_corpus, tok_dir, tmp_path):
    r = run("encode", hf_corpus / "saved", "-t", tok_dir, "-o", tmp_path / "x", "-q", "--id-column", "nope")
    assert (r.exit_code == 2 and "--id-column 'nope' is not a column" in r.output
            and "Traceback" not in r.output)
    r = run("encode", lhotse_corpus / "corpus_supervisions_dev.jsonl.gz", "-t", tok_dir, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "SupervisionSet has no audio" in r.output


def test_bad_lhotse_audio_is_one_error_line(lhotse_corpus, tok_dir, tmp_path):
    import shutil

    cuts = list(lhotse.load_manifest(lhotse_corpus / "cuts.jsonl.gz"))
    moved = tmp_path / "moved.wav"
    shutil.copy(cuts[0].recording.sources[0].source, moved)
    gone = lhotse.fastcopy(cuts[0], recording=lhotse.Recording.from_file(moved, recording_id="gone"))
    moved.unlink()
    lhotse.CutSet.from_cuts([gone] + cuts[1:]).to_file(tmp_path / "cuts.jsonl.gz")
    r = run("encode", tmp_path / "cuts.jsonl.gz", "-t", tok_dir, "-o", tmp_path / "out", "-q",
            "--num-workers", 0)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"error: {moved}: file not found" in r.output
    assert len(samples(tmp_path / "out")) == N - 1


def test_100k_cut_manifest_starts_without_reading_audio_headers(lhotse_corpus, monkeypatch, tmp_path):
    """A lhotse manifest of 100k cuts is planned from its durations: not one audio header is read."""
    import gzip

    import speechtok.audio
    from speechtok.pipelines.batching import plan_batches, probe_durations

    cut = lhotse.load_manifest(lhotse_corpus / "cuts.jsonl.gz")[0]
    one = lhotse.fastcopy(cut.truncate(duration=1.0), supervisions=[]).to_dict()  # lhotse's own serialization
    with gzip.open(tmp_path / "big.jsonl.gz", "wt", compresslevel=1) as f:
        f.writelines(json.dumps({**one, "id": f"c{i:06d}", "start": (i % 4) * 0.125}) + "\n"
                     for i in range(100_000))
    opened = []
    real_open = speechtok.audio._sound_file
    monkeypatch.setattr(speechtok.audio, "_sound_file", lambda *a: opened.append(a) or real_open(*a))
    utts = load_corpus(tmp_path / "big.jsonl.gz")
    items = probe_durations(utts, [])
    plan = plan_batches(items, 600.0, 128)
    assert len(items) == 100_000 and sum(map(len, plan)) == 100_000
    assert opened == []
    assert os.path.isabs(utts[0].path)
