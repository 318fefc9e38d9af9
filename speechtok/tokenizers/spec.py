"""What `tok encode -t` accepts, parsed without torch (so a bad spec fails before the heavy imports): a
tokenizer directory `DIR[:name=NAME]` (semantic, pitch or style), a codec
`KIND:MODEL[:nq=N][:bandwidth=B][:name=NAME]`, or an F0 tracker `f0:TRACKER[:rate=HZ][:fmin=HZ][:fmax=HZ]
[:name=NAME][:stats=PATH]` (stats: per-speaker log-F0 statistics, the stream then normalised per speaker)."""

from __future__ import annotations

import re
from pathlib import Path

CARD_FILE = "tokenizer.json"  # a semantic tokenizer directory's card
KINDS = {"encodec": "EncodecModel", "dac": "DacModel", "mimi": "MimiModel"}
OPTION = re.compile(r"[A-Za-z_]\w*=")  # a `key=value` part of a spec
STREAM_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")  # a `name=` a stream (a shard field) can take
F0_TRACKERS = ("yaapt", "world", "pesto")
F0_OPTIONS = {"rate": float, "fmin": float, "fmax": float, "name": str, "stats": str}


def parse_codec_spec(spec: str) -> dict:
    """'encodec:facebook/encodec_24khz:nq=8' → {'kind', 'model', 'n_q'?, 'bandwidth'?, 'name'?}. MODEL may
    hold ':' (a local directory) but no ':key=' segment: from the first `key=value` part on, all parts are."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise ValueError(f"{spec!r}: expected KIND:MODEL[:nq=N][:name=NAME] with KIND one of "
                         f"{', '.join(KINDS)}")
    parts = rest.split(":")
    first = next((i for i, p in enumerate(parts) if i and OPTION.match(p)), len(parts))
    options = {}
    for part in parts[first:]:
        if not OPTION.match(part):
            raise ValueError(f"{spec!r}: {part!r} after the options is not key=value (nq, bandwidth, name)")
        key, _, value = part.partition("=")
        if key in options:
            raise ValueError(f"{spec!r}: {key}= given twice")
        options[key] = value
    out = {"kind": kind, "model": ":".join(parts[:first])}
    for key, value in options.items():
        try:
            if key == "nq":
                out["n_q"] = int(value)
            elif key == "bandwidth":
                out["bandwidth"] = float(value)
            elif key == "name":
                check_stream_name(spec, value)
                out["name"] = value
            else:
                raise ValueError(f"{spec!r}: unknown option {key!r} (nq, bandwidth, name)")
        except ValueError as e:
            raise ValueError(str(e) if key not in ("nq", "bandwidth") else
                             f"{spec!r}: {key}={value!r} is not a number") from None
    return out


def parse_f0_spec(spec: str) -> dict:
    """'f0:yaapt:rate=50' → {'tracker': 'yaapt', 'rate': 50.0, ...}: the tracker, then key=value options."""
    kind, tracker, *parts = spec.split(":")
    if kind != "f0" or tracker not in F0_TRACKERS:
        raise ValueError(f"{spec!r}: expected f0:TRACKER[:rate=HZ][:fmin=HZ][:fmax=HZ][:name=NAME]"
                         f"[:stats=PATH] with TRACKER one of {', '.join(F0_TRACKERS)}")
    out: dict = {"tracker": tracker}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in F0_OPTIONS:
            raise ValueError(f"{spec!r}: {part!r} is not one of {', '.join(k + '=' for k in F0_OPTIONS)}")
        if key in out:
            raise ValueError(f"{spec!r}: {key}= given twice")
        try:
            out[key] = F0_OPTIONS[key](value)
        except ValueError:
            raise ValueError(f"{spec!r}: {key}={value!r} is not a number") from None
        if F0_OPTIONS[key] is float and not 0 < out[key] < float("inf"):
            raise ValueError(f"{spec!r}: {key}={value!r} is not a number of hertz above 0")
    if "name" in out:
        check_stream_name(spec, out["name"])
    if out.get("stats") == "":
        raise ValueError(f"{spec!r}: stats= names no file or folder")
    return out


def check_stream_name(spec: str, name: str) -> None:
    """A ValueError naming `spec` unless `name=` is a usable shard field (as `DIR:name=NAME` accepts)."""
    if not STREAM_NAME.fullmatch(name):
        raise ValueError(f"{spec!r}: name={name!r} is not a stream name (letters, digits, _ . -, "
                         "starting with a letter or digit)")


def semantic_spec(spec: str) -> tuple[str | None, str]:
    """`DIR[:name=NAME]` → (DIR, NAME or "semantic") when DIR holds a tokenizer card, else (None, "")."""
    if Path(spec, CARD_FILE).exists():
        return spec, "semantic"
    m = re.fullmatch(rf"(.+):name=({STREAM_NAME.pattern})", spec)
    if m and Path(m[1], CARD_FILE).exists():
        return m[1], m[2]
    return None, ""


def check_spec(spec: str) -> None:
    """A ValueError naming `spec` unless it is a tokenizer directory or a well-formed codec or F0 spec."""
    if semantic_spec(spec)[0] is not None:
        return
    if spec.startswith("f0:"):
        parse_f0_spec(spec)
        return
    if spec.partition(":")[0] in KINDS:
        parse_codec_spec(spec)
        return
    raise ValueError(f"{spec}: neither a tokenizer directory (no {CARD_FILE}) nor a codec spec "
                     f"({'|'.join(KINDS)}:MODEL[:nq=N]) nor f0:TRACKER")


def split_vocoder(spec: str) -> tuple[str | None, str | None]:
    """What `tok eval codecs -t` accepts, as `tok resynth -t TOKENIZER --vocoder DIR` takes it: a codec spec,
    `SPEC:vocoder=DIR` (semantic tokenizer + unit HiFi-GAN, codec + codec-token Vocos) or `vocoder=DIR` alone
    (mel Vocos) → (tokenizer spec or None, vocoder or None); a ValueError naming `spec` when malformed.
    `vocoder=` comes last and takes the rest of the spec, ':' included (a run folder named by a time)."""
    if spec.startswith("vocoder="):
        tokenizer, vocoder = "", spec[len("vocoder="):]
    else:
        tokenizer, sep, vocoder = spec.partition(":vocoder=")
        vocoder = vocoder if sep else None
    if vocoder is not None and (not vocoder or re.search(r":(vocoder|nq|bandwidth|name)=", vocoder)):
        raise ValueError(f"{spec!r}: give one vocoder=DIR, last (it takes the rest of the spec, ':' too)")
    tokenizer = tokenizer or None
    if tokenizer is not None:
        check_spec(tokenizer)
        if vocoder is None and semantic_spec(tokenizer)[0] is not None:
            raise ValueError(f"{spec!r}: semantic units need a unit vocoder ({tokenizer}:vocoder=DIR)")
    return tokenizer, vocoder
