"""LocalAgreement-2 on timed words: what of a growing buffer's transcriptions may be committed.

Each transcription of the buffer (a *hypothesis*: words with absolute start and end times) is
compared with the one before it; the longest prefix of words both agree on is *committed* and
never changes again. Words are compared normalised (lower case, punctuation dropped), so
"country" and "country." agree; the newer hypothesis' spelling and times are the ones committed.

Only the part of a hypothesis after the committed text is compared. The buffer's audio still
holds the committed words it has not been trimmed of, and Whisper transcribes them again:
:func:`split_at` finds where they end in the new hypothesis by aligning its words to them (word
edit distance), ties decided by ``whisper_streaming``'s time rule (new words start after the
last committed end, less :data:`START_TOLERANCE_S`). The rules and constants otherwise follow
``whisper_streaming`` (``HypothesisBuffer`` and ``OnlineASRProcessor`` in ``whisper_online.py``,
Macháček et al. 2023): the prompt is the committed text before the buffer, at most 200
characters, and the buffer is cut at finished segment ends inside the committed text. This is
kvgraph's own code. No model here: the policy is tested on made-up hypotheses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

#: a hypothesis word starting this much before the last committed end still counts as new
#: (whisper_streaming: 0.1 s)
START_TOLERANCE_S = 0.1
#: the prompt: at most this many characters of committed text (whisper_streaming: 200)
PROMPT_CHARS = 200


class Word(NamedTuple):
    """One timed word: ``start`` and ``end`` in seconds from the start of the stream, ``text``
    as Whisper wrote it (with its leading space, punctuation attached)."""

    start: float
    end: float
    text: str


_NOT_WORD = re.compile(r"[^\w']+")


def normalise(text: str) -> str:
    """``text`` compared as a word: lower case, everything but letters, digits and apostrophes
    dropped, a typographic apostrophe read as ``'`` (``" Country."`` -> ``"country"``)."""
    return _NOT_WORD.sub("", text.lower().replace("\u2019", "'"))


def words_of(text: str) -> list[str]:
    """The normalised words of ``text`` (empty ones dropped)."""
    return [w for w in (normalise(t) for t in text.split()) if w]


def word_error_rate(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Word error rate: (substitutions + deletions + insertions) / len(reference), by the
    word-level Levenshtein distance; 0.0 for two empty sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        row = [i]
        for j, hyp in enumerate(hypothesis, start=1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = row
    if not reference:
        return float(len(hypothesis) > 0)
    return previous[-1] / len(reference)


class LocalAgreement:
    """The committed words of a stream and the last hypothesis' uncommitted rest.

    ``update(hypothesis)`` commits the agreed prefix and returns it; ``trim(time)`` forgets the
    committed words whose audio has left the buffer; ``finish()`` commits the rest of the last
    hypothesis (the stream has ended, nothing will confirm it)."""

    def __init__(self) -> None:
        self.committed: list[Word] = []  # everything committed, in order
        self.in_buffer: list[Word] = []  # committed words whose audio the buffer still holds
        self.pending: list[Word] = []  # the last hypothesis after the committed text
        self.last_end = 0.0  # the end of the last committed word

    def fresh(self, hypothesis: Sequence[Word]) -> list[Word]:
        """The words of ``hypothesis`` after the committed text (see :func:`split_at`)."""
        return list(hypothesis[split_at(hypothesis, self.in_buffer, self.last_end) :])

    def update(self, hypothesis: Sequence[Word]) -> list[Word]:
        """Compare ``hypothesis`` (a transcription of the buffer, absolute times) with the last
        one; commit and return the longest prefix both agree on (normalised words)."""
        new = self.fresh(hypothesis)
        agreed = 0
        for old, now in zip(self.pending, new):
            if normalise(old.text) != normalise(now.text):
                break
            agreed += 1
        commit = new[:agreed]
        self.pending = new[agreed:]
        self._commit(commit)
        return commit

    def finish(self) -> list[Word]:
        """Commit and return the last hypothesis' uncommitted words (the stream has ended)."""
        tail, self.pending = self.pending, []
        self._commit(tail)
        return tail

    def trim(self, time: float) -> None:
        """The buffer now starts at ``time``: forget the committed words that end by then."""
        self.in_buffer = [w for w in self.in_buffer if w.end > time]

    def _commit(self, words: list[Word]) -> None:
        if words:
            self.committed.extend(words)
            self.in_buffer.extend(words)
            self.last_end = words[-1].end

    @property
    def text(self) -> str:
        """The committed text."""
        return join(self.committed)


def join(words: Sequence[Word]) -> str:
    """Words as text (Whisper's words carry their leading spaces), stripped."""
    return "".join(w.text for w in words).strip()


def prompt_text(committed: Sequence[Word], buffer_start: float, max_chars: int = PROMPT_CHARS) -> str:
    """What the next transcription is prompted with: the last whole words, at most
    ``max_chars`` characters, of the committed words that end by ``buffer_start`` (those
    still inside the buffer are transcribed again, so they are not prompted)."""
    before = [w for w in committed if w.end <= buffer_start]
    kept: list[Word] = []
    length = 0
    for w in reversed(before):
        length += len(w.text)
        if length > max_chars:
            break
        kept.append(w)
    return join(kept[::-1])


def trim_point(segment_ends: Sequence[float], last: Word | None) -> float | None:
    """Where the buffer may be cut: the latest end of a finished segment (every segment of the
    hypothesis but its last, whose end is still open) at or before the end of ``last``, the
    last committed word (``whisper_streaming``'s ``chunk_completed_segment``); else the start
    of ``last``, which stays in the buffer: a word end inside a sentence is where the alignment
    is least sure (cutting there lost the onset of "two" in "press two" of
    tests/data/speech/basic-pbx-ivr-main.wav), and the committed word transcribed again is
    matched to the committed text (:func:`split_at`).
    None when nothing is committed."""
    if last is None:
        return None
    finished = [e for e in segment_ends[:-1] if e <= last.end]
    return max(finished) if finished else last.start


def time_split(hypothesis: Sequence[Word], last_end: float) -> int:
    """whisper_streaming's time rule: the index of the first word of ``hypothesis`` starting
    after ``last_end``, less :data:`START_TOLERANCE_S`."""
    for i, w in enumerate(hypothesis):
        if w.start > last_end - START_TOLERANCE_S:
            return i
    return len(hypothesis)


def split_at(hypothesis: Sequence[Word], in_buffer: Sequence[Word], last_end: float) -> int:
    """Where the new words of ``hypothesis`` start: its words before that index are the
    committed words still in the buffer (``in_buffer``), transcribed again.

    The index is the ``p`` whose prefix ``hypothesis[:p]`` is closest, by word edit distance
    (normalised words), to ``in_buffer``; ties go to the ``p`` nearest the time rule's
    (:func:`time_split`), which alone decides when no committed word is in the buffer.
    whisper_streaming uses the time rule alone, and a leading repeat of up to 5 committed words
    dropped; but word times come from the cross-attention's alignment, which can stretch a word
    over the pause after it: JFK's "ask not ... what" had "not" end after "what" starts in the
    next transcription, and the time rule then dropped "what" for good."""
    by_time = time_split(hypothesis, last_end)
    if not in_buffer:
        return by_time
    committed = [normalise(w.text) for w in in_buffer]
    words = [normalise(w.text) for w in hypothesis]
    row = list(range(len(words) + 1))  # distance(committed[:0], words[:p])
    for i, c in enumerate(committed, start=1):
        nxt = [i]
        for p, w in enumerate(words, start=1):
            nxt.append(min(row[p] + 1, nxt[p - 1] + 1, row[p - 1] + (c != w)))
        row = nxt
    return min(range(len(row)), key=lambda p: (row[p], abs(p - by_time)))
