"""A transcription's result as files and text in openai-whisper's formats (``txt``, ``vtt``,
``srt``, ``tsv``, ``json``; kvgraph's own writers, :mod:`.writers`), files written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile

from models.whisper.transcription.writers import OUTPUT_FORMATS, WORD_OPTIONS, get_writer, write_result

__all__ = ["OUTPUT_FORMATS", "WORD_OPTIONS", "render", "write_outputs"]


def write_outputs(
    result: dict, audio_path: str, output_format: str, output_dir: str, writer_args: dict | None = None
) -> list[str]:
    """Writes ``result`` in ``output_format`` (``all``: every format), atomically; ``writer_args`` are
    openai's word options (:data:`WORD_OPTIONS`, all None/False by default).

    Everything is first written into a fresh temporary directory inside
    ``output_dir`` (same filesystem), then each file is moved into place with
    ``os.replace``; on any error the temporary directory is removed and no
    output of this audio file is touched.  Returns the written paths.
    """
    tmp = tempfile.mkdtemp(prefix=".kvgraph-transcribe-", dir=output_dir)
    try:
        args = {k: None for k in WORD_OPTIONS}
        args.update(writer_args or {})
        get_writer(output_format, tmp)(result, audio_path, **args)
        written = []
        for name in sorted(os.listdir(tmp)):
            dest = os.path.join(output_dir, name)
            os.replace(os.path.join(tmp, name), dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render(result: dict, output_format: str, writer_args: dict | None = None) -> str:
    """``result`` in one of openai-whisper's writer formats (``txt``, ``vtt``, ``srt``, ``tsv``,
    ``json``) as a string: the text :func:`write_outputs` writes to a file (``kvgraph serve``
    answers with it). ``writer_args`` as there."""
    import io

    if output_format not in OUTPUT_FORMATS or output_format == "all":
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS[:-1]}, got {output_format!r}")
    args = {k: None for k in WORD_OPTIONS}
    args.update(writer_args or {})
    buf = io.StringIO()
    write_result(result, buf, output_format, **args)
    return buf.getvalue()
