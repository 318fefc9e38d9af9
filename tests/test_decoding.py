"""The decoding core (lm/decoding.py) on both stages: compiled whole with no graph break and no recompile
over 100 steps (nor for other lengths in the same buckets), no host synchronisation inside the loop,
compiled equal to eager token for token (greedy and sampled), the LM stage equal to Hugging Face `generate`
(greedy), rows of a batch equal to rows alone."""

import numpy as np
import pytest
import torch

from speechtok.lm.acoustic import AcousticConfig, AcousticModel, acoustic_model
from speechtok.lm.decoding import Sampler
from speechtok.lm.generate import SamplingOptions, generate_units, unit_decoder
from speechtok.lm.vocab import SpeechVocab

STEPS = 100


class Tok:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0


VOCAB = SpeechVocab(semantic_stream="semantic", k=100, semantic_first_id=20, text_id=3, speech_id=4)
PROMPTS = [[1, 4, 25, 26], [1, 4, 30, 31, 32, 33, 34, 35, 36]]


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_acoustic():
    torch.manual_seed(0)
    cfg = AcousticConfig(k=6, n_q=3, codebook_size=8, dim=32, layers=1, heads=4, max_len=256)
    return AcousticModel(cfg).eval()


def acoustic_decoder(model, sampler, longest: int = 12, steps: int = STEPS):
    rng = np.random.default_rng(0)
    units = [rng.integers(0, 6, n) for n in (5, longest)]
    return model.decoder(units, [steps - 2, 40], [rng.integers(0, 8, (3, 4)), None], sampler, [3, 4])


def lm_decoder(model, temperature, prompts=PROMPTS, steps: int = STEPS):
    opts = SamplingOptions(max_new_tokens=steps, temperature=temperature, top_k=20, top_p=0.9, seed=5)
    return unit_decoder(model, Tok(), VOCAB, prompts, opts)


def compiled_equals_eager(make, other, monkeypatch):
    """Tokens of `make()` decoded eagerly and compiled (AOT autograd, every op traced); the compiled run
    warms up on its first step, then any recompile raises, also for `other()`: other prompt and output
    lengths in the same buckets. Graph breaks are counted."""
    from torch._dynamo.utils import counters

    with torch.no_grad():
        eager = make().run(False)
        torch._dynamo.reset()
        counters.clear()
        decoder = make()
        step = decoder.compiled_step("aot_eager")
        step()
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        for _ in range(decoder.steps - 1):
            step()
        next_one = other()
        for _ in range(3):
            next_one.compiled_step("aot_eager")()
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", False)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.equal(decoder.out[:, : decoder.steps].cpu(), eager)


def test_acoustic_step_compiles_whole_and_equals_eager(tiny_acoustic, monkeypatch):
    sampler = Sampler(1.0, top_k=4, top_p=0.95)  # every op of the sampler (greedy is its first, argmax)
    other = lambda: acoustic_decoder(tiny_acoustic, sampler, longest=9, steps=STEPS - 7)  # noqa: E731
    compiled_equals_eager(lambda: acoustic_decoder(tiny_acoustic, sampler), other, monkeypatch)


def test_lm_step_compiles_whole_and_equals_eager(tiny_lm, monkeypatch):
    other = lambda: lm_decoder(tiny_lm, 1.0, [[1, 4, 25], [1, 4, 30, 31, 32]], STEPS - 5)  # noqa: E731
    compiled_equals_eager(lambda: lm_decoder(tiny_lm, 1.0), other, monkeypatch)


class HostSync(AssertionError):
    pass


def test_decoding_steps_never_sync_with_the_host(tiny_lm, tiny_acoustic, monkeypatch):
    """100 eager steps of either stage, and the valle pattern's NAR passes, with every Tensor → host
    conversion raising."""
    decoders = [lm_decoder(tiny_lm, 1.0), acoustic_decoder(tiny_acoustic, Sampler(1.0, top_k=4))]
    torch.manual_seed(0)
    valle = acoustic_model(AcousticConfig(k=6, n_q=3, codebook_size=8, pattern="valle", dim=32, layers=1,
                                          heads=4, max_len=256)).eval()
    nar = acoustic_decoder(valle, Sampler(1.0, top_k=4))  # its AR stage is an acoustic decoder as above

    def refuse(*args, **kwargs):
        raise HostSync("host synchronisation inside the decoding loop")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with torch.no_grad():
        for decoder in decoders:
            for _ in range(decoder.steps):
                decoder.step()
        valle.nar.fill(nar.units, nar.codes.clone(), nar.prompt, nar.lengths, nar.sampler, nar.ar.seeds)
    monkeypatch.undo()
    with pytest.raises(HostSync):  # the patch does catch a sync
        monkeypatch.setattr(torch.Tensor, "item", refuse)
        torch.ones(()).item()


def test_lm_stage_equals_transformers_generate_greedy(tiny_lm):
    """Greedy units equal Hugging Face `generate` with the same tokens allowed (its own KV cache and
    masks), prompts of different lengths in one left-padded batch."""
    class OnlyUnits:
        def __call__(self, input_ids, scores):
            allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
            allowed[VOCAB.semantic_first_id: VOCAB.semantic_first_id + VOCAB.k] = True
            allowed[Tok.eos_token_id] = True
            return scores.masked_fill(~allowed, float("-inf"))

    ours = generate_units(tiny_lm, Tok(), VOCAB, PROMPTS, SamplingOptions(max_new_tokens=30, temperature=0))
    for p, o in zip(PROMPTS, ours):
        ref = tiny_lm.generate(input_ids=torch.tensor([p]), max_new_tokens=30, do_sample=False,
                               logits_processor=[OnlyUnits()], eos_token_id=Tok.eos_token_id, pad_token_id=0)
        ref = ref[0, len(p):].numpy()
        ref = ref[: np.flatnonzero(ref == Tok.eos_token_id)[0]] if (ref == Tok.eos_token_id).any() else ref
        np.testing.assert_array_equal(o, VOCAB.ids_to_units(ref))


def test_sampled_rows_of_a_batch_equal_rows_alone(tiny_lm, tiny_acoustic):
    """Prompts of different lengths in one batch, each with its seed: each row samples what it samples
    alone (the noise is a function of the row's seed, never of its place in the batch)."""
    opts = SamplingOptions(max_new_tokens=40, temperature=1.0, top_k=30, seed=0)
    seeds = [11, 12]
    together = generate_units(tiny_lm, Tok(), VOCAB, PROMPTS, opts, seeds=seeds)
    for p, s, t in zip(PROMPTS, seeds, together):
        np.testing.assert_array_equal(generate_units(tiny_lm, Tok(), VOCAB, [p], opts, seeds=[s])[0], t)
    assert not np.array_equal(generate_units(tiny_lm, Tok(), VOCAB, PROMPTS[:1], opts, seeds=[13])[0],
                              together[0])

    rng = np.random.default_rng(1)
    units = [rng.integers(0, 6, n) for n in (3, 9, 6)]
    frames, prompts = [12, 5, 9], [None, rng.integers(0, 8, (3, 2)), None]
    both = tiny_acoustic.generate_batch(units, frames, prompts, temperature=1.0, top_k=5, seeds=[1, 2, 3])
    for u, n, p, s, t in zip(units, frames, prompts, [1, 2, 3], both):
        np.testing.assert_array_equal(tiny_acoustic.generate_batch([u], [n], [p], 1.0, 5, seeds=[s])[0], t)


@pytest.mark.parametrize("kind,n_q", [("encodec", 2), ("mimi", 4)])
def test_streamed_decode_equals_one_shot(tiny_codec, kind, n_q):
    """Codes decoded in chunks of 7 frames, each with the default context before it, give the one-shot
    waveform within 1e-5 of its RMS, sample by sample (float rounding measures ~2e-7 here on both codecs);
    without context the chunk edges differ by percents, so the context is what carries the state."""
    from speechtok.tokenizers.codec import Codec
    from speechtok.tokenizers.codec_stream import CodecStream

    codec = Codec(kind, tiny_codec(kind), n_q=n_q)
    codes = np.random.default_rng(0).integers(0, codec.codebook_size, (n_q, 80))
    ref = codec.decode(torch.from_numpy(codes)[None])[0][0].numpy()
    rms = np.sqrt((ref ** 2).mean())

    def streamed(context: int, skip: int = 0) -> np.ndarray:
        stream = CodecStream(codec, context, skip_frames=skip)
        return np.concatenate([stream.push(codes[:, i: i + 7]) for i in range(0, 80, 7)])

    out = streamed(150)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-5 * rms
    assert np.abs(streamed(0) - ref).max() > 1e-2 * rms
    tail = streamed(150, skip=10)  # the first frames as context only (a voice prompt)
    np.testing.assert_allclose(tail, ref[10 * codec.hop:], atol=1e-5 * rms, rtol=0)


def test_streaming_refuses_a_non_causal_codec(tiny_codec):
    from speechtok.tokenizers.codec import Codec
    from speechtok.tokenizers.codec_stream import CodecStream

    with pytest.raises(ValueError, match="streaming needs a causal codec"):
        CodecStream(Codec("dac", tiny_codec("dac")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_never_sync_and_equal_eager(tiny_lm, tiny_acoustic):
    """On a GPU, compiled with CUDA graphs (reduce-overhead): after 3 warm-up steps, the remaining steps of
    either stage run with CUDA's sync debug mode set to raise, and greedy tokens equal eager's."""
    import copy

    lm, acoustic = copy.deepcopy(tiny_lm).cuda(), copy.deepcopy(tiny_acoustic).cuda()
    for make in (lambda: lm_decoder(lm, 0.0), lambda: acoustic_decoder(acoustic, Sampler(0.0))):
        with torch.no_grad():
            eager = make().run(False)
            decoder = make()
            step = decoder.compiled_step()
            for _ in range(3):
                step()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(decoder.steps - 3):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(decoder.out[:, : decoder.steps].cpu(), eager)
