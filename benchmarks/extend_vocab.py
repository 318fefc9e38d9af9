"""`tok lm extend-vocab` on a Llama-3-sized vocabulary: a synthetic 128k-entry fast tokenizer (WordLevel)
and a tiny Llama, extended with 500 semantic units and 8 x 1024 codec tokens through `extend_vocab`
(tokens, embedding resize included). Baseline in the same run: the old path's duplicate check, which copied
the whole vocabulary (`get_vocab()`) once per added token, timed on a subset and scaled linearly.

    python benchmarks/extend_vocab.py [--no-write]"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.lm.vocab import codec_token, extend_vocab  # noqa: E402

BASE, K, N_Q, CODEBOOK = 128_000, 500, 8, 1024


def base_model():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(BASE)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", bos_token="w1", eos_token="w2")
    cfg = LlamaConfig(vocab_size=BASE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline-tokens", type=int, default=100, help="Tokens the old path is timed on.")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    codec = {"type": "codec", "n_q": N_Q, "codebook_size": CODEBOOK, "frame_rate": 75.0}
    manifest = {"tokenizers": {"units": {"type": "semantic", "k": K, "frame_rate": 50.0}, "codec": codec}}
    model, tok = base_model()
    added = K + N_Q * CODEBOOK + 2
    t0 = time.perf_counter()
    vocab = extend_vocab(model, tok, manifest, codec="codec")
    ours = time.perf_counter() - t0
    assert len(tok) == BASE + added and vocab.codec_first_id == vocab.semantic_first_id + K
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        tok.save_pretrained(d)
        reloaded = AutoTokenizer.from_pretrained(d)
        io = time.perf_counter() - t0
    assert len(reloaded) == len(tok)

    _, fresh = base_model()
    probe = [codec_token(9, i) for i in range(args.baseline_tokens)]
    t0 = time.perf_counter()
    [t for t in probe if t in fresh.get_vocab()]  # the old check: one vocabulary copy per token
    per_token = (time.perf_counter() - t0) / len(probe)
    old = per_token * added
    body = (f"## Vocabulary extension (issue #14)\n\nHardware: {hardware(torch.device('cpu'))}, 1 thread. "
            f"Synthetic {BASE:,}-entry fast tokenizer + tiny Llama (hidden 32); {K} units + "
            f"{N_Q} x {CODEBOOK} codec tokens + 2 markers = {added:,} tokens.\n\n"
            "| path | seconds |\n|---|---|\n"
            f"| old: duplicate check copies the vocabulary per token ({per_token * 1e3:.0f} ms each, "
            f"timed on {len(probe)} tokens, scaled to {added:,}) | {old:.0f} |\n"
            f"| `extend_vocab` now (one vocabulary read, one `add_tokens` call, embedding resize) "
            f"| {ours:.2f} |\n"
            f"| then saving and reloading the extended tokenizer | {io:.2f} |\n\n"
            f"Speed-up: **{old / ours:.0f}×**; target < 10 s on CPU: **{'met' if ours < 10 else 'missed'}**.")
    print(body)
    if not args.no_write:
        write_section("extend-vocab-cpu", body)


if __name__ == "__main__":
    main()
