"""The speech chunks of voice activity detection (models/whisper/vad/chunks.py): grouping,
times mapped back to the recording, merged results — pure Python, no model."""

from __future__ import annotations

import numpy as np
import pytest

from models.whisper.vad.chunks import MAX_CHUNK_SAMPLES, Chunk, group, map_segment, merge

SR = 16000


def regions(*pairs):
    return [{"start": int(a * SR), "end": int(b * SR)} for a, b in pairs]


def test_regions_group_into_chunks_of_at_most_one_window():
    speech = regions((1, 11), (15, 30), (40, 45), (50, 100), (101, 102))
    chunks = group(speech)
    assert [c.spans for c in chunks] == [
        ((1 * SR, 11 * SR), (15 * SR, 30 * SR), (40 * SR, 45 * SR)),  # 10 + 15 + 5 = 30 s
        ((50 * SR, 100 * SR),),  # longer than a window: alone (long form)
        ((101 * SR, 102 * SR),),
    ]
    assert all(c.n_samples <= MAX_CHUNK_SAMPLES or len(c.spans) == 1 for c in chunks)
    assert group([]) == []


def test_a_time_moves_with_the_region_that_holds_it():
    c = Chunk(((16000, 48000), (160000, 176000)))  # 1-3 s and 10-11 s: chunk 0-2 s, 2-3 s
    assert c.offsets == [0, 32000]
    assert c.original(0.5) == pytest.approx(1.5)
    assert c.original(2.5) == pytest.approx(10.5)
    assert c.original(2.0) == pytest.approx(10.0)  # a start on the cut: the later region
    assert c.original(2.0, is_end=True) == pytest.approx(3.0)  # an end on the cut: the earlier
    samples = np.arange(200000, dtype=np.float32)

    class Source:
        def read(self, a, b):
            return samples[a:b]

    np.testing.assert_array_equal(
        c.audio(Source()), np.concatenate([samples[16000:48000], samples[160000:176000]])
    )


def test_chunks_refuse_bad_spans():
    with pytest.raises(ValueError, match="span"):
        Chunk(((10, 5),))
    with pytest.raises(ValueError, match="overlaps"):
        Chunk(((0, 10), (5, 20)))
    with pytest.raises(ValueError, match="no speech"):
        Chunk(())


def test_words_move_with_the_region_of_their_middle():
    c = Chunk(((16000, 48000), (160000, 176000)))
    seg = {
        "id": 3,
        "seek": 0,
        "start": 0.0,
        "end": 2.8,
        "text": " a b",
        "words": [
            {"word": " a", "start": 1.5, "end": 2.1, "probability": 0.9},  # middle 1.8: first region
            {"word": " b", "start": 1.96, "end": 2.8, "probability": 0.8},  # middle 2.38: second
        ],
    }
    out = map_segment(seg, c)
    assert out["words"][0]["start"] == 2.5 and out["words"][0]["end"] == 3.1
    assert out["words"][1]["start"] == 9.96 and out["words"][1]["end"] == 10.8
    assert (out["start"], out["end"]) == (2.5, 10.8)
    assert seg["words"][0]["start"] == 1.5  # the chunk's own result is left as it was
    plain = map_segment({"seek": 0, "start": 0.4, "end": 2.0, "text": " x"}, c)
    assert (plain["start"], plain["end"], plain["seek"]) == (1.4, 3.0, 100)


def test_merged_results_keep_the_recordings_order_and_number_segments_afresh():
    c1, c2 = Chunk(((0, 16000),)), Chunk(((80000, 96000),))
    r1 = {
        "text": " one",
        "language": "en",
        "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": " one"}],
    }
    r2 = {
        "text": " two",
        "language": "en",
        "segments": [{"id": 0, "seek": 0, "start": 0.2, "end": 0.8, "text": " two"}],
    }
    out = merge([r1, r2], [c1, c2], "en")
    assert out["text"] == " one two"
    assert [s["id"] for s in out["segments"]] == [0, 1]
    assert [(s["start"], s["end"]) for s in out["segments"]] == [(0.0, 1.0), (5.2, 5.8)]
    assert merge([], [], "en") == {"text": "", "segments": [], "language": "en"}
