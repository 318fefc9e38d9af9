import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from speech import build_corpus  # noqa: E402


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory) -> Path:
    """JSONL manifest of 8 synthetic sentences by 4 speakers, with text, word timings and speaker."""
    return build_corpus(tmp_path_factory.mktemp("speech"))


def tiny_ssl_config(kind: str):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    common = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    if kind == "hubert":  # base-style: GroupNorm after the first conv, post-LN transformer
        return HubertConfig(feat_extract_norm="group", do_stable_layer_norm=False, **common)
    if kind == "wav2vec2-large":  # large-style: LayerNorm convs, pre-LN transformer
        return Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True, **common)
    if kind == "wavlm":
        return WavLMConfig(feat_extract_norm="group", num_buckets=32, max_bucket_distance=80, **common)
    if kind == "hubert-large":
        return HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **common)
    if kind == "wavlm-large":
        return WavLMConfig(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=32,
                           max_bucket_distance=80, **common)
    raise ValueError(kind)


@pytest.fixture(scope="session")
def tiny_ssl(tmp_path_factory):
    """Factory: a tiny random-init SSL model of the given kind, saved with save_pretrained; returns its
    dir."""
    cache = {}

    def make(kind: str = "hubert") -> str:
        if kind not in cache:
            from transformers import AutoModel

            torch.manual_seed(0)
            model = AutoModel.from_config(tiny_ssl_config(kind))
            path = tmp_path_factory.mktemp(kind.replace("-", "_"))
            model.save_pretrained(path)
            cache[kind] = str(path)
        return cache[kind]

    return make


def tiny_codec_config(kind: str):
    from transformers import DacConfig, EncodecConfig, MimiConfig

    if kind == "encodec":  # 24 kHz, hop 64 → 375 Hz; 1024 codes = 10 bits → 3.75 kbps per codebook
        return EncodecConfig(sampling_rate=24000, num_filters=4, upsampling_ratios=[4, 4, 4],
                             codebook_size=1024,
                             codebook_dim=16, hidden_size=16, target_bandwidths=[3.75, 7.5],
                             num_lstm_layers=1)
    if kind == "dac":  # 16 kHz, hop 32
        return DacConfig(sampling_rate=16000, encoder_hidden_size=8, downsampling_ratios=[2, 4, 4],
                         upsampling_ratios=[4, 4, 2], decoder_hidden_size=32, n_codebooks=4, codebook_size=64,
                         codebook_dim=4, hidden_size=64)
    if kind == "mimi":  # 16 kHz, hop 64 then ×2 → 125 Hz
        return MimiConfig(sampling_rate=16000, frame_rate=125.0, hidden_size=32, num_filters=4,
                          upsampling_ratios=[4, 4, 4], num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=16, intermediate_size=64, codebook_size=64,
                          codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=4,
                          num_semantic_quantizers=1, sliding_window=50, upsample_groups=32)
    raise ValueError(kind)


@pytest.fixture(scope="session")
def tiny_codec(tmp_path_factory):
    """Factory: a tiny random-init codec (encodec, dac, mimi) saved with save_pretrained; returns its dir."""
    cache = {}

    def make(kind: str) -> str:
        if kind not in cache:
            from transformers import AutoModel

            torch.manual_seed(0)
            model = AutoModel.from_config(tiny_codec_config(kind))
            path = tmp_path_factory.mktemp(f"codec_{kind}")
            model.save_pretrained(path)
            cache[kind] = str(path)
        return cache[kind]

    return make


def speech_at(corpus: Path, sample_rate: int) -> list[torch.Tensor]:
    """The synthetic corpus' sentences as float tensors at `sample_rate`."""
    import json

    from speechtok.audio import read_audio, resample

    out = []
    for line in corpus.read_text().splitlines():
        wav, sr = read_audio(str(corpus.parent / json.loads(line)["path"]))
        out.append(torch.from_numpy(resample(wav, sr, sample_rate)))
    return out


def fill_codebooks(model, kind: str, wavs: list[torch.Tensor], seed: int = 0) -> None:
    """Every RVQ level's codebook drawn from the model's own latents of `wavs` (the residuals that the
    levels before it leave), so that speech gets many distinct codes instead of the random-init all-0."""
    g = torch.Generator().manual_seed(seed)

    def pick(r: torch.Tensor, size: int) -> torch.Tensor:
        """[1, D, N] → [size, D] frames far apart (farthest-point sampling), so that a frame's nearest
        codebook vector wins by a margin far above float rounding, whatever the batch."""
        frames = r[0].T
        chosen = [int(torch.randint(len(frames), (1,), generator=g))]
        dist = (frames - frames[chosen[0]]).pow(2).sum(1)
        for _ in range(size - 1):
            chosen.append(int(dist.argmax()))
            dist = torch.minimum(dist, (frames - frames[chosen[-1]]).pow(2).sum(1))
        return frames[chosen]

    with torch.no_grad():
        if kind == "encodec":
            # The latents are centred (last conv's bias) so that distances do not cancel in float32. The LSTM
            # is kept: its batched GEMMs round differently from a batch of one, as a real model's do.
            latents = torch.cat([model.encoder(w[None, None]) for w in wavs], -1)
            model.encoder.layers[-1].conv.bias -= latents.mean((0, 2))
            r = torch.cat([model.encoder(w[None, None]) for w in wavs], -1)
            for layer in model.quantizer.layers:
                layer.codebook.embed.copy_(pick(r, layer.codebook.codebook_size))
                layer.codebook.embed_avg.copy_(layer.codebook.embed)
                r = r - layer.decode(layer.encode(r))
        elif kind == "mimi":
            latents = torch.cat([model.encoder(w[None, None]).latents for w in wavs], -1)
            q = model.quantizer
            for rvq in (q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer):
                r = latents if rvq.input_proj is None else rvq.input_proj(latents)
                for layer in rvq.layers:
                    layer.codebook.embed_sum.copy_(pick(r, layer.codebook.codebook_size))
                    layer.codebook.cluster_usage.fill_(1.0)
                    layer.codebook._embed = None
                    r = r - layer.decode(layer.encode(r))
        elif kind == "dac":
            r = torch.cat([model.encoder(w[None, None]) for w in wavs], -1)
            for vq in model.quantizer.quantizers:
                projected = vq.in_proj(r)
                vq.codebook.weight.copy_(pick(projected, vq.codebook.num_embeddings))
                r = r - vq.out_proj(vq.decode_latents(projected)[0])
        else:
            raise ValueError(kind)


@pytest.fixture(scope="session")
def diverse_codec(tiny_codec, speech_corpus, tmp_path_factory):
    """Factory: the tiny codec of `kind` with codebooks filled from its latents of two synthetic sentences
    (`fill_codebooks`), saved with save_pretrained; returns its dir."""
    cache = {}

    def make(kind: str) -> str:
        if kind not in cache:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(tiny_codec(kind)).eval()
            fill_codebooks(model, kind, speech_at(speech_corpus, model.config.sampling_rate)[:2])
            path = tmp_path_factory.mktemp(f"diverse_{kind}")
            model.save_pretrained(path)
            cache[kind] = str(path)
        return cache[kind]

    return make


@pytest.fixture(scope="session")
def base_llm(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer trained on the test sentences, saved like a hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from speech import SENTENCES, TEXT_LINES

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([s for _, s in SENTENCES] + TEXT_LINES, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("base") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def units_and_codec_shards(speech_corpus, tmp_path_factory):
    """`shards/` of the synthetic corpus with MFCC units (`km/`: k=12, 100 Hz) and a tiny 75 Hz EnCodec
    (`codec/`: 2 codebooks of 16) written in one pass."""
    from click.testing import CliRunner
    from transformers import AutoModel, EncodecConfig

    from speechtok.cli.main import cli

    root = tmp_path_factory.mktemp("units_codec")
    torch.manual_seed(0)
    cfg = EncodecConfig(sampling_rate=24000, num_filters=4, upsampling_ratios=[8, 5, 4, 2], codebook_size=16,
                        codebook_dim=16, hidden_size=16, target_bandwidths=[0.6], num_lstm_layers=1)
    AutoModel.from_config(cfg).save_pretrained(root / "codec")
    r = CliRunner().invoke(cli, ["train-kmeans", str(speech_corpus), "-m", "mfcc", "-k", "12", "-o",
                                 str(root / "km"), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["encode", str(speech_corpus), "-t", str(root / "km"), "-t",
                                 f"encodec:{root / 'codec'}:nq=2", "-o", str(root / "shards"), "-q"])
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="session")
def trained_lm(base_llm, units_and_codec_shards, tmp_path_factory):
    """The tiny Llama extended with the 12 MFCC units and overfitted (600 steps, dedup) on the corpus's
    units; returns its `final/` folder (the run folder beside it has metrics.jsonl)."""
    import yaml
    from click.testing import CliRunner

    from speech import linked_workdir
    from speechtok.cli.main import cli

    root = linked_workdir(units_and_codec_shards, tmp_path_factory.mktemp("trained_lm"))
    r = CliRunner().invoke(cli, ["lm", "extend-vocab", str(base_llm), "-m", str(root / "shards"), "-o",
                                 str(root / "lm_base")])
    assert r.exit_code == 0, r.output
    cfg = {"model": str(root / "lm_base"), "output": str(root / "lm"),
           "data": {"shards": [str(root / "shards")], "seq_len": 128, "shuffle_buffer": 1, "num_workers": 0,
                    "dedup": True},
           "train": {"batch_size": 8, "steps": 600, "lr": 5e-3, "warmup": 10, "min_lr_ratio": 0.05,
                     "log_every": 50, "save_every": 1000, "precision": "fp32"}}
    (root / "lm.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["lm", "train", str(root / "lm.yaml")])
    assert r.exit_code == 0, r.output
    return root / "lm" / "final"
