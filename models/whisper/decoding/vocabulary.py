"""A byte-pair vocabulary held as data: token bytes by id and special tokens by name, so that
decoding (every token a transcription emits) and encoding the short pieces the decode loop
itself needs (the blank, the non-speech symbols) take no tiktoken object.

tiktoken's ``Encoding`` keeps its byte-pair ranks twice (a Python dict and Rust hash maps,
~25 MB for Whisper's ~50,000 tokens, measured); a list of the tokens' bytes is ~3 MB. Text
in general (prompts, prefixes) is still encoded by tiktoken, built from this vocabulary the
first time such text comes: :meth:`Vocabulary.encode` gives tiktoken's ids for every text.

The API is the part of ``tiktoken.Encoding`` that Whisper's tokenizer uses (``encode``,
``decode``, ``decode_bytes``, ``decode_single_token_bytes``, ``encode_single_token``,
``n_vocab``, ``eot_token``, ``special_tokens_set``), with tiktoken's results and errors."""

from __future__ import annotations

import binascii
import itertools
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

__all__ = ["TokenBytes", "Vocabulary", "read_token_bytes"]


class TokenBytes(Sequence):
    """Token bytes by id, held as one ``bytes`` blob and the end offset of each token (a list
    of 50,000 small ``bytes`` objects would take ~3 times the memory, and the objects made
    while reading the file would stay scattered among them). ``tokens[i]``: the bytes of id
    ``i``, or None where the vocabulary gives no token that rank."""

    def __init__(self, blob: bytes, ends: array, present: bytes):
        self._blob, self._ends, self._present = blob, ends, present

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not self._present[i]:
            return None
        return self._blob[self._ends[i - 1] if i > 0 else 0 : self._ends[i]]

    def __iter__(self):
        blob, start = self._blob, 0
        for end, here in zip(self._ends, self._present):
            yield blob[start:end] if here else None
            start = end

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


def read_token_bytes(path: str) -> TokenBytes:
    """A ``.tiktoken`` vocabulary (one ``base64(token bytes) rank`` pair a line), indexed by
    rank; a rank no line gives is None."""
    with open(path, "rb") as file:
        fields = file.read().split()
    if len(fields) % 2:
        raise ValueError(f"read_token_bytes: {path} is not a vocabulary (a line without its rank)")
    ranks = list(map(int, fields[1::2]))
    size = max(ranks, default=-1) + 1
    by_rank: list[bytes] = [b""] * size
    present = bytearray(size)
    for encoded, rank in zip(fields[0::2], ranks):
        if rank < 0 or present[rank]:
            raise ValueError(f"read_token_bytes: {path} gives rank {rank} twice (or a negative one)")
        by_rank[rank], present[rank] = binascii.a2b_base64(encoded), 1
    del fields, ranks
    ends = array("q", itertools.accumulate(map(len, by_rank)))
    return TokenBytes(b"".join(by_rank), ends, bytes(present))


def _simple_piece(text: str) -> bool:
    """Whether ``text`` is one piece of GPT-2's pre-tokenizer split on its own: one or more
    ASCII spaces, or an optional space and then punctuation and symbols only (Unicode
    categories P* and S*: never ``\\s``, ``\\p{L}`` or ``\\p{N}``, so the split's
    `` ?[^\\s\\p{L}\\p{N}]+`` takes the whole text)."""
    if not text:
        return False
    if text.strip(" ") == "":
        return True  # spaces to the end: the split's "\s+(?!\S)"
    body = text[1:] if text[0] == " " else text
    return bool(body) and all(unicodedata.category(c)[0] in "PS" for c in body)


class Vocabulary:
    """Token bytes by id (``tokens[i]``: the bytes of id ``i``, whose rank is ``i``) and the
    special tokens (name -> id) of one encoding; ``pat_str``: its pre-tokenizer split regex."""

    def __init__(
        self, name: str, tokens: Sequence[bytes | None], special_tokens: dict[str, int], pat_str: str
    ):
        self.name = name
        self.tokens = tokens
        self._special_tokens = dict(special_tokens)
        self._special_names = {token: name.encode("utf-8") for name, token in self._special_tokens.items()}
        self._pat_str = pat_str
        self._tiktoken: tiktoken.Encoding | None = None
        self._ranks: dict[bytes, int | None] = {}  # piece encoding's lookups (None: not a token)
        self._first_chars = {name[:2] for name in self._special_tokens}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tiktoken": None}  # rebuilt where it is needed

    @property
    def n_vocab(self) -> int:
        return max([len(self.tokens), *(t + 1 for t in self._special_tokens.values())])

    @property
    def max_token_value(self) -> int:
        return self.n_vocab - 1

    @property
    def eot_token(self) -> int:
        return self._special_tokens["<|endoftext|>"]

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._special_tokens)

    def encode_single_token(self, text: str | bytes) -> int:
        """The id of a special token's name or of one ordinary token's text or bytes."""
        if isinstance(text, str):
            if text in self._special_tokens:
                return self._special_tokens[text]
            text = text.encode("utf-8")
        try:
            return self.tokens.index(text)
        except ValueError:
            raise KeyError(text) from None

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of id ``token`` (a special token's: its name)."""
        if 0 <= token < len(self.tokens) and self.tokens[token] is not None:
            return self.tokens[token]
        if token in self._special_names:
            return self._special_names[token]
        raise KeyError(f"Invalid token for decoding: {token}")

    def decode_bytes(self, tokens: Iterable[int]) -> bytes:
        return b"".join(map(self.decode_single_token_bytes, tokens))

    def decode(self, tokens: Iterable[int], errors: str = "replace") -> str:
        """Ids to text, a character split between tokens (or cut off) per ``errors``."""
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        """tiktoken's ``Encoding.encode(text, allowed_special=..., disallowed_special=...)``.
        A text that is one piece of the pre-tokenizer split and holds no special token's
        start (``<|``) is merged here, over this vocabulary's ranks (tiktoken's byte-pair
        rule: the adjacent pair whose merge has the lowest rank first, the leftmost among
        equals); other text goes to tiktoken."""
        if not text:
            return []
        if _simple_piece(text) and not any(start in text for start in self._first_chars):
            return self._merge(text.encode("utf-8"))
        return self.tiktoken().encode(
            text, allowed_special=allowed_special, disallowed_special=disallowed_special
        )

    def preload(self, texts: Iterable[str]) -> None:
        """Look up at once the ranks :meth:`encode` will want for simple pieces ``texts`` (one
        pass over the vocabulary for all, not one per text)."""
        self._look_up(
            {piece for text in texts if _simple_piece(text) for piece in _spans(text.encode("utf-8"))}
        )

    def _look_up(self, pieces: set[bytes]) -> None:
        missing = pieces - self._ranks.keys()
        if not missing:
            return
        found = {token: rank for rank, token in enumerate(self.tokens) if token in missing}
        self._ranks.update({piece: found.get(piece) for piece in missing})

    def _merge(self, piece: bytes) -> list[int]:
        self._look_up(set(_spans(piece)))
        ranks = self._ranks
        if ranks[piece] is not None:
            return [ranks[piece]]  # a whole token (tiktoken looks it up before merging)
        bounds = list(range(len(piece) + 1))
        while len(bounds) > 2:
            best, at = None, -1
            for i in range(len(bounds) - 2):
                rank = ranks[piece[bounds[i] : bounds[i + 2]]]
                if rank is not None and (best is None or rank < best):
                    best, at = rank, i
            if best is None:
                break
            del bounds[at + 1]
        out = [ranks[piece[a:b]] for a, b in zip(bounds, bounds[1:])]
        if None in out:
            raise ValueError(f"Vocabulary.encode: {piece!r} has a byte that is no token of {self.name}")
        return out

    def tiktoken(self) -> tiktoken.Encoding:
        """tiktoken's encoding of this vocabulary, built on first use (~25 MB, ~0.1 s)."""
        if self._tiktoken is None:
            import tiktoken

            self._tiktoken = tiktoken.Encoding(
                name=self.name,
                explicit_n_vocab=self.n_vocab,
                pat_str=self._pat_str,
                mergeable_ranks={token: rank for rank, token in enumerate(self.tokens) if token is not None},
                special_tokens=self._special_tokens,
            )
        return self._tiktoken


def _spans(piece: bytes) -> Sequence[bytes]:
    """Every non-empty span of ``piece`` (the merges of its bytes can only make these)."""
    n = len(piece)
    return [piece[i:j] for i in range(n) for j in range(i + 1, n + 1)]
