"""`tok lm inspect CONFIG`: what a `tok lm train` run would read, before spending GPU hours on it."""

from __future__ import annotations

import dataclasses
from itertools import islice

import numpy as np

from speechtok.lm.config import RunConfig
from speechtok.lm.data import PackedTokens
from speechtok.training.stream import Source, part_stream


def _builder(run: RunConfig):
    from transformers import AutoTokenizer

    from speechtok.lm.sequences import SequenceBuilder
    from speechtok.lm.vocab import SpeechVocab

    return SequenceBuilder(SpeechVocab.load(run.model), AutoTokenizer.from_pretrained(run.model),
                           run.data.dedup, run.data.span_words, run.data.speech)


def _item_id(src: Source):
    if src.name == "text":
        return lambda item: item[1]  # file:byte offset of the line
    return lambda kv: src.decode(kv)["id"]


def epoch_ids(data: PackedTokens, world: int, workers: int,
              epoch: int) -> dict[str, dict[tuple[int, int], list]]:
    """{source: {(rank, worker): ids in reading order}} for one epoch of each source: the very stream the
    trainer reads (global order, split, shuffle buffer)."""
    out = {}
    for name, src in data.sources.items():
        ids = dataclasses.replace(src, decode=_item_id(src))
        out[name] = {(r, w): list(part_stream(ids, data.seed, r, world, w, workers, data.cfg.shuffle_buffer,
                                              (epoch, 0), epochs=1))
                     for r in range(world) for w in range(workers)}
    return out


def inspect_run(run: RunConfig, world: int = 1, workers: int | None = None, epoch: int = 0, ids: bool = False,
                probe: int = 200) -> dict:
    """Per source: items per epoch, tokens (mean per item of each format, measured on the first `probe`
    items), share of the mix, and epochs over the run's `steps`; with `ids`, who reads what in `epoch`."""
    cfg, dcfg = run.train, run.data
    workers = workers or max(1, dcfg.num_workers)
    data = PackedTokens(dcfg, _builder(run), dcfg.shards, 0, world, cfg.seed, cfg.batch_size)
    run_tokens = cfg.steps * cfg.batch_size * cfg.grad_accum * dcfg.seq_len * world
    rng = np.random.default_rng(0)
    report = {"world_size": world, "workers": workers, "run_tokens": run_tokens, "sources": {}}
    for name, src in data.sources.items():
        items = src.items()
        sample = list(islice(part_stream(src, data.seed, 0, 1, buffer=1, epochs=1), probe))
        formats = {}
        for fmt, share in zip(data.formats, data.weights):
            if ("text" if fmt == "text" else "speech") != name:
                continue
            build = ((lambda x: data.builder.text(x)) if fmt == "text"
                     else (lambda x: data.builder.build(fmt, x, rng)))
            per_item = float(np.mean([len(build(x)) for x in sample])) if sample else 0.0
            formats[fmt] = {"share": float(share), "tokens_per_item": per_item,
                            "items_over_run": run_tokens * share / per_item if per_item else 0.0}
        used = sum(f["items_over_run"] for f in formats.values())
        report["sources"][name] = {
            "units": len(src.units), "items": items, "share": sum(f["share"] for f in formats.values()),
            "tokens_per_epoch": sum(f["tokens_per_item"] * f["share"] for f in formats.values())
            / max(1e-12, sum(f["share"] for f in formats.values())) * items,
            "epochs_over_run": used / items if items else float("inf"), "formats": formats}
    if ids:
        report["ids"] = {name: {f"{r}/{w}": v for (r, w), v in parts.items()}
                         for name, parts in epoch_ids(data, world, workers, epoch).items()}
        report["epoch"] = epoch
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['world_size']} rank(s) x {report['workers']} loader worker(s); "
             f"{report['run_tokens']:,} tokens over the run"]
    for name, s in report["sources"].items():
        lines.append(f"{name}: {s['items']:,} {'lines' if name == 'text' else 'samples'} in {s['units']} "
                     f"{'blocks' if name == 'text' else 'shards'}, ~{s['tokens_per_epoch']:,.0f} tokens per "
                     f"epoch, {s['share']:.1%} of the tokens, {s['epochs_over_run']:.2f} epochs over the run")
        for fmt, f in s["formats"].items():
            lines.append(f"  {fmt}: {f['share']:.1%} of the tokens, ~{f['tokens_per_item']:.0f} tokens per "
                         f"item")
    for name, parts in report.get("ids", {}).items():
        lines.append(f"{name}, epoch {report['epoch']}, ids per rank/worker:")
        for part, ids in parts.items():
            lines.append(f"  {part} ({len(ids)}): {' '.join(map(str, ids))}")
    return "\n".join(lines)
