"""Hugging Face `datasets` corpora as they are (the `datasets` extra): a `save_to_disk` folder, `.arrow`
files, or `.parquet` files (or a folder of them) with an `Audio` column, embedded bytes or paths.

Only the label columns are read up front (id, text, speaker, language); each row's audio stays in its file
and is read when the row is decoded (`audio_members`: arrow files are memory-mapped, parquet files read by
row group), so a large dataset streams instead of being loaded. Rows whose `bytes` are empty read the
file named by `path` (relative to the dataset's folder). Columns: `--id-column` (default 'id', else the row
number), `--text-column` (default the first of text / transcription / sentence), `--speaker-column`
(default the first of speaker_id / speaker / client_id), and 'language' when there is one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from speechtok.corpus import CorpusError, CorpusSource, Utterance, corpus_library

TEXT_COLUMNS = ("text", "transcription", "sentence")
SPEAKER_COLUMNS = ("speaker_id", "speaker", "client_id")
DATA_SUFFIXES = (".arrow", ".parquet")


def data_files(path: Path) -> list[Path]:
    """The arrow / parquet files of a dataset path: the file itself, a `save_to_disk` folder's shards, or the
    arrow / parquet files directly in a folder; [] when the path is none of these."""
    if path.is_file():
        return [path] if path.suffix in DATA_SUFFIXES else []
    if not path.is_dir():
        return []
    state = path / "state.json"
    if state.is_file():
        try:
            return [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{state}: not a readable `datasets` state file") from None
    return sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES and p.is_file())


def is_hf_dataset(path: Path) -> bool:
    """A `datasets` folder (save_to_disk: a Dataset or a DatasetDict) or arrow / parquet file(s)."""
    return (path / "dataset_dict.json").is_file() or bool(data_files(path))


def read_dataset(source: CorpusSource, errors: list[CorpusError]) -> Iterator[Utterance]:
    """Utterances of a Hugging Face dataset, one per row, in row order (see the module docstring)."""
    path = Path(source.path)
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(f"{path}: a DatasetDict with splits {', '.join(splits)}; give one split's folder, "
                         f"e.g. {path / splits[0]}" if splits else f"{path}: an empty DatasetDict")
    files = data_files(path)
    first_row = 0
    for f in files:
        features, labels = _labels(f)
        columns = _columns(source, features, f)
        n = len(next(iter(labels.values()))) if labels else _num_rows(f)
        for row in range(n):
            yield _utterance(f, row, first_row + row, columns, labels)
        first_row += n


def _labels(file: Path) -> tuple[dict, dict[str, list]]:
    """(the file's `datasets` Features, every non-audio column's values); audio bytes are not read."""
    datasets = corpus_library("datasets", "Hugging Face datasets")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(file)
        features = datasets.Features.from_arrow_schema(pf.schema_arrow)
        keep = [c for c, f in features.items() if not isinstance(f, datasets.Audio)]
        return features, pf.read(columns=keep).to_pydict() if keep else {}
    from speechtok.audio_members import _arrow_table

    table = _arrow_table(str(file))
    features = datasets.Features.from_arrow_schema(table.schema)
    keep = [c for c, f in features.items() if not isinstance(f, datasets.Audio)]
    return features, table.select(keep).to_pydict()


def _num_rows(file: Path) -> int:
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    from speechtok.audio_members import _arrow_table

    return _arrow_table(str(file)).num_rows


def _columns(source: CorpusSource, features: dict, file: Path) -> dict[str, str | None]:
    """Which column holds the audio, id, text, speaker and language; a ValueError names a missing one."""
    datasets = corpus_library("datasets", "Hugging Face datasets")
    audio = next((c for c, f in features.items() if isinstance(f, datasets.Audio)), None)
    if audio is None:
        raise ValueError(f"{file}: no Audio column (columns: {', '.join(features)})")

    def pick(given: str | None, option: str, defaults: tuple[str, ...]) -> str | None:
        if given is not None:
            if given not in features:
                raise ValueError(f"{file}: {option} {given!r} is not a column ({', '.join(features)})")
            return given
        return next((c for c in defaults if c in features), None)

    return {"audio": audio, "id": pick(source.id_column, "--id-column", ("id",)),
            "text": pick(source.text_column, "--text-column", TEXT_COLUMNS),
            "speaker": pick(source.speaker_column, "--speaker-column", SPEAKER_COLUMNS),
            "language": pick(None, "", ("language",))}


def _utterance(file: Path, row: int, number: int, columns: dict, labels: dict[str, list]) -> Utterance:
    def value(kind: str) -> str | None:
        column = columns[kind]
        v = labels[column][row] if column is not None else None
        return None if v is None else str(v)

    return Utterance(id=(value("id") or "") if columns["id"] else f"{number:08d}", path=os.path.abspath(file),
                     member=f"{columns['audio']}/{row}", text=value("text"), speaker=value("speaker"),
                     language=value("language"))
