"""Reports: `report.json` for machines, `report.md` with PNG plots for people."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        text = f"{v:,.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.000"
    return str(v)


def table(rows: list[dict], columns: list[str], digits: int = 3) -> str:
    """A Markdown table of `rows` restricted to `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(out: Path, title: str, results: dict, sections: list[str]) -> Path:
    """`out/report.json` (the results) and `out/report.md` (title, then the Markdown sections)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False)
                                     + "\n")
    md = out / "report.md"
    md.write_text(f"# {title}\n\n" + "\n".join(sections))
    return md


def plot_usage(counts: np.ndarray, path: Path, title: str) -> None:
    """Per codebook, code counts sorted from the most to the least used (log scale): a flat curve is an
    evenly used codebook, a steep one a few codes doing all the work."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for q, c in enumerate(counts):
        ax.plot(np.arange(1, len(c) + 1), np.maximum(np.sort(c)[::-1], 0.5),
                label=f"codebook {q}" if len(counts) > 1 else None)
    ax.set(yscale="log", xlabel="code rank", ylabel="frames", title=title)
    if len(counts) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_phone_unit(joint: np.ndarray, phones: list[str], path: Path, title: str) -> None:
    """p(phone | unit), units ordered by their most likely phone: a clean diagonal is a phonetic code."""
    plt = _plt()
    p = joint / np.maximum(joint.sum(0, keepdims=True), 1)
    order = np.lexsort((-p.max(0), p.argmax(0)))
    fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(phones))))
    im = ax.imshow(p[:, order], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(phones)), phones, fontsize=6)
    ax.set(xlabel="unit (sorted by most likely phone)", ylabel="phone", title=title)
    fig.colorbar(im, ax=ax, label="p(phone | unit)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_spectrograms(ref: np.ndarray, hyp: np.ndarray, sr: int, path: Path, title: str) -> None:
    """Log-magnitude spectrograms (dB) of the reference above the resynthesis, on one colour scale: 90 dB
    below the reference's peak, the power floored before log10 so digital silence plots as the floor."""
    from matplotlib import mlab

    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(8.6, 4.5), sharex=True)
    n_fft = 1 << int(round(math.log2(sr * 0.032)))
    top = im = None
    for ax, x, name in zip(axes, (ref, hyp), ("reference", "resynthesis")):
        x = np.pad(np.asarray(x, dtype=np.float64), (0, max(0, 2 * n_fft - len(x))))  # a few frames at least
        power, freqs, t = mlab.specgram(x, NFFT=n_fft, Fs=sr, noverlap=n_fft * 3 // 4)
        db = 10 * np.log10(np.maximum(power, 1e-20))
        top = float(db.max()) if top is None else top
        half = (t[1] - t[0]) / 2 if len(t) > 1 else n_fft / sr / 2
        im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 90, vmax=top,
                       extent=(t[0] - half, t[-1] + half, freqs[0], freqs[-1]))
        ax.set(ylabel="frequency (Hz)", title=f"{title}: {name}")
    axes[-1].set(xlabel="time (s)", xlim=(0, max(len(ref), len(hyp), 1) / sr))
    fig.colorbar(im, ax=list(axes), label="power (dB)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(metrics: Path, path: Path, title: str) -> bool:
    """Training (and eval) loss against step from a run's metrics.jsonl; False when there is nothing to
    plot."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    keys = [k for k in ("loss", "eval_loss") if any(r.get(k) is not None for r in rows)]
    if not keys:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        ax.plot(*zip(*pts), label=k, marker="o" if k == "eval_loss" else None, markersize=3)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_bitrate_quality(rows: list[dict], metrics: list[tuple[str, str]], path: Path, title: str) -> bool:
    """One panel per (column, label) in `metrics`: the rows' value against their nominal bitrate (kbps,
    log scale), the rows of one model (an nq sweep) joined by a line; rows without a bitrate (a mel vocoder)
    are left out; False when nothing is plotted."""
    rows = [r for r in rows if r.get("nominal_bps") is not None]
    metrics = [(c, label) for c, label in metrics if any(r.get(c) is not None for r in rows)]
    if not rows or not metrics:
        return False
    from matplotlib import ticker

    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6), squeeze=False)
    models: dict[str, list[dict]] = {}
    for r in rows:
        models.setdefault(r["model_label"], []).append(r)
    for ax, (column, label) in zip(axes[0], metrics):
        for name, group in models.items():
            pts = sorted((r["nominal_bps"] / 1000, r[column]) for r in group if r.get(column) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(xscale="log", xlabel="nominal bitrate (kbps)", ylabel=label)
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.yaxis.get_major_formatter().set_useOffset(False)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
