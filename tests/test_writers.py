"""kvgraph's own output writers (``models/whisper/transcription/writers.py``) against openai-whisper's
``whisper.utils`` writers, the oracle: the same bytes for txt, vtt, srt, tsv and json, written to
an open text file (``write_result``) and as files in a directory (``get_writer``, ``"all"``
included), over hand-made results (word timings or not, unicode, empty, hour-long, rounding
edges), every combination of the word options on a grid, and ~200 seeded random results."""

from __future__ import annotations

import ast
import io
import itertools
import random
import subprocess
import sys
from pathlib import Path

import pytest
from whisper import utils as oracle

from models.whisper.transcription import writers

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "models" / "whisper" / "transcription" / "writers.py"
FORMATS = ("txt", "vtt", "srt", "tsv", "json")
NONE_OPTIONS = dict.fromkeys(writers.WORD_OPTIONS)


# ------------------------------------------------------------------ building results


def spread_words(text: str, start: float, end: float, rng: random.Random | None = None) -> list[dict]:
    """``text``'s words as openai's word timings (``" word"`` with its leading space), spread
    evenly over ``[start, end]``."""
    parts = [" " + w for w in text.split()]
    step = (end - start) / max(len(parts), 1)
    rng = rng or random.Random(0)
    return [
        {
            "word": p,
            "start": round(start + i * step, 2),
            "end": round(start + (i + 1) * step, 2),
            "probability": rng.random(),
        }
        for i, p in enumerate(parts)
    ]


def segment(i: int, start: float, end: float, text: str, words: list[dict] | None = None) -> dict:
    """A segment as openai's ``transcribe`` returns it (``words`` only when given)."""
    seg = {
        "id": i,
        "seek": int(start * 100) // 3000 * 3000,
        "start": start,
        "end": end,
        "text": text,
        "tokens": [50364, 400 + i, 50414],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
    }
    if words is not None:
        seg["words"] = words
    return seg


def result_of(segments: list[dict], language: str = "en") -> dict:
    return {"text": "".join(s["text"] for s in segments), "segments": segments, "language": language}


JFK = " And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def timed(words: list[tuple[str, float, float]]) -> list[dict]:
    """Word timings of ``(word, start, end)`` triples."""
    return [{"word": w, "start": a, "end": b, "probability": 0.75} for w, a, b in words]


def worded(i: int, start: float, end: float, text: str) -> dict:
    """A segment with its text's words spread over it."""
    return segment(i, start, end, text, spread_words(text, start, end))


def speech_results() -> dict[str, dict]:
    """Real-looking results: JFK, segments past the hour with long pauses, unicode, long texts."""
    long_text = " " + " ".join(f"word{i}" for i in range(260))
    many = " ".join(f"w{i}" for i in range(1003))
    uni = " Ça va --> très\tbien 🎉 naïve façade —  “quotes”"
    cjk = timed([(c, 1.0 + i * 0.2, 1.2 + i * 0.2) for i, c in enumerate("日本語の文章です。")])
    hours = [(3590.0, 3597.5, " First part of it."), (3601.2, 3610.0, " Then after a pause")]
    hours.append((3620.0, 3633.0, " and more words here."))
    return {
        "jfk_words": result_of([worded(0, 0.0, 10.56, JFK)]),
        "jfk_plain": result_of([segment(0, 0.0, 10.56, JFK)]),
        "hours_words": result_of([worded(i, a, b, text) for i, (a, b, text) in enumerate(hours)]),
        "hours_plain": result_of(
            [segment(0, 3599.9996, 3661.25, " over the hour"), segment(1, 36000.0, 36001.5, " ten hours")]
        ),
        # no spaces between CJK words; accents, emoji, '-->' and tabs in the text
        "cjk_words": result_of([segment(0, 1.0, 3.0, "日本語の文章です。", cjk)], language="ja"),
        "unicode_words": result_of([worded(0, 0.0, 6.0, uni)], language="fr"),
        "unicode_plain": result_of([segment(0, 0.0, 6.0, uni), segment(1, 6.0, 7.0, "\ttab\tinside\t")]),
        # one long segment, one with over 1000 words (openai's default chunk size)
        "long_words": result_of([worded(0, 0.0, 120.0, long_text)]),
        "long_plain": result_of([segment(0, 0.0, 120.0, long_text * 3)]),
        "many_words": result_of([worded(0, 0.0, 600.0, many)]),
    }


def edge_results() -> dict[str, dict]:
    """Empty results, words missing, exact 3 s pauses, odd whitespace and line breaks in words."""
    yes = worded(1, 1.0, 4.0, " yes we can")
    paused = timed([(" one", 0.5, 0.9), (" two", 3.5, 3.9), (" three", 6.5000001, 6.9), (" four", 7.0, 7.4)])
    odd = timed([("  Hello ", 0.0, 0.5), (" ", 0.5, 0.6), ("", 0.6, 0.6), (" world  ", 0.6, 1.0)])
    odd += timed([("\u00a0nbsp", 1.0, 1.2)])
    breaks = ["a\n", "\nb", " c\n\n", "\n", " \n ", "d\ne", "\n\nf\n", "g"]
    return {
        "empty_words": result_of([segment(0, 0.0, 1.0, "", []), segment(1, 1.0, 2.0, " ", [])]),
        "empty_plain": result_of([segment(0, 0.0, 1.0, "")]),
        "no_segments": result_of([]),
        # the first segment without words, later ones with; or with no "words" key (one cue a segment)
        "first_wordless": result_of([segment(0, 0.0, 1.0, " hm", []), yes]),
        "first_unkeyed": result_of([segment(0, 0.0, 1.0, " hm"), yes]),
        # pauses between word starts of exactly 3 s (not a long pause) and just over
        "pause_edges": result_of(
            [segment(0, 0.5, 7.5, " one two three four", paused), worded(1, 10.0, 10.4, " five")]
        ),
        "spaces_words": result_of([segment(0, 0.0, 1.2, "  Hello   world   nbsp ", odd)]),
        "spaces_plain": result_of(
            [segment(0, 0.0, 1.2, "   padded text   "), segment(1, 1.2, 2.0, "\n x \n")]
        ),
        # line breaks inside words (the highlighting's edge)
        "newline_words": result_of(
            [segment(0, 0.0, 8.0, "".join(breaks), timed([(w, i, i + 0.9) for i, w in enumerate(breaks)]))]
        ),
    }


def rounding_results() -> dict[str, dict]:
    """Times on the millisecond's rounding edges (ties go to even) and minutes' and hours'."""
    edges = [0.0005, 0.0015, 0.0025, 59.9995, 59.9994, 3599.9995, 3599.9996, 3600.0004, 7199.9999, 1.0005]
    return {
        "rounding_words": result_of(
            [
                segment(i, t, t + 0.0005, f" edge{i}", timed([(f" edge{i}", t, t + 0.0005)]))
                for i, t in enumerate(edges)
            ]
        ),
        "rounding_plain": result_of([segment(i, t, t + 0.0015, f" edge{i} ") for i, t in enumerate(edges)]),
    }


def hand_results() -> dict[str, dict]:
    """Named results covering the writers' cases."""
    return {**speech_results(), **edge_results(), **rounding_results()}


HAND = hand_results()


def random_word(rng: random.Random) -> str:
    pieces = ["the", "a", "Hello", "world", "x", "Ça", "日本", "—", "-->", "🎉", "naïve", "word,", "it's"]
    pieces += ["3.5", "", "a\nb"]
    lead = rng.choice([" ", " ", " ", "", "  ", "\n", "\t", "\u00a0", "\u3000"])
    tail = rng.choice(["", "", "", "", " ", "\n", ".", "\t"])
    return lead + "".join(rng.choice(pieces) for _ in range(rng.choice([0, 1, 1, 1, 2, 3]))) + tail


def random_time(rng: random.Random, t: float) -> float:
    """A time after ``t``: small steps, long pauses, jumps past the hour, millisecond ties."""
    kind = rng.random()
    if kind < 0.6:
        return t + rng.uniform(0.0, 1.2)
    if kind < 0.75:
        return t + rng.uniform(3.0, 8.0)
    if kind < 0.85:
        return round(t) + rng.choice([0.0005, 0.0015, 0.9995, 0.4995])
    if kind < 0.9:
        return t + 0.0
    if kind < 0.93:
        return t + 3.0  # exactly openai's long pause: not one
    return t + rng.choice([3599.9996, 1800.0, 59.9995])


def random_result(rng: random.Random) -> dict:
    """A result of 0..6 segments, word-timed with probability 0.7."""
    with_words = rng.random() < 0.7
    t = rng.choice([0.0, 0.0, rng.uniform(0, 100), 3595.0])
    segments = []
    for i in range(rng.choice([0, 1, 1, 2, 3, 4, 6])):
        start, words = t, []
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 13, 30])):
            w_start = random_time(rng, t)
            t = random_time(rng, w_start) if rng.random() < 0.9 else w_start
            words.append({"word": random_word(rng), "start": w_start, "end": t, "probability": rng.random()})
        t = random_time(rng, t)
        text = "".join(w["word"] for w in words) if words else rng.choice(["", " ", " hm --> ok\t."])
        segments.append(segment(i, start, t, text, words if with_words else None))
    if segments and with_words and rng.random() < 0.1:
        del segments[0]["words"]  # then openai writes one cue per segment
    return result_of(segments, language=rng.choice(["en", "fr", "ja"]))


def random_options(rng: random.Random) -> dict:
    return {
        "highlight_words": rng.choice([None, False, True]),
        "max_line_width": rng.choice([None, None, 0, 1, 5, 10, 16, 30, 42, 80]),
        "max_line_count": rng.choice([None, None, 0, 1, 2, 3, 5]),
        "max_words_per_line": rng.choice([None, None, 0, 1, 2, 3, 4, 7]),
    }


# ------------------------------------------------------------------ running both


def ours(result: dict, fmt: str, options: dict | None = None, **word_options) -> str:
    buf = io.StringIO()
    writers.write_result(result, buf, fmt, options, **word_options)
    return buf.getvalue()


def theirs(result: dict, fmt: str, options: dict | None = None, **word_options) -> str:
    buf = io.StringIO()
    oracle.get_writer(fmt, ".").write_result(result, buf, options, **{**NONE_OPTIONS, **word_options})
    return buf.getvalue()


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def write_both(tmp_path: Path, result: dict, audio_path: str, fmt: str, **word_options) -> tuple[dict, dict]:
    """The files openai's and our writer of ``fmt`` write for ``audio_path``, name -> bytes."""
    mine, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    for d in (mine, theirs_dir):
        d.mkdir(exist_ok=True)
        for p in d.iterdir():
            p.unlink()
    writers.get_writer(fmt, str(mine))(result, audio_path, **word_options)
    oracle.get_writer(fmt, str(theirs_dir))(result, audio_path, **{**NONE_OPTIONS, **word_options})
    return files_of(mine), files_of(theirs_dir)


# the word-option grid: each alone and together, widths and counts that wrap lines and split cues
GRID = [
    dict(highlight_words=h, max_line_width=w, max_line_count=c, max_words_per_line=n)
    for h, w, c, n in itertools.product(
        [None, True], [None, 1, 8, 20, 42], [None, 1, 2, 3], [None, 1, 2, 3, 4]
    )
]


# ------------------------------------------------------------------ timestamps


def test_format_timestamp_matches_openai():
    rng = random.Random(7)
    values = [0, 0.0, 0.0004, 0.0005, 0.0015, 0.0025, 0.9995, 1.0005, 59.9994, 59.9995, 59.9996, 60.0]
    values += [3599.9994, 3599.9995, 3599.9996, 3600.0, 3600.0005, 35999.9995, 86400.0, 360000.5, 1e7]
    values += [k / 1000 + 0.0005 for k in range(0, 5000, 7)]
    values += [rng.uniform(0, 10 ** rng.uniform(-3, 6)) for _ in range(5000)]
    for v in values:
        for hours, marker in itertools.product([False, True], [".", ","]):
            expected = oracle.format_timestamp(v, always_include_hours=hours, decimal_marker=marker)
            assert writers.format_timestamp(v, hours, marker) == expected, (v, hours, marker)
    assert writers.format_timestamp(3599.9996) == "01:00:00.000"
    assert writers.format_timestamp(59.9995, True, ",") == "00:01:00,000"


@pytest.mark.parametrize("bad", [-0.001, -1.0, float("nan")])
def test_format_timestamp_rejects_negative(bad):
    with pytest.raises(ValueError, match="non-negative"):
        writers.format_timestamp(bad)


# ------------------------------------------------------------------ hand-made results


@pytest.mark.parametrize("name", sorted(HAND))
@pytest.mark.parametrize("fmt", FORMATS)
def test_hand_results_default_options(name, fmt):
    result = HAND[name]
    assert ours(result, fmt) == theirs(result, fmt)
    assert ours(result, fmt, **NONE_OPTIONS) == theirs(result, fmt)


@pytest.mark.parametrize("name", sorted(n for n in HAND if n != "many_words"))
def test_hand_results_word_option_grid(name):
    """vtt and srt over the whole option grid (txt, tsv, json ignore the options: checked too)."""
    result = HAND[name]
    for opts in GRID:
        for fmt in ("vtt", "srt"):
            assert ours(result, fmt, **opts) == theirs(result, fmt, **opts), (fmt, opts)
    for fmt in ("txt", "tsv", "json"):
        assert ours(result, fmt, **GRID[-1]) == theirs(result, fmt, **GRID[-1])


def test_many_words_chunks_at_openai_default():
    result = HAND["many_words"]
    for opts in [
        {},
        {"max_line_width": 50, "max_line_count": 2},
        {"max_words_per_line": 3},
        {"highlight_words": True},
    ]:
        for fmt in ("vtt", "srt"):
            assert ours(result, fmt, **opts) == theirs(result, fmt, **opts), opts


def test_falsy_options_and_options_dict_as_openai():
    """0 and False count as unset; openai's ``options`` dict fills what the keywords leave unset."""
    result = HAND["hours_words"]
    cases = [
        ({}, dict(max_line_width=0, max_line_count=0, max_words_per_line=0, highlight_words=False)),
        ({"max_line_width": 12, "max_line_count": 2}, {}),
        ({"max_line_width": 12, "max_line_count": 0}, {}),
        ({"max_line_width": 12}, {"max_line_count": 1}),
        ({"max_words_per_line": 2, "highlight_words": True}, {"max_words_per_line": 3}),
        ({"max_line_count": 1}, {"max_line_width": 0}),
    ]
    for options, kw in cases:
        for fmt in ("vtt", "srt"):
            assert ours(result, fmt, options, **kw) == theirs(result, fmt, options, **kw), (options, kw)


def test_examples_of_the_layout():
    """A few outputs spelled out, so a shared misreading of openai would still show."""
    words = [
        {"word": w, "start": i, "end": i + 0.5, "probability": 1.0}
        for i, w in enumerate([" ask", " not", " what"])
    ]
    result = result_of([segment(0, 0.0, 3.0, " ask not what", words)])
    assert ours(result, "vtt", max_words_per_line=2) == (
        "WEBVTT\n\n00:00.000 --> 00:01.500\nask not\n\n00:02.000 --> 00:02.500\nwhat\n\n"
    )
    assert ours(result, "srt", max_line_width=8, max_line_count=1) == (
        "1\n00:00:00,000 --> 00:00:01,500\nask not\n\n2\n00:00:02,000 --> 00:00:02,500\nwhat\n\n"
    )
    assert ours(result, "vtt", highlight_words=True, max_line_width=4) == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:00.500\n<u>ask</u>\nnot\nwhat\n\n"
        "00:00.500 --> 00:01.000\nask\nnot\nwhat\n\n"
        "00:01.000 --> 00:01.500\nask\n<u>not</u>\nwhat\n\n"
        "00:01.500 --> 00:02.000\nask\nnot\nwhat\n\n"
        "00:02.000 --> 00:02.500\nask\nnot\n<u>what</u>\n\n"
    )
    assert (
        ours(result_of([segment(0, 0.0, 1.0, " a --> b\t")]), "tsv") == "start\tend\ttext\n0\t1000\ta --> b\n"
    )
    assert ours(result_of([segment(0, 0.0, 1.0, " a --> b")]), "srt").endswith("a -> b\n\n")
    assert ours({"segments": [], "text": "é"}, "json") == '{"segments": [], "text": "\\u00e9"}'


# ------------------------------------------------------------------ files


@pytest.mark.parametrize(
    "audio_path",
    ["some/dir.v1/my.audio.file.wav", "clip", "/abs/path/.hidden", "name.tar.gz", "dir/ünïcode name.mp3"],
)
def test_all_formats_as_files(tmp_path, audio_path):
    mine, theirs_files = write_both(
        tmp_path, HAND["unicode_words"], audio_path, "all", max_line_width=10, max_line_count=2
    )
    assert sorted(mine) == sorted(theirs_files) and len(mine) == 5
    assert mine == theirs_files


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_as_file(tmp_path, fmt):
    for name in ("jfk_words", "newline_words", "spaces_plain", "no_segments"):
        mine, theirs_files = write_both(tmp_path, HAND[name], "a/b/c.d.flac", fmt, highlight_words=True)
        assert list(mine) == [f"c.d.{fmt}"] and mine == theirs_files, name


def test_writer_object_write_result_as_openai():
    buf = io.StringIO()
    writers.get_writer("srt", "unused").write_result(HAND["jfk_words"], buf, max_words_per_line=4)
    assert buf.getvalue() == theirs(HAND["jfk_words"], "srt", max_words_per_line=4)


# ------------------------------------------------------------------ random results


def test_random_results():
    rng = random.Random(20250625)
    for k in range(200):
        result = random_result(rng)
        opts = random_options(rng)
        for fmt in FORMATS:
            assert ours(result, fmt, **opts) == theirs(result, fmt, **opts), (k, fmt, opts)
        for fmt in ("vtt", "srt"):  # and with no options at all
            assert ours(result, fmt) == theirs(result, fmt), (k, fmt)


def test_random_results_as_files(tmp_path):
    rng = random.Random(99)
    for k in range(40):
        result, opts = random_result(rng), random_options(rng)
        mine, theirs_files = write_both(tmp_path, result, f"rec/{k}.take.wav", "all", **opts)
        assert mine == theirs_files, (k, opts)


# ------------------------------------------------------------------ errors and independence


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match="'xml'"):
        writers.get_writer("xml", ".")
    with pytest.raises(ValueError, match="'all'"):
        writers.write_result(HAND["jfk_plain"], io.StringIO(), "all")
    with pytest.raises(ValueError, match="'all'"):
        writers.get_writer("all", ".").write_result(HAND["jfk_plain"], io.StringIO())
    with pytest.raises(TypeError, match="max_width"):
        writers.write_result(HAND["jfk_plain"], io.StringIO(), "txt", max_width=3)
    with pytest.raises(ValueError, match="max_words_per_line"):
        writers.write_result(HAND["jfk_words"], io.StringIO(), "vtt", max_words_per_line=-1)


def test_output_formats_as_openai():
    assert writers.OUTPUT_FORMATS == ("txt", "vtt", "srt", "tsv", "json", "all")
    assert writers.WORD_OPTIONS == (
        "highlight_words",
        "max_line_count",
        "max_line_width",
        "max_words_per_line",
    )


def test_module_imports_neither_torch_nor_whisper():
    tree = ast.parse(MODULE.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "os", "collections", "dataclasses", "typing"}, imported
    code = (
        "import sys, models.whisper.transcription.writers as w; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'whisper')); "
        "assert not bad, bad; print(w.format_timestamp(1.5))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "00:01.500", out.stderr
