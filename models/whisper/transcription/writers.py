"""A transcription's result as text in openai-whisper's output formats (``txt``, ``vtt``, ``srt``,
``tsv``, ``json``): kvgraph's own writers, byte for byte what ``whisper.utils.get_writer`` writes,
without importing whisper (whose ``utils`` pulls in torch).

``write_result`` writes one format to an open text file; ``get_writer`` gives a callable with the
call signature of openai's writer objects (``writer(result, audio_path, **word_options)``) that
writes ``<audio basename without extension>.<format>`` into a directory (every format for
``"all"``). The word options (:data:`WORD_OPTIONS`) lay word-timed segments out as subtitle cues.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

OUTPUT_FORMATS = ("txt", "vtt", "srt", "tsv", "json", "all")
#: openai's writer options; each acts only on segments with word timings (``"words"``)
WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")

#: openai-whisper's utils.py: when cues are laid out by width and count, a word starting more than
#: 3 s after the previous word's start opens a new cue
LONG_PAUSE_S = 3.0
#: openai-whisper's utils.py: the line width and the words per line when none is given
UNLIMITED = 1000

#: a subtitle cue being built: each word's timing (the result's own dict) and its text as laid out
#: (stripped at a line's start, ``"\n"``-prefixed at a line break within the cue)
Cue = list[tuple[Mapping[str, Any], str]]
Stamp = Callable[[float], str]


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """``[HH:]MM:SS<marker>mmm`` for ``seconds`` rounded to whole milliseconds with Python's
    ``round`` (ties to even, as openai-whisper rounds); the hours appear when asked for or nonzero."""
    if not seconds >= 0:
        raise ValueError(f"timestamp {seconds!r} is not a non-negative number of seconds")
    millis = round(seconds * 1000.0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{head}{minutes:02d}:{whole:02d}{decimal_marker}{millis:03d}"


def vtt_timestamp(seconds: float) -> str:
    """WebVTT's cue time: hours only when nonzero, a decimal point."""
    return format_timestamp(seconds, always_include_hours=False, decimal_marker=".")


def srt_timestamp(seconds: float) -> str:
    """SubRip's cue time: always with hours, a decimal comma."""
    return format_timestamp(seconds, always_include_hours=True, decimal_marker=",")


@dataclass(frozen=True)
class WordLayout:
    """openai's four word options, resolved: how word-timed segments become subtitle cues.

    ``by_segment`` (unless both a line width and a line count are given) starts a new cue at every
    segment and at every chunk of ``max_words`` words; otherwise cues fill up to ``max_lines``
    lines of ``max_width`` characters and break at long pauses.
    """

    highlight: bool
    max_width: Any
    max_lines: Any
    max_words: int
    by_segment: bool


def word_layout(options: Mapping[str, Any] | None = None, **word_options: Any) -> WordLayout:
    """The :class:`WordLayout` of keyword ``word_options`` (None: unset), each falling back on
    ``options`` (openai's ``options`` dict) when unset or falsy, as openai resolves them."""
    unknown = sorted(set(word_options) - set(WORD_OPTIONS))
    if unknown:
        raise TypeError(f"writer options {unknown} are not among {WORD_OPTIONS}")
    fallback = options or {}

    def pick(name: str, default: Any = None) -> Any:
        return word_options.get(name) or fallback.get(name, default)

    width, lines = pick("max_line_width"), pick("max_line_count")
    words = pick("max_words_per_line") or UNLIMITED
    if words < 1:
        raise ValueError(f"max_words_per_line {words!r} is not a positive count")
    return WordLayout(
        highlight=bool(pick("highlight_words", False)),
        max_width=width or UNLIMITED,
        max_lines=lines,
        max_words=words,
        by_segment=lines is None or width is None,
    )


class CueBuilder:
    """Lays word timings, one at a time, into subtitle cues of lines (openai's subtitle layout).

    A word continues the current line while the line is non-empty and the word (with its leading
    space) fits in the width, unless a pause or a segment/chunk start intervenes; otherwise it
    starts a line stripped of whitespace, which also closes the cue when the cue reached its line
    count, follows a long pause, or starts a segment/chunk in ``by_segment`` layout.
    """

    def __init__(self, layout: WordLayout) -> None:
        self.layout = layout
        self.cue: Cue = []
        self.width = 0  # characters on the current line
        self.lines = 1  # lines in the current cue
        self.prev_start: Any = None  # the previous word's start

    def add(self, word: Mapping[str, Any], starts_chunk: bool) -> Cue | None:
        """Adds ``word`` (a timing dict); returns the cue it closed, if it closed one."""
        lay, text, start = self.layout, word["word"], word["start"]
        forced = lay.by_segment and starts_chunk and len(self.cue) > 0
        pause = not lay.by_segment and self.prev_start is not None and start - self.prev_start > LONG_PAUSE_S
        closed = None
        if self.width > 0 and self.width + len(text) <= lay.max_width and not pause and not forced:
            self.width += len(text)
        else:
            text = text.strip()
            full = lay.max_lines is not None and (pause or self.lines >= lay.max_lines)
            if forced or (len(self.cue) > 0 and full):
                closed, self.cue, self.lines = self.cue, [], 1
            elif self.width > 0:
                self.lines += 1
                text = "\n" + text
            self.width = len(text.strip())
        self.cue.append((word, text))
        self.prev_start = start
        return closed


def word_cues(segments: Sequence[Mapping[str, Any]], layout: WordLayout) -> Iterator[Cue]:
    """The cues of word-timed ``segments``; each segment's words go in chunks of
    ``layout.max_words`` (a chunk's first word may force a new cue, see :class:`CueBuilder`)."""
    builder = CueBuilder(layout)
    for segment in segments:
        words = segment["words"]
        for offset in range(0, len(words), layout.max_words):
            for i, word in enumerate(words[offset : offset + layout.max_words]):
                closed = builder.add(word, starts_chunk=i == 0)
                if closed is not None:
                    yield closed
    if builder.cue:
        yield builder.cue


def underline(piece: str) -> str:
    """``piece`` with its text after any leading whitespace inside ``<u>...</u>`` (the word being
    spoken under ``highlight_words``). As openai marks it: the mark never spans a line break, so
    a final ``"\\n"`` stays after ``</u>`` and a piece with any other line break after its text
    starts is left unmarked; an all-whitespace piece gets an empty ``<u></u>`` after it."""
    lead = len(piece) - len(piece.lstrip())
    body = piece[lead:]
    tail = "\n" if body.endswith("\n") else ""
    core = body[: len(body) - len(tail)]
    if "\n" in core:
        return piece
    return f"{piece[:lead]}<u>{core}</u>{tail}"


def render_cue(cue: Cue, highlight: bool, stamp: Stamp) -> Iterator[tuple[str, str, str]]:
    """``(start, end, text)`` of one cue; with ``highlight``, one per word with that word
    underlined, plus an unmarked cue filling any gap before a word (compared as formatted times)."""
    pieces = [text for _, text in cue]
    text = "".join(pieces)
    first = stamp(cue[0][0]["start"])
    if not highlight:
        yield first, stamp(cue[-1][0]["end"]), text
        return
    cursor = first
    for i, (word, _) in enumerate(cue):
        start, end = stamp(word["start"]), stamp(word["end"])
        if cursor != start:
            yield cursor, start, text
        yield start, end, "".join(underline(p) if j == i else p for j, p in enumerate(pieces))
        cursor = end


def subtitle_cues(
    result: Mapping[str, Any], layout: WordLayout, stamp: Stamp
) -> Iterator[tuple[str, str, str]]:
    """``(start, end, text)`` of every cue: laid out from word timings when the first segment has
    ``"words"``, else one per segment (text stripped, ``-->`` made ``->``: only here, as openai)."""
    segments = result["segments"]
    if len(segments) > 0 and "words" in segments[0]:
        for cue in word_cues(segments, layout):
            yield from render_cue(cue, layout.highlight, stamp)
        return
    for segment in segments:
        yield stamp(segment["start"]), stamp(segment["end"]), segment["text"].strip().replace("-->", "->")


def write_txt(result: Mapping[str, Any], file: TextIO, layout: WordLayout) -> None:
    """One line per segment, its text stripped."""
    for segment in result["segments"]:
        file.write(segment["text"].strip() + "\n")


def write_vtt(result: Mapping[str, Any], file: TextIO, layout: WordLayout) -> None:
    """WebVTT: the header, then each cue and a blank line."""
    file.write("WEBVTT\n\n")
    for start, end, text in subtitle_cues(result, layout, vtt_timestamp):
        file.write(f"{start} --> {end}\n{text}\n\n")


def write_srt(result: Mapping[str, Any], file: TextIO, layout: WordLayout) -> None:
    """SubRip: each cue numbered from 1, then a blank line."""
    for number, (start, end, text) in enumerate(subtitle_cues(result, layout, srt_timestamp), start=1):
        file.write(f"{number}\n{start} --> {end}\n{text}\n\n")


def write_tsv(result: Mapping[str, Any], file: TextIO, layout: WordLayout) -> None:
    """A header, then per segment start and end in whole milliseconds (``round``, ties to even)
    and the stripped text with tabs made spaces, tab-separated."""
    file.write("start\tend\ttext\n")
    for segment in result["segments"]:
        start, end = round(1000 * segment["start"]), round(1000 * segment["end"])
        text = segment["text"].strip().replace("\t", " ")
        file.write(f"{start}\t{end}\t{text}\n")


def write_json(result: Mapping[str, Any], file: TextIO, layout: WordLayout) -> None:
    """The whole result as one line of JSON, as openai writes it: ``json.dump``'s defaults
    (ASCII only, ``", "`` and ``": "`` separators, no indent, no final newline)."""
    json.dump(result, file, ensure_ascii=True, separators=(", ", ": "))


WRITERS: dict[str, Callable[[Mapping[str, Any], TextIO, WordLayout], None]] = {
    "txt": write_txt,
    "vtt": write_vtt,
    "srt": write_srt,
    "tsv": write_tsv,
    "json": write_json,
}


def writer_of(output_format: str) -> Callable[[Mapping[str, Any], TextIO, WordLayout], None]:
    """The writer function of one format (not ``"all"``)."""
    if output_format not in WRITERS:
        raise ValueError(f"output format {output_format!r} is not one of {tuple(WRITERS)}")
    return WRITERS[output_format]


def write_result(
    result: Mapping[str, Any],
    file: TextIO,
    output_format: str,
    options: Mapping[str, Any] | None = None,
    **word_options: Any,
) -> None:
    """Writes ``result`` in one format (``txt``, ``vtt``, ``srt``, ``tsv``, ``json``) to the open
    text ``file``; ``word_options`` and ``options`` as in :func:`word_layout`."""
    write = writer_of(output_format)
    write(result, file, word_layout(options, **word_options))


def output_path(audio_path: str, output_dir: str, extension: str) -> str:
    """``<output_dir>/<audio basename without its last extension>.<extension>``."""
    stem = os.path.splitext(os.path.basename(audio_path))[0]
    return os.path.join(output_dir, stem + "." + extension)


@dataclass(frozen=True)
class ResultWriter:
    """Writes results of ``audio_path`` as files into ``output_dir`` in one format or ``"all"``
    (txt, vtt, srt, tsv, json, in that order); called as openai's writer objects are."""

    output_format: str
    output_dir: str

    def __post_init__(self) -> None:
        if self.output_format != "all":
            writer_of(self.output_format)

    def __call__(
        self,
        result: Mapping[str, Any],
        audio_path: str,
        options: Mapping[str, Any] | None = None,
        **word_options: Any,
    ) -> None:
        """Writes ``result`` as ``<audio basename>.<format>`` (UTF-8, platform newlines)."""
        layout = word_layout(options, **word_options)
        formats = tuple(WRITERS) if self.output_format == "all" else (self.output_format,)
        for fmt in formats:
            with open(output_path(audio_path, self.output_dir, fmt), "w", encoding="utf-8") as file:
                WRITERS[fmt](result, file, layout)

    def write_result(
        self,
        result: Mapping[str, Any],
        file: TextIO,
        options: Mapping[str, Any] | None = None,
        **word_options: Any,
    ) -> None:
        """Writes ``result`` to the open ``file`` (one format only), as openai's ``write_result``."""
        write_result(result, file, self.output_format, options, **word_options)


def get_writer(output_format: str, output_dir: str) -> ResultWriter:
    """The writer of ``output_format`` (one of :data:`OUTPUT_FORMATS`) into ``output_dir``."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format {output_format!r} is not one of {OUTPUT_FORMATS}")
    return ResultWriter(output_format, output_dir)
