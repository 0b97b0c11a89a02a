"""Whisper's tokenizer on tiktoken, without torch or openai-whisper imported: the same encodings
(byte-pair ranks, special tokens, ids, split regex), the same :class:`Tokenizer` API and the same
language tables as openai-whisper's ``whisper/tokenizer.py``, so code written against openai's
tokenizer runs on this one and gets the same ids and strings.

The data is openai-whisper's own, read as files from the installed package (never imported):
the vocabularies ``whisper/assets/{gpt2,multilingual}.tiktoken`` and the language tables, which
are the dict literals of ``whisper/tokenizer.py`` read with :mod:`ast`. ``LANGUAGES`` (code ->
name) and ``TO_LANGUAGE_CODE`` (name or alias -> code) are module attributes loaded on first
use. Decoding and the decode loop's own short pieces need no tiktoken (:mod:`vocabulary`);
tiktoken is imported only when other text is encoded (a prompt, a prefix)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from models.whisper.decoding.vocabulary import Vocabulary, read_token_bytes

if TYPE_CHECKING:
    # loaded on first access by the module __getattr__ below
    LANGUAGES: dict[str, str]
    TO_LANGUAGE_CODE: dict[str, str]

__all__ = [
    "LANGUAGES",
    "TO_LANGUAGE_CODE",
    "Tokenizer",
    "get_encoding",
    "get_tokenizer",
    "language_tables",
    "special_token_names",
]

#: GPT-2's pre-tokenizer split regex (openai-whisper's tokenizer.py, get_encoding)
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: special tokens before the language tokens, in id order (openai-whisper's get_encoding)
LEADING_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>")
#: special tokens between the language tokens and the timestamps, in id order (same source)
TRAILING_SPECIALS = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
#: timestamp tokens <|0.00|> .. <|30.00|>, one per 0.02 s (same source: 1501 of them)
N_TIMESTAMPS = 1501

#: languages written without spaces between words, split into words at unicode boundaries
#: (openai-whisper's Tokenizer.split_to_word_tokens)
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})

#: symbols whose tokens are suppressed when a single token, with or without a leading space
#: (openai-whisper's Tokenizer.non_speech_tokens: speaker tags, annotations, music)
NON_SPEECH_SYMBOLS = (
    *'"#()*+/:;<=>@[\\]^_`{|}~「」『』',
    *"<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split(),
)
#: music symbols (U+2640..U+267F, sharing their first two UTF-8 bytes) whose first token is
#: suppressed even when they take several tokens (same source)
MUSIC_SYMBOLS = "♩♪♫♬♭♮♯"

REPLACEMENT_CHAR = "\ufffd"


def whisper_package_dir() -> str:
    """The folder of the installed openai-whisper package, found without importing it."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("whisper: openai-whisper is not installed (its tokenizer data is read)")
    return spec.submodule_search_locations[0]


def module_assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """The value expressions of a module's top-level ``NAME = value`` assignments, by name."""
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            found[target.id] = value
    return found


def compose_to_language_code(node: ast.expr, languages: dict[str, str]) -> dict[str, str]:
    """``TO_LANGUAGE_CODE`` from its dict literal in openai's source: each ``**{...}`` spread is
    the name -> code inverse of ``LANGUAGES`` (a comprehension there), each ``"alias": "code"``
    pair is read literally, merged in the literal's order."""
    if not isinstance(node, ast.Dict):
        raise ValueError("TO_LANGUAGE_CODE: openai-whisper's tokenizer.py no longer assigns a dict literal")
    table: dict[str, str] = {}
    for key, value in zip(node.keys, node.values):
        if key is None:
            if not isinstance(value, ast.DictComp):
                raise ValueError("TO_LANGUAGE_CODE: a ** spread that is not the LANGUAGES inverse")
            table.update({name: code for code, name in languages.items()})
        else:
            table[ast.literal_eval(key)] = ast.literal_eval(value)
    return table


@functools.cache
def language_tables() -> tuple[dict[str, str], dict[str, str]]:
    """``(LANGUAGES, TO_LANGUAGE_CODE)`` read from the installed ``whisper/tokenizer.py``:
    language code -> English name (in token order), and name or alias -> code."""
    path = os.path.join(whisper_package_dir(), "tokenizer.py")
    with open(path, encoding="utf-8") as source:
        assignments = module_assignments(ast.parse(source.read(), filename=path))
    missing = {"LANGUAGES", "TO_LANGUAGE_CODE"} - assignments.keys()
    if missing:
        raise ValueError(f"{path}: no module-level {', '.join(sorted(missing))}")
    languages = ast.literal_eval(assignments["LANGUAGES"])
    return languages, compose_to_language_code(assignments["TO_LANGUAGE_CODE"], languages)


def __getattr__(name: str):
    """``LANGUAGES`` and ``TO_LANGUAGE_CODE``, read on first access (see :func:`language_tables`)."""
    if name == "LANGUAGES":
        return language_tables()[0]
    if name == "TO_LANGUAGE_CODE":
        return language_tables()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "LANGUAGES", "TO_LANGUAGE_CODE"})


def timestamp_token_name(index: int) -> str:
    """The special token of timestamp ``index`` (0.02 s steps): ``<|0.00|>``, ``<|1.08|>``, ..."""
    return f"<|{index // 50}.{index % 50 * 2:02d}|>"


def special_token_names(num_languages: int = 99) -> list[str]:
    """Whisper's special tokens in id order; the first one's id is the vocabulary's size."""
    codes = list(language_tables()[0])[:num_languages]
    return [
        *LEADING_SPECIALS,
        *(f"<|{code}|>" for code in codes),
        *TRAILING_SPECIALS,
        *(timestamp_token_name(i) for i in range(N_TIMESTAMPS)),
    ]


@functools.cache
def get_encoding(name: str = "gpt2", num_languages: int = 99) -> Vocabulary:
    """The encoding ``name`` (``"gpt2"`` or ``"multilingual"``) with Whisper's special tokens
    for its first ``num_languages`` languages, as a :class:`Vocabulary` (tiktoken's ids and
    strings; tiktoken itself built only for text that needs it); one object per (name,
    num_languages)."""
    path = os.path.join(whisper_package_dir(), "assets", f"{name}.tiktoken")
    if not os.path.isfile(path):
        raise ValueError(f"get_encoding: no vocabulary {name!r} ({path} is missing)")
    tokens = read_token_bytes(path)
    specials = {token: len(tokens) + i for i, token in enumerate(special_token_names(num_languages))}
    return Vocabulary(os.path.basename(path), tokens, specials, SPLIT_PATTERN)


@dataclass
class Tokenizer:
    """An encoding (:class:`Vocabulary`) with Whisper's special tokens by name, its start-of-transcript
    sequence (``<|startoftranscript|>`` [language] [task]) and word splitting for timestamps.

    ``special_tokens`` holds every special token name -> id, in id order; ``sot_sequence`` is
    computed from ``language`` and ``task`` (any task but ``"transcribe"`` reads as translate,
    as in openai-whisper)."""

    encoding: Vocabulary
    num_languages: int
    language: str | None = None
    task: str | None = None
    sot_sequence: tuple[int, ...] = ()
    special_tokens: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = {name: self.encoding.encode_single_token(name) for name in self.encoding.special_tokens_set}
        self.special_tokens.update(sorted(ids.items(), key=lambda item: item[1]))
        self.sot_sequence = self.start_sequence()

    def start_sequence(self) -> tuple[int, ...]:
        """``<|startoftranscript|>``, then the language token if any, then the task token if any."""
        sequence = [self.sot]
        if self.language is not None:
            codes = tuple(language_tables()[0])[: self.num_languages]
            if self.language not in codes:
                raise ValueError(
                    f"Tokenizer.language: {self.language!r} is not one of the first {self.num_languages} languages"
                )
            sequence.append(self.sot + 1 + codes.index(self.language))
        if self.task is not None:
            sequence.append(self.transcribe if self.task == "transcribe" else self.translate)
        return tuple(sequence)

    def encode(self, text: str, **kwargs) -> list[int]:
        """``text`` to token ids (tiktoken's ``Encoding.encode`` and its keyword arguments).

        tiktoken refuses text holding a special token's name unless told otherwise; to check, it
        builds a regular expression of all ~1,600 names on first use (~0.2 s of a process's
        start). Every name starts with ``<|``, so text without one cannot hold any and skips it."""
        if "<|" not in text and "disallowed_special" not in kwargs:
            kwargs["disallowed_special"] = ()
        return self.encoding.encode(text, **kwargs)

    def encode_text(self, text: str, what: str) -> list[int]:
        """:meth:`encode` of a user's text (a prompt, a prefix): a special token's name in it
        is a ValueError naming ``what`` and the token (openai-whisper refuses such text too,
        with tiktoken's advice on its own arguments)."""
        try:
            return self.encode(text)
        except ValueError:
            found = [name for name in self.encoding.special_tokens_set if name in text]
            if not found:
                raise
            first = min(found, key=text.index)  # the first in the text
            raise ValueError(
                f"{what} holds {first!r}, a special token's name, which text cannot hold"
            ) from None

    def decode(self, token_ids: Iterable[int], **kwargs) -> str:
        """Token ids to text, timestamp tokens left out."""
        first_timestamp = self.timestamp_begin
        return self.encoding.decode([t for t in token_ids if t < first_timestamp], **kwargs)

    def decode_with_timestamps(self, token_ids: Sequence[int], **kwargs) -> str:
        """Token ids to text, timestamp tokens written as ``<|1.08|>``."""
        return self.encoding.decode(token_ids, **kwargs)

    @functools.cached_property
    def eot(self) -> int:
        return self.encoding.eot_token

    @functools.cached_property
    def transcribe(self) -> int:
        return self.special_tokens["<|transcribe|>"]

    @functools.cached_property
    def translate(self) -> int:
        return self.special_tokens["<|translate|>"]

    @functools.cached_property
    def sot(self) -> int:
        return self.special_tokens["<|startoftranscript|>"]

    @functools.cached_property
    def sot_lm(self) -> int:
        return self.special_tokens["<|startoflm|>"]

    @functools.cached_property
    def sot_prev(self) -> int:
        return self.special_tokens["<|startofprev|>"]

    @functools.cached_property
    def no_speech(self) -> int:
        return self.special_tokens["<|nospeech|>"]

    @functools.cached_property
    def no_timestamps(self) -> int:
        return self.special_tokens["<|notimestamps|>"]

    @functools.cached_property
    def timestamp_begin(self) -> int:
        """The id of ``<|0.00|>``; every id from it up is a timestamp."""
        return self.special_tokens["<|0.00|>"]

    @functools.cached_property
    def language_token(self) -> int:
        """The token of ``language``; ValueError when the tokenizer has none."""
        if self.language is None:
            raise ValueError("Tokenizer.language_token: this tokenizer has no language")
        return self.to_language_token(self.language)

    def to_language_token(self, language: str) -> int:
        """The token of language code ``language``; KeyError when the encoding lacks it."""
        token = self.special_tokens.get(f"<|{language}|>")
        if not token:
            raise KeyError(f"Tokenizer.to_language_token: language {language!r} is not in the encoding")
        return token

    @functools.cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        """The language tokens of the encoding, in id order (openai-whisper lists the same ids
        in the iteration order of a set of strings, which varies from process to process)."""
        languages = language_tables()[0]
        found = [token for name, token in self.special_tokens.items() if name.strip("<|>") in languages]
        return tuple(found)[: self.num_languages]

    @functools.cached_property
    def all_language_codes(self) -> tuple[str, ...]:
        """The language codes of :attr:`all_language_tokens`, in the same order."""
        return tuple(self.decode([token]).strip("<|>") for token in self.all_language_tokens)

    @functools.cached_property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Sorted ids to suppress so that no speaker tags, annotations or music notes are
        sampled (``[DAVID]``, ``( SPEAKING FOREIGN LANGUAGE )``, ``♪♪♪``) while ordinary
        punctuation stays; " -" and " '" are suppressed only at the start of a word."""
        every = [*NON_SPEECH_SYMBOLS, *MUSIC_SYMBOLS]
        self.encoding.preload([" -", " '", *every, *(" " + symbol for symbol in every)])
        suppressed = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in NON_SPEECH_SYMBOLS:
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1:
                    suppressed.add(tokens[0])
        for symbol in MUSIC_SYMBOLS:
            suppressed.add(self.encode(symbol)[0])
            suppressed.add(self.encode(" " + symbol)[0])
        return tuple(sorted(suppressed))

    def split_to_word_tokens(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """``(words, word_tokens)``: ``tokens`` cut into words for word timestamps, at spaces,
        or at every complete character for languages written without spaces."""
        if self.language in NO_SPACE_LANGUAGES:
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """``tokens`` cut into the shortest runs that decode to whole characters. A run is
        complete once its text has no U+FFFD, or when its first U+FFFD is also in the text of
        all ``tokens`` at that place (a genuine replacement character, not a cut one); tokens
        after the last complete run are dropped."""
        full_text = self.decode_with_timestamps(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        run: list[int] = []
        offset = 0  # characters of full_text covered by the runs so far
        for token in tokens:
            run.append(token)
            text = self.decode_with_timestamps(run)
            cut_at = text.find(REPLACEMENT_CHAR)
            if cut_at < 0 or full_text[offset + cut_at] == REPLACEMENT_CHAR:
                words.append(text)
                word_tokens.append(run)
                offset += len(text)
                run = []
        return words, word_tokens

    def split_tokens_on_spaces(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """``tokens`` cut into words: a piece of :meth:`split_tokens_on_unicode` starts a new
        word when it is a special token, starts with a space or is punctuation, and otherwise
        joins the word before it."""
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for piece, piece_tokens in zip(*self.split_tokens_on_unicode(tokens)):
            # a substring test, as openai-whisper's: "" and runs such as ",-." count as punctuation
            punctuation = piece.strip() in string.punctuation
            if not words or piece_tokens[0] >= self.eot or piece.startswith(" ") or punctuation:
                words.append(piece)
                word_tokens.append(piece_tokens)
            else:
                words[-1] += piece
                word_tokens[-1].extend(piece_tokens)
        return words, word_tokens


@functools.cache
def get_tokenizer(
    multilingual: bool,
    *,
    num_languages: int = 99,
    language: str | None = None,
    task: str | None = None,
) -> Tokenizer:
    """The tokenizer of a multilingual model (language defaults to ``"en"``, task to
    ``"transcribe"``) or of an English-only one (no language, no task: ``language`` is only
    checked). ``language`` is a code or an English name or alias, in any case; ValueError
    when unknown. One object per argument set, as openai-whisper's."""
    if language is not None:
        language = language_code(language)
    if multilingual:
        encoding = get_encoding(name="multilingual", num_languages=num_languages)
        language, task = language or "en", task or "transcribe"
    else:
        encoding = get_encoding(name="gpt2", num_languages=num_languages)
        language, task = None, None
    return Tokenizer(encoding=encoding, num_languages=num_languages, language=language, task=task)


def language_code(language: str) -> str:
    """The code of ``language``: a code or a name or alias (any case); ValueError when unknown."""
    languages, to_code = language_tables()
    key = language.lower()
    if key in languages:
        return key
    if key in to_code:
        return to_code[key]
    raise ValueError(f"Unsupported language: {key}")
