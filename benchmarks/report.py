"""Shared by the benchmarks: the hardware line, and writing one section of BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).parents[1] / "BENCHMARKS.md"


def hardware(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{os.cpu_count()} x {cpu}", f"torch {torch.__version__}"]
    if device.type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
    return ", ".join(parts)


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between `<!-- name -->` markers in BENCHMARKS.md."""
    text = (path.read_text() if path.exists()
            else "# Benchmarks\n\nWritten by the scripts in `benchmarks/`; each compares against a baseline "
                 "in the same run.\n")
    stamp = datetime.date.today().isoformat()
    block = f"<!-- {name} -->\n{body.rstrip()}\n\n_run {stamp}_\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = (pattern.sub(lambda _: block, text) if pattern.search(text)
            else text.rstrip() + "\n\n" + block + "\n")
    path.write_text(text)
