"""A corpus's results on disk: each file's outputs in ``kvgraph transcribe``'s formats (its
writers, :func:`models.whisper.transcription.outputs.write_outputs`: written under a temporary
name, moved into place with ``os.replace``), the resume test, and the manifest.

A file's outputs go to ``<output_dir>/<name without extension>.<format>`` (``name`` from
:class:`~models.whisper.corpus.inputs.AudioRef`: sub-directories kept). A file is *done* when
every output its format asks for exists; a rerun skips it. The manifest
(``manifest.jsonl``) has one JSON object per file, in the order of the inputs, with
:data:`MANIFEST_FIELDS`; it is written once the job ends, atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping

from models.whisper.transcription.outputs import OUTPUT_FORMATS, write_outputs
from models.whisper.transcription.writers import output_path

__all__ = [
    "MANIFEST_FIELDS",
    "STATUSES",
    "formats_of",
    "output_files",
    "is_done",
    "write_transcript",
    "recorded_language",
    "manifest_row",
    "write_manifest",
    "read_manifest",
]

#: a manifest row's keys: the file (path or URI as listed), its duration (s, at 16 kHz), the
#: language of its transcript, ok / error / skipped, the error's one line, the address of the
#: node whose worker transcribed it, and that worker's model load time (s; once per worker)
MANIFEST_FIELDS = ("file", "status", "duration", "language", "error", "node", "load_s")
STATUSES = ("ok", "error", "skipped")


def formats_of(output_format: str) -> tuple[str, ...]:
    """The formats ``output_format`` writes (``all``: every one); ValueError for an unknown one."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format {output_format!r} is not one of {OUTPUT_FORMATS}")
    return tuple(f for f in OUTPUT_FORMATS if f != "all") if output_format == "all" else (output_format,)


def output_files(name: str, output_dir: str, output_format: str) -> list[str]:
    """The paths the outputs of the file named ``name`` take (the writers' naming)."""
    where = os.path.join(output_dir, os.path.dirname(name))
    return [output_path(os.path.basename(name), where, fmt) for fmt in formats_of(output_format)]


def is_done(name: str, output_dir: str, output_format: str) -> bool:
    """Does every output of ``name`` in ``output_format`` exist already (resume)?"""
    return all(os.path.exists(p) for p in output_files(name, output_dir, output_format))


def write_transcript(
    result: Mapping, name: str, output_dir: str, output_format: str, writer_args: Mapping | None = None
) -> list[str]:
    """Writes ``result`` as the outputs of ``name`` (each atomically: a file is either absent
    or whole); returns their paths."""
    where = os.path.join(output_dir, os.path.dirname(name))
    os.makedirs(where, exist_ok=True)
    return write_outputs(dict(result), os.path.basename(name), output_format, where, dict(writer_args or {}))


def recorded_language(name: str, output_dir: str) -> str | None:
    """The language a done file's ``.json`` output records (None without one)."""
    path = output_files(name, output_dir, "json")[0]
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("language")
    except (OSError, ValueError, AttributeError):
        return None


def manifest_row(file: str, status: str, **fields) -> dict:
    """One manifest row: every key of :data:`MANIFEST_FIELDS` (missing ones None)."""
    if status not in STATUSES:
        raise ValueError(f"manifest status {status!r} is not one of {STATUSES}")
    unknown = set(fields) - set(MANIFEST_FIELDS)
    if unknown:
        raise ValueError(f"manifest row of {file}: unknown fields {sorted(unknown)}")
    row = dict.fromkeys(MANIFEST_FIELDS)
    row.update(fields, file=file, status=status)
    return row


def write_manifest(rows: Iterable[Mapping], path: str) -> str:
    """Writes ``rows`` as JSON lines to ``path`` atomically (a temporary file in the same
    directory, then ``os.replace``); returns ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".jsonl", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: row.get(k) for k in MANIFEST_FIELDS}) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_manifest(path: str) -> list[dict]:
    """The rows of a manifest written by :func:`write_manifest`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
