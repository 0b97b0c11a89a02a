"""kvgraph's torch-free Whisper tokenizer (models/whisper/decoding/tokenizer.py) against
openai-whisper's own (whisper/tokenizer.py) as the oracle: the encodings, every property of the
tokenizers, encode/decode on real and random inputs, word splitting and the language tables."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from models.whisper.decoding import tokenizer as ours
from models.whisper.decoding import vocabulary

theirs = pytest.importorskip("whisper.tokenizer")

# (multilingual, num_languages, language, task)
CONFIGS = [
    (False, 99, None, None),
    (False, 99, "en", "transcribe"),  # English-only: language and task dropped
    (True, 99, None, None),  # multilingual defaults: en, transcribe
    (True, 99, "de", "translate"),
    (True, 99, "Japanese", None),  # a name, any case
    (True, 99, "mandarin", "transcribe"),  # an alias
    (True, 100, None, None),
    (True, 100, "yue", "translate"),  # the 100th language
    (True, 100, "zh", None),
    (True, 99, "th", "transcribe"),
]

PROPERTIES = [
    "language",
    "task",
    "num_languages",
    "sot_sequence",
    "eot",
    "transcribe",
    "translate",
    "sot",
    "sot_lm",
    "sot_prev",
    "no_speech",
    "no_timestamps",
    "timestamp_begin",
    "sot_sequence_including_notimestamps",
    "non_speech_tokens",
]

TEXTS = [
    "",
    " ",
    "   leading spaces",
    "And so, my fellow Americans: ask not what your country can do for you.",
    "Hello, world!? (yes) [no] {maybe} -- 'quoted' \"double\" ... ♪♪ ♪",
    "It's 3.14159 — 1,000,000 dollars in 2024; 42% of 7/8.",
    "Über die Straße, Fräulein Müller schießt ß und Ä.",
    "我们今天去北京天安门广场。你好吗？",
    "今日は良い天気ですね。カタカナとひらがな、漢字。",
    "emoji 😀🎉👍🏽 and flags 🇩🇪 mixed 🤖",
    "tabs\tand\nnewlines\r\n  trailing   ",
    "\ufffd a genuine replacement char \ufffd",
    "สวัสดีครับ ภาษาไทย",
]


def pair(config):
    """(ours, theirs) tokenizers for a CONFIGS row."""
    multilingual, num_languages, language, task = config
    kwargs = dict(num_languages=num_languages, language=language, task=task)
    return ours.get_tokenizer(multilingual, **kwargs), theirs.get_tokenizer(multilingual, **kwargs)


def test_language_tables_equal_in_order():
    assert list(ours.LANGUAGES.items()) == list(theirs.LANGUAGES.items())
    assert list(ours.TO_LANGUAGE_CODE.items()) == list(theirs.TO_LANGUAGE_CODE.items())
    assert ours.language_tables() == (theirs.LANGUAGES, theirs.TO_LANGUAGE_CODE)
    with pytest.raises(AttributeError):
        ours.NOT_A_TABLE  # noqa: B018


@pytest.mark.parametrize("name", ["gpt2", "multilingual"])
@pytest.mark.parametrize("num_languages", [99, 100])
def test_encoding_equal(name, num_languages):
    mine, oracle = ours.get_encoding(name, num_languages), theirs.get_encoding(name, num_languages)
    assert mine is ours.get_encoding(name, num_languages)  # cached per (name, num_languages)
    assert mine.name == oracle.name
    assert mine.n_vocab == oracle.n_vocab
    assert mine.eot_token == oracle.eot_token
    assert mine.special_tokens_set == oracle.special_tokens_set
    assert mine.tokens == sorted(oracle._mergeable_ranks, key=oracle._mergeable_ranks.get)  # id order
    built = mine.tiktoken()  # tiktoken's own, built from the vocabulary for general text
    assert built is mine.tiktoken()
    assert built.name == oracle.name and built._pat_str == oracle._pat_str
    assert built._mergeable_ranks == oracle._mergeable_ranks
    assert list(built._special_tokens.items()) == list(oracle._special_tokens.items())  # same order, ids
    for token in (0, 220, oracle.eot_token, oracle.n_vocab - 1):
        assert mine.decode_single_token_bytes(token) == oracle.decode_single_token_bytes(token)
        text = oracle.decode([token])
        if token < oracle.eot_token:
            assert mine.encode_single_token(text) == oracle.encode_single_token(text) == token
    assert mine.encode_single_token("<|endoftext|>") == oracle.eot_token
    big = oracle.n_vocab  # past the end: a KeyError from both (tiktoken's -1 is an OverflowError)
    assert _outcome(mine.decode_single_token_bytes, big) is _outcome(oracle.decode_single_token_bytes, big)
    assert _outcome(mine.decode_single_token_bytes, -1) is KeyError
    assert _outcome(mine.encode_single_token, "not one token") is KeyError


#: texts that are one piece of the pre-tokenizer split (encoded without tiktoken) and some
#: that look alike but are not (tiktoken's): symbols, spaces, letters and digits mixed in
PIECES = (
    [
        " ",
        "  ",
        "   ",
        " -",
        " '",
        "-",
        "'",
        "...",
        " ...",
        "?!",
        " ?!",
        "♪",
        " ♪",
        "♪♪♪",
        " ♩♫",
        "「」",
        " 『",
        "<<",
        ">>>",
        " (((",
        "-- ---",
        "\t",
        " \u2014",
        "€",
        " ¥$",
        "«»",
        "\U0001f600",
        " \U0001f600\U0001f389",
        "(a)",
        " -1",
        " x",
        "\n",
        " \n",
        "  -",
        "a",
        "'s",
        "_",
        "<|",
        "<|x",
    ]
    + [chr(c) for c in range(33, 127)]
    + [" " + chr(c) for c in range(33, 127)]
)


@pytest.mark.parametrize("name", ["gpt2", "multilingual"])
def test_pieces_encode_without_tiktoken_as_tiktoken_does(name):
    mine, oracle = ours.get_encoding(name), theirs.get_encoding(name)
    fresh = vocabulary.Vocabulary(
        mine.name,
        mine.tokens,
        {n: mine.encode_single_token(n) for n in mine.special_tokens_set},
        mine._pat_str,
    )
    rng = random.Random(name)
    symbols = "".join(chr(c) for c in range(33, 0x3000) if unicodedata.category(chr(c))[0] in "PS")
    texts = PIECES + ["".join(rng.choices(symbols, k=rng.randint(1, 8))) for _ in range(300)]
    texts += [" " + t for t in texts[-150:]]
    fresh.preload(texts[: len(texts) // 2])  # half looked up at once, half one text at a time
    for text in texts:
        assert fresh.encode(text) == oracle.encode(text, disallowed_special=()), text
    assert fresh._tiktoken is not None  # the texts that are not simple pieces went to tiktoken
    simple = [t for t in texts if vocabulary._simple_piece(t)]
    assert len(simple) > 300
    again = vocabulary.Vocabulary(mine.name, mine.tokens, {}, mine._pat_str)
    for text in simple:
        assert again.encode(text) == oracle.encode(text), text
    assert again.encode("") == oracle.encode("") == []
    assert again._tiktoken is None  # every simple piece (and the empty text) merged here


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_tokenizer_properties_equal(config):
    mine, oracle = pair(config)
    assert mine is pair(config)[0]  # get_tokenizer is cached, as openai's
    for name in PROPERTIES:
        assert getattr(mine, name) == getattr(oracle, name), name
    assert mine.special_tokens == oracle.special_tokens
    assert list(mine.special_tokens.values()) == sorted(mine.special_tokens.values())
    # openai-whisper orders the language tokens as a set of strings iterates; ours is id order
    assert mine.all_language_tokens == tuple(sorted(oracle.all_language_tokens))
    assert dict(zip(mine.all_language_tokens, mine.all_language_codes)) == dict(
        zip(oracle.all_language_tokens, oracle.all_language_codes)
    )
    assert list(mine.all_language_codes) == list(ours.LANGUAGES)[: config[1]]
    if oracle.language is None:
        with pytest.raises(ValueError):
            _ = mine.language_token
    else:
        assert mine.language_token == oracle.language_token
    for code in ["en", "de", "yue", "xx"]:
        expected = _outcome(oracle.to_language_token, code)
        assert _outcome(mine.to_language_token, code) == expected, code


def _outcome(fn, *args, **kwargs):
    """fn's result, or the type of the exception it raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - the oracle's error type is the expected value
        return type(error)


@pytest.mark.parametrize(
    "multilingual, kwargs",
    [
        (True, dict(language="klingon")),
        (False, dict(language="klingon")),
        (True, dict(language="yue", num_languages=99)),
        (True, dict(language="cantonese", num_languages=99)),
    ],
)
def test_errors_match(multilingual, kwargs):
    expected = _outcome(theirs.get_tokenizer, multilingual, **kwargs)
    assert expected is ValueError
    assert _outcome(ours.get_tokenizer, multilingual, **kwargs) is expected


def test_tokenizer_built_directly_matches():
    for task in ["transcribe", "translate", "other"]:  # any task but transcribe reads as translate
        mine = ours.Tokenizer(ours.get_encoding("multilingual"), num_languages=99, language="fr", task=task)
        oracle = theirs.Tokenizer(
            theirs.get_encoding("multilingual"), num_languages=99, language="fr", task=task
        )
        assert mine.sot_sequence == oracle.sot_sequence


@pytest.mark.parametrize("config", CONFIGS[::3], ids=str)
def test_encode_decode_texts(config):
    mine, oracle = pair(config)
    for text in TEXTS:
        tokens = oracle.encode(text)
        assert mine.encode(text) == tokens, text
        assert mine.decode(tokens) == oracle.decode(tokens) == text
        framed = [
            *oracle.sot_sequence,
            oracle.timestamp_begin + 7,
            *tokens,
            oracle.timestamp_begin + 54,
            oracle.eot,
        ]
        assert mine.decode(framed) == oracle.decode(framed)
        assert mine.decode_with_timestamps(framed) == oracle.decode_with_timestamps(framed)
    special_text = "a <|endoftext|> b <|0.00|>"
    assert mine.encode(special_text, allowed_special="all") == oracle.encode(
        special_text, allowed_special="all"
    )
    assert _outcome(mine.encode, special_text) is _outcome(oracle.encode, special_text) is ValueError
    # the check for special names is skipped only where no name can be: text without "<|"
    for text in ("<|en|>", "x<|startoftranscript|>", "<|30.00|>"):
        assert _outcome(mine.encode, text) is _outcome(oracle.encode, text) is ValueError, text
    for text in ("a <| b |>", "<|", "|> <|notatoken|>"):
        assert mine.encode(text) == oracle.encode(text), text
    assert mine.encode(special_text, disallowed_special=()) == oracle.encode(
        special_text, disallowed_special=()
    )
    assert mine.decode_with_timestamps([oracle.timestamp_begin + 54]) == "<|1.08|>"
    # a user's text (prompt, prefix): the same refusals, as one line naming the text and the token
    for text in TEXTS + ["a <| b |>", "|> <|notatoken|>"]:
        assert mine.encode_text(text, "prompt") == oracle.encode(text), text
    with pytest.raises(ValueError, match=r"^initial_prompt holds '<\|endoftext\|>', a special token's name"):
        mine.encode_text(special_text, "initial_prompt")


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[7]], ids=str)
def test_decode_random_token_ids(config):
    mine, oracle = pair(config)
    rng = random.Random(0)
    n_vocab = oracle.encoding.n_vocab
    specials = sorted(oracle.special_tokens.values())
    for _ in range(300):
        length = rng.randint(0, 40)
        tokens = [
            rng.randrange(n_vocab) if rng.random() < 0.7 else rng.choice(specials) for _ in range(length)
        ]
        assert mine.decode(tokens) == oracle.decode(tokens)
        assert mine.decode_with_timestamps(tokens) == oracle.decode_with_timestamps(tokens)
        assert mine.decode(tokens, errors="ignore") == oracle.decode(tokens, errors="ignore")


def _word_cases(oracle, rng):
    """Token lists as the word-timestamp code sees them (text tokens + eot), whole, cut at
    random places (mid-character), with random ids (stray bytes) and timestamps mixed in."""
    cases = []
    for text in TEXTS:
        tokens = oracle.encode(text)
        cases.append([*tokens, oracle.eot])
        cases.append(tokens)
        for _ in range(6):
            cut = tokens[rng.randint(0, len(tokens)) :][: rng.randint(0, len(tokens))]
            cases.append([*cut, oracle.eot])
    for _ in range(60):
        tokens = [rng.randrange(oracle.eot) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.5:
            tokens.insert(rng.randint(0, len(tokens)), oracle.timestamp_begin + rng.randrange(1501))
        cases.append([*tokens, oracle.eot])
    return cases


@pytest.mark.parametrize("language", ["en", "de", "zh", "ja", "th", "yue"])
def test_split_to_word_tokens(language):
    mine, oracle = pair((True, 100, language, None))
    for tokens in _word_cases(oracle, random.Random(language)):
        assert mine.split_to_word_tokens(tokens) == oracle.split_to_word_tokens(list(tokens)), tokens


def test_split_has_multi_token_characters():
    """The cases above do exercise cut characters: a Chinese text whose characters take several
    tokens, split into one piece per character, and English split at spaces only."""
    mine, oracle = pair((True, 99, "zh", None))
    tokens = [*oracle.encode("北京天安门广场😀"), oracle.eot]
    words, word_tokens = mine.split_to_word_tokens(tokens)
    assert (words, word_tokens) == oracle.split_to_word_tokens(list(tokens))
    assert any(len(group) > 1 for group in word_tokens)
    assert "".join(words) == oracle.decode_with_timestamps(tokens)
    english, _ = pair((False, 99, None, None))
    assert english.split_to_word_tokens(english.encode(" Hello, world."))[0] == [" Hello", ",", " world", "."]


CHILD = """
import json, sys
import models.whisper.decoding.tokenizer as tokenizer
report = {"after_import": sorted(m for m in ("torch", "whisper", "numpy", "tiktoken") if m in sys.modules)}
tok = tokenizer.get_tokenizer(True, language="de", task="translate")
text = tok.decode([*tok.sot_sequence, 12524, 4235, 2111, tok.eot])
_ = (tok.non_speech_tokens, tok.split_to_word_tokens([12524, 4235, 2111, tok.eot]), tokenizer.TO_LANGUAGE_CODE)
report["after_build"] = sorted(m for m in ("torch", "whisper", "numpy", "tiktoken") if m in sys.modules)
_ = tok.encode("Ein Satz, und noch einer.")
report["after_text"] = sorted(m for m in ("torch", "whisper", "numpy", "tiktoken") if m in sys.modules)
report["text"] = text
print(json.dumps(report))
"""


def test_torch_and_whisper_never_imported():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # decoding, the decode loop's own pieces and word splitting take no tiktoken; other text does
    tok = ours.get_tokenizer(True, language="de", task="translate")
    expected = tok.decode([*tok.sot_sequence, 12524, 4235, 2111, tok.eot])
    assert report == {"after_import": [], "after_build": [], "after_text": ["tiktoken"], "text": expected}
