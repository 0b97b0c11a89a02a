"""A corpus's inputs as a list of audio files: local paths, directories, globs and URIs of any
filesystem pyarrow reads (``file://``, ``s3://``, ``gs://``, ``hdfs://`` ...).

Each file becomes an :class:`AudioRef`: where to read it (``file``: a local path or a URI) and
its ``name``, the path its outputs take under the output directory (relative to the directory
or glob it was found under; a file given alone: its base name). Two files whose outputs would
land on the same name (``a/x.wav`` given beside ``b/x.wav``, or ``x.wav`` beside ``x.flac``)
are an error before anything runs, not a silent overwrite.

- a file given by name is taken whatever its extension (as ``kvgraph transcribe`` takes it);
- a directory is searched recursively for files with an audio extension (:data:`AUDIO_EXTENSIONS`);
- a glob (``*``, ``?``, ``[``; ``**`` spans directories) takes every regular file it matches, as
  a shell would.

An input that names nothing, or matches no audio file, is one :class:`InputError` naming it.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AUDIO_EXTENSIONS", "AudioRef", "InputError", "is_uri", "list_audio"]

#: what a directory listing keeps: the containers libsndfile (soundfile) decodes
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".caf",
        ".w64",
        ".rf64",
    }
)


class InputError(ValueError):
    """An input that names no file, matches no audio file, or collides with another's outputs."""


@dataclass(frozen=True)
class AudioRef:
    """One audio file of the corpus: ``file`` (local path or URI) and ``name`` (its outputs'
    path under the output directory, with the audio's extension)."""

    file: str
    name: str


def is_uri(text: str) -> bool:
    """Is ``text`` a URI with a scheme (``s3://...``, ``file:///...``) rather than a local path?"""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier()


def list_audio(inputs: Iterable[str | os.PathLike]) -> list[AudioRef]:
    """Every audio file of ``inputs``, in the order given (a directory's or glob's files
    sorted), each once. Raises :class:`InputError` for an input that names or matches nothing
    and for two files whose outputs would share a name."""
    refs: list[AudioRef] = []
    seen: set[str] = set()
    for item in inputs:
        text = os.fspath(item)
        found = _list_uri(text) if is_uri(text) else _list_local(text)
        if not found:
            raise InputError(f"{text}: matches no audio file")
        for ref in found:
            if ref.file not in seen:
                seen.add(ref.file)
                refs.append(ref)
    _check_names(refs)
    return refs


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_root(pattern: str) -> str:
    """The directory part of ``pattern`` before its first wildcard (what names are relative to)."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed)


def _list_local(text: str) -> list[AudioRef]:
    if _has_magic(text):
        root = _glob_root(text) or "."
        matches = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        return [AudioRef(os.path.abspath(p), os.path.relpath(p, root)) for p in matches]
    if os.path.isdir(text):
        found = []
        for here, dirs, files in os.walk(text):
            dirs.sort()
            for f in sorted(files):
                if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS:
                    path = os.path.join(here, f)
                    found.append(AudioRef(os.path.abspath(path), os.path.relpath(path, text)))
        return found
    if os.path.exists(text):
        return [AudioRef(os.path.abspath(text), os.path.basename(text))]
    raise InputError(f"{text}: no such file or directory")


def _list_uri(uri: str) -> list[AudioRef]:
    """A URI's files through ``pyarrow.fs``: one file, a directory (recursive, audio
    extensions) or a glob over the path (matched with ``fnmatch`` below its fixed prefix)."""
    from pyarrow import fs as pafs

    base, sep, query = uri.partition("?")  # s3://bucket/dir?region=... keeps its options
    pattern = _has_magic(base.partition("://")[2])
    root_uri = base[: base.rindex("/", 0, _first_magic(base))] if pattern else base
    try:
        filesystem, root = pafs.FileSystem.from_uri(root_uri + sep + query)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as e:
        raise InputError(f"{uri}: {' '.join(str(e).split())}") from None
    if info.type == pafs.FileType.File and not pattern:
        return [AudioRef(uri, os.path.basename(root))]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{uri}: no such file or directory")
    selector = pafs.FileSelector(root, recursive=True)
    rest = base[len(root_uri) :].lstrip("/")
    found = []
    for entry in sorted(filesystem.get_file_info(selector), key=lambda e: e.path):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(root) :].lstrip("/")
        keep = (
            fnmatch.fnmatchcase(rel, rest)
            if pattern
            else os.path.splitext(rel)[1].lower() in AUDIO_EXTENSIONS
        )
        if keep:
            found.append(AudioRef(root_uri.rstrip("/") + "/" + rel + sep + query, rel))
    return found


def _first_magic(text: str) -> int:
    return min(i for i in (text.find(c) for c in "*?[") if i >= 0)


def _check_names(refs: list[AudioRef]) -> None:
    """Two files whose outputs share a path (the name without its extension) are an error."""
    owner: dict[str, str] = {}
    for ref in refs:
        stem = os.path.splitext(ref.name)[0]
        if stem in owner:
            raise InputError(
                f"{ref.file}: its outputs ({stem}.*) would overwrite those of {owner[stem]}; "
                "transcribe them into different output directories"
            )
        owner[stem] = ref.file
