"""kvgraph's NumPy logit filters and token decoders (``models/whisper/decoding/filters.py``,
``search.py``) against openai-whisper's torch ones as the oracle, on the same logits: the
filters' -inf masks, torch's float32 ``log_softmax`` and ``topk`` order bit for bit, greedy
and beam search step by step (tokens, ``sum_logprobs``, finished sequences, the rows handed
to ``rearrange_kv_cache``, ``finalize``), the ranker, and the sampling distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_probs_match_torch
from whisper import decoding as oa
from whisper.tokenizer import get_tokenizer

from models.whisper.decoding import filters as kf
from models.whisper.decoding import search as ks
from models.whisper.decoding import torch_float as tf

VOCABS = {51865: True, 51864: False}  # multilingual / English-only

# openai's beam finalize runs np.argsort on a torch tensor, which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


@pytest.fixture(scope="module", params=sorted(VOCABS), ids=lambda v: f"vocab{v}")
def tokenizer(request):
    tok = get_tokenizer(VOCABS[request.param], num_languages=99)
    assert tok.encoding.n_vocab == request.param
    return tok


# --------------------------------------------------------------------------
# Random inputs


def random_logits(rng, n_rows: int, tok, ts_shift=(-4.0, 6.0), spike=(0.0, 12.0)) -> np.ndarray:
    """Text logits ~N(0, 2) with one spiked text token per row; timestamps shifted so the
    timestamp-mass rule goes both ways."""
    x = (rng.standard_normal((n_rows, tok.encoding.n_vocab)) * 2).astype(np.float32)
    tb = tok.timestamp_begin
    x[:, tb:] += rng.uniform(*ts_shift, size=(n_rows, 1)).astype(np.float32)
    x[np.arange(n_rows), rng.integers(0, tok.eot, n_rows)] += rng.uniform(*spike, n_rows).astype(np.float32)
    return x


def random_sampled(rng, tok, n: int) -> list[int]:
    """``n`` sampled tokens: text and non-decreasing timestamps, in random patterns."""
    tb, top = tok.timestamp_begin, tok.encoding.n_vocab
    out, stamp = [], tb + int(rng.integers(0, 40))
    for _ in range(n):
        if rng.random() < 0.45:
            stamp = min(top - 1, stamp + int(rng.integers(0, 30)))
            out.append(stamp)
        else:
            out.append(int(rng.integers(0, tok.eot)))
    return out


def random_tokens(rng, tok, n_rows: int, sample_begin: int, n: int, tail: str | None = None) -> np.ndarray:
    """Rows of ``sample_begin`` prompt tokens then ``n`` sampled ones; ``tail`` forces how a
    row ends ('tt' timestamp pair, 'xt' text then timestamp, 'tx', 'xx')."""
    prompt = list(tok.sot_sequence) + [int(t) for t in rng.integers(0, tok.eot, sample_begin)]
    rows = []
    for _ in range(n_rows):
        sampled = random_sampled(rng, tok, n)
        if tail and n >= 2:
            for pos, kind in zip((-2, -1), tail):
                sampled[pos] = tok.timestamp_begin + 100 + pos if kind == "t" else 11
        rows.append(prompt[:sample_begin] + sampled)
    return np.asarray(rows, dtype=np.int64)


def apply_both(
    oa_filter, our_filter, logits: np.ndarray, tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    theirs = torch.from_numpy(logits.copy())
    oa_filter.apply(theirs, torch.from_numpy(tokens))
    ours = logits.copy()
    our_filter.apply(ours, tokens.copy())
    return theirs.numpy(), ours


# --------------------------------------------------------------------------
# float32 numerics


def test_log_softmax_bit_exact():
    """torch's CPU log_softmax bit for bit: sizes across the lane width, -inf masks, peaked
    and flat rows, all -inf / +inf / NaN rows."""
    rng = np.random.default_rng(0)
    for t in range(120):
        n = [51865, 51864, 1501, 100, 17, 16, 5, 1][t % 8]
        x = (rng.standard_normal((1 + t % 3, n)) * rng.uniform(0.01, 10)).astype(np.float32)
        x[:, rng.integers(n)] += rng.uniform(0, 40)
        if t % 4 == 0:
            x[:, rng.integers(0, n, n // 2 + 1)] = -np.inf
            x[:, rng.integers(n)] = 0.0
        ref = F.log_softmax(torch.from_numpy(x), dim=-1).numpy()
        np.testing.assert_array_equal(tf.log_softmax(x), ref)
    odd = np.zeros((4, 40), np.float32)
    odd[0] = -np.inf
    odd[1, 3] = np.inf
    odd[2, 5] = np.nan
    ref = F.log_softmax(torch.from_numpy(odd), dim=-1).numpy()
    np.testing.assert_array_equal(tf.log_softmax(odd), ref)


AVX2_CHECK = """
import numpy as np, torch, torch.nn.functional as F
from models.whisper.decoding import torch_float as tf
assert tf.torch_lanes() == 8
if torch.backends.cpu.get_cpu_capability() != "AVX2":
    print("no AVX2")
    raise SystemExit(0)
rng = np.random.default_rng(0)
x = (rng.standard_normal((12, 51865)) * rng.uniform(0.1, 8, (12, 1))).astype(np.float32)
x[:4, :50000] = -np.inf
assert np.array_equal(tf.log_softmax(x), F.log_softmax(torch.from_numpy(x), dim=-1).numpy())
print("ok")
"""


def test_log_softmax_bit_exact_with_avx2_lanes():
    """With torch held to AVX2 (``ATEN_CPU_CAPABILITY``), 8 lanes reproduce it too."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", AVX2_CHECK], env=env, cwd=root, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    if run.stdout.strip() == "no AVX2":
        pytest.skip("this CPU has no AVX2")
    assert run.stdout.strip() == "ok"


def test_sleef_exp_and_lane_sum_match_torch_softmax():
    """The pieces of the normalizer: torch's softmax of a row is ``exp(x - max) * (1/sum)`` with
    the same exp and sum, so its output exposes both."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        x = (rng.standard_normal(51865) * rng.uniform(0.5, 8)).astype(np.float32)
        d = x - x.max()
        e = tf.sleef_expf(d)
        total = tf.lane_sums(e[None])[0]
        ref = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
        np.testing.assert_array_equal(e * (np.float32(1) / total), ref)
    d = np.array([0.0, -1e-8, -0.5, -87.0, -88.0, -103.9, -104.0, -104.1, -np.inf], np.float32)
    assert tf.sleef_expf(d)[-2:].tolist() == [0.0, 0.0] and tf.sleef_expf(d)[0] == 1.0
    assert np.all(tf.sleef_expf(d)[3:6] > 0)  # subnormal results stay


def test_normalizer_memo_hands_normalizers_on_once_with_masked_rows_again():
    rng = np.random.default_rng(2)
    memo = kf.NormalizerMemo()
    x = (rng.standard_normal((3, 51865)) * 3).astype(np.float32)
    front, top, logs = memo.compute(x, 51865 - 1501)
    np.testing.assert_array_equal(front, x[:, : 51865 - 1501].max(axis=1))
    first = (top.copy(), logs.copy())
    x[1, :100] = -np.inf  # the rule masks a row: its normalizer must be computed again
    memo.masked(x, [1])
    got = memo(x)
    assert got[0] is top and got[1] is logs  # handed on, not computed again
    for a, b in zip(got, tf.log_normalizers(x)):
        np.testing.assert_array_equal(a, b)
    assert got[1][1] != first[1][1] and got[1][0] == first[1][0]
    again = memo(x)  # an entry serves one call
    assert again[0] is not top
    for a, b in zip(again, tf.log_normalizers(x)):
        np.testing.assert_array_equal(a, b)
    memo.compute(x, 100)
    y = x.copy()  # another array, equal or not, gets its own
    assert memo(y)[0] is not top


@pytest.mark.parametrize("begin", [50363, 50364, 50303, 51865 - 40])
def test_masked_rows_read_from_an_aligned_column_sum_as_whole_rows(begin):
    """Rows masked before column ``begin`` are read from a column that keeps every value's
    lane of the sum: bit for bit the whole row's normalizers, wherever ``begin`` falls."""
    rng = np.random.default_rng(begin)
    x = rng.uniform(0, 1, (4, 51865)).astype(np.float32)
    memo = kf.NormalizerMemo()
    memo.compute(x, begin)
    x[[0, 2], :begin] = -np.inf
    memo.masked(x, [0, 2], masked_before=begin)
    for a, b in zip(memo(x), tf.log_normalizers(x)):
        np.testing.assert_array_equal(a, b)


def test_timestamp_rule_hands_the_decoder_the_normalizers_of_what_it_left(tokenizer):
    """After the rule (some rows forced to a timestamp, some not), the decoder's normalizers
    are those of the masked logits, bit for bit."""
    rng = np.random.default_rng(21)
    memo = kf.NormalizerMemo()
    rule = kf.ApplyTimestampRules(tokenizer, 3, None, memo=memo)
    forced_rows = kept_rows = 0
    for case in range(12):
        tokens = random_tokens(rng, tokenizer, 5, 3, [1, 2, 7][case % 3])
        logits = random_logits(rng, 5, tokenizer)
        rule.apply(logits, tokens)
        forced = np.isneginf(logits[:, : tokenizer.timestamp_begin]).all(axis=1)
        forced_rows += int(forced.sum())
        kept_rows += int((~forced).sum())
        for a, b in zip(memo(logits), tf.log_normalizers(logits)):
            np.testing.assert_array_equal(a, b)
    assert forced_rows > 3 and kept_rows > 3


def test_fast_normalizers_are_close():
    """``exact=False`` (NumPy's exp, the kernel's sum order) stays within a float32 step."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((6, 51865)) * rng.uniform(0.5, 6, (6, 1))).astype(np.float32)
    x[:3, :50000] = -np.inf
    top, logs = tf.log_normalizers(x)
    fast_top, fast_logs = tf.log_normalizers(x, exact=False)
    np.testing.assert_array_equal(fast_top, top)
    assert np.all(np.abs(fast_logs - logs) <= np.spacing(logs))


# --------------------------------------------------------------------------
# Filters


def test_suppress_blank_and_tokens(tokenizer):
    rng = np.random.default_rng(3)
    suppress = sorted({int(t) for t in rng.integers(0, tokenizer.encoding.n_vocab, 90)} | {tokenizer.eot})
    for sample_begin, n in [(3, 0), (3, 1), (4, 0), (1, 5)]:
        tokens = random_tokens(rng, tokenizer, 4, sample_begin, n)
        logits = random_logits(rng, 4, tokenizer)
        theirs, ours = apply_both(
            oa.SuppressBlank(tokenizer, sample_begin),
            kf.SuppressBlank(tokenizer, sample_begin),
            logits,
            tokens,
        )
        np.testing.assert_array_equal(ours, theirs)
        assert np.isneginf(ours[:, tokenizer.eot]).all() == (n == 0)
        theirs, ours = apply_both(oa.SuppressTokens(suppress), kf.SuppressTokens(suppress), logits, tokens)
        np.testing.assert_array_equal(ours, theirs)
    theirs, ours = apply_both(oa.SuppressTokens([]), kf.SuppressTokens([]), logits, tokens)
    np.testing.assert_array_equal(ours, theirs)


def timestamp_branches(tok, tokens: np.ndarray, sample_begin: int) -> set[str]:
    """Which pairing / monotonic branches of ApplyTimestampRules the rows take."""
    hit = set()
    for row in tokens[:, sample_begin:].tolist():
        ts = [t >= tok.timestamp_begin for t in row]
        last = bool(ts and ts[-1])
        penult = len(ts) < 2 or ts[-2]
        if last:
            hit.add("pair closed" if penult else "pair open")
        if any(ts):
            hit.add("monotonic")
    if tokens.shape[1] == sample_begin:
        hit.add("begin")
    return hit


@pytest.mark.parametrize("max_initial", [None, 0, 50])
def test_timestamp_rules_match_openai(tokenizer, max_initial):
    """Every branch (begin, max initial timestamp, closed / open pairs, monotonic, the mass
    rule both ways) on random rows; masks equal openai's exactly."""
    rng = np.random.default_rng(4 + (max_initial or 0))
    sample_begin = 3
    branches, mass = set(), {True: 0, False: 0}
    for case in range(36):
        n = [0, 1, 2, 3, 7, 20][case % 6]
        tail = [None, "tt", "xt", "tx", "xx"][case % 5]
        tokens = random_tokens(rng, tokenizer, 5, sample_begin, n, tail)
        logits = random_logits(rng, 5, tokenizer)
        theirs, ours = apply_both(
            oa.ApplyTimestampRules(tokenizer, sample_begin, max_initial),
            kf.ApplyTimestampRules(tokenizer, sample_begin, max_initial, memo=kf.NormalizerMemo()),
            logits,
            tokens,
        )
        np.testing.assert_array_equal(ours, theirs)
        branches |= timestamp_branches(tokenizer, tokens, sample_begin)
        forced = np.isneginf(ours[:, : tokenizer.timestamp_begin]).all(axis=1)
        for k in range(5):
            mass[bool(forced[k])] += 1
    assert branches == {"begin", "pair closed", "pair open", "monotonic"}
    assert mass[True] > 3 and mass[False] > 3


def test_timestamp_mass_rule_ties(tokenizer):
    """A lone timestamp as likely as the best text token is no majority (``>`` is strict);
    two of them are; one a float32 step likelier is not either, since the log-softmax's
    rounding makes the two log-probabilities equal."""
    tb = tokenizer.timestamp_begin
    logits = np.full((3, tokenizer.encoding.n_vocab), -np.inf, np.float32)
    logits[:, :tb] = np.linspace(-5, 0.5, tb, dtype=np.float32)
    logits[:, 100] = 1.0  # the best text token
    logits[0, tb + 10] = 1.0
    logits[1, [tb + 10, tb + 11]] = 1.0
    logits[2, tb + 10] = np.nextafter(np.float32(1.0), np.float32(2.0))
    tokens = np.tile(np.asarray([*tokenizer.sot_sequence, 11, 12], np.int64), (3, 1))
    begin = len(tokenizer.sot_sequence)
    theirs, ours = apply_both(
        oa.ApplyTimestampRules(tokenizer, begin, None),
        kf.ApplyTimestampRules(tokenizer, begin, None),
        logits,
        tokens,
    )
    np.testing.assert_array_equal(ours, theirs)
    assert np.isneginf(ours[:, :tb]).all(axis=1).tolist() == [False, True, False]


def test_stamps_beat_decides_as_the_whole_logsumexp():
    """The mass rule's bounds (``m <= logsumexp <= m + log n``) decide a row only where the
    logsumexp itself would: best-text values on and beside both bounds and the logsumexp,
    rows of one stamp, many equal ones, -inf, +inf and NaN. Either bound made tighter (``>=``
    for the strict ``>``, or log n less a little) fails it."""
    rng = np.random.default_rng(11)
    rows = []
    for n in (1501, 1, 7):
        for kind in range(6):
            r = (rng.standard_normal(n) * 3 - 8).astype(np.float32)
            if kind == 1:
                r[:] = np.float32(-2.0)  # every stamp equal: the logsumexp is m + log n
            elif kind == 2:
                r[rng.integers(0, n, max(1, n // 2))] = -np.inf
            elif kind == 3:
                r[:] = -np.inf
            elif kind == 4:
                r[0] = np.inf
            elif kind == 5:
                r[-1] = np.nan
            rows.append(r)
    stamps_list, best = [], []
    for r in rows:
        s = r[None, :]
        lse = tf.logsumexp(s)[0]
        m = np.float32(np.max(r))
        with np.errstate(invalid="ignore", over="ignore"):
            upper = np.float32(m + np.float32(np.log(len(r))))
        for v in (m, lse, upper, -np.inf, np.float32(0.0)):
            for b in (v, np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))):
                stamps_list.append(r)
                best.append(b)
    by_len = {}
    for r, b in zip(stamps_list, best):
        by_len.setdefault(len(r), ([], []))
        by_len[len(r)][0].append(r)
        by_len[len(r)][1].append(b)
    for stamps, bests in by_len.values():
        stamps, bests = np.stack(stamps), np.asarray(bests, np.float32)
        with np.errstate(invalid="ignore"):
            expected = tf.logsumexp(stamps) > bests
        np.testing.assert_array_equal(tf.stamps_beat(stamps, bests), expected)


# --------------------------------------------------------------------------
# topk order and the decoders


def test_topk_matches_torch_with_ties():
    rng = np.random.default_rng(5)
    for case in range(150):
        n = [51865, 51864, 640][case % 3]
        k = int(rng.integers(1, 7))
        kind = case % 5
        if kind == 0:
            x = rng.integers(-3, 3, n).astype(np.float32)
        elif kind == 1:
            x = np.full(n, -np.inf, np.float32)
            x[rng.integers(0, n, rng.integers(0, 9))] = rng.integers(-2, 2)
        elif kind == 2:
            x = rng.standard_normal(n).astype(np.float32)
            x[rng.integers(0, n, 4)] = x.max()
        elif kind == 3:
            x = rng.standard_normal(n).astype(np.float32)
            x[rng.integers(0, n, 2)] = np.nan
        else:
            x = rng.standard_normal(n).astype(np.float32)
        values, idx = torch.from_numpy(x).topk(k)
        ours_v, ours_i = ks.torch_topk(x, k)
        np.testing.assert_array_equal(ours_i, idx.numpy())
        np.testing.assert_array_equal(ours_v, values.numpy())


def test_topk_rows_is_each_rows_torch_topk():
    """The batched top-k: rows with and without ties, NaN and -inf together, each as torch's."""
    rng = np.random.default_rng(6)
    n = 51864
    rows = [rng.standard_normal(n).astype(np.float32) for _ in range(6)]
    rows[1][rng.integers(0, n, 4)] = rows[1].max()  # a tie at the top
    rows[2][rng.integers(0, n, 2)] = np.nan
    rows[3][:] = -np.inf
    rows[3][rng.integers(0, n, 3)] = 1.0
    rows[4] = rng.integers(-3, 3, n).astype(np.float32)  # ties everywhere
    x = np.stack(rows)
    for k in (1, 5, 6):
        values, idx = torch.from_numpy(x).topk(k, dim=-1)
        ours_v, ours_i = ks.torch_topk_rows(x, k)
        np.testing.assert_array_equal(ours_i, idx.numpy())
        np.testing.assert_array_equal(ours_v, values.numpy())


@pytest.mark.parametrize("path", ["native", "numpy"])
def test_topk_of_log_probs_is_torch_topk_of_log_softmax(monkeypatch, path):
    """What a beam step takes: torch's log_softmax then topk, per row, in torch's order --
    from the logits and their normalizers, in one pass (the Mojo twin's heap) or through the
    log-probabilities and torch_topk_rows (NumPy). Ties, NaN, -inf and short rows included."""
    if path == "numpy":
        monkeypatch.setattr(tf, "native_library", lambda: None)
    elif tf.native_library() is None:
        pytest.fail("the Mojo twin of torch_float did not build (see the log)")
    rng = np.random.default_rng(11)
    for case in range(60):
        n = [51865, 51864, 640, 1000][case % 4]
        rows, k = int(rng.integers(1, 7)), int(rng.integers(1, min(8, n // 64) + 1))
        kind = case % 5
        if kind == 0:
            x = rng.integers(-3, 3, (rows, n)).astype(np.float32)  # ties everywhere
        elif kind == 1:
            x = np.full((rows, n), -np.inf, np.float32)
            for r in range(rows):
                x[r, rng.integers(0, n, rng.integers(1, 9))] = rng.integers(-2, 2)
        elif kind == 2:
            x = rng.standard_normal((rows, n)).astype(np.float32)
            x[:, rng.integers(0, n, 4)] = x.max()  # a tie at the top
        elif kind == 3:
            x = rng.standard_normal((rows, n)).astype(np.float32)
            x[:, rng.integers(0, n, 2)] = np.nan
        else:
            x = (rng.standard_normal((rows, n)) * 5).astype(np.float32)
        top, logs = tf.log_normalizers(x)
        values, idx = F.log_softmax(torch.from_numpy(x), dim=-1).topk(k, dim=-1)
        ours_v, ours_i = ks.topk_log_probs(x, top, logs, k)
        np.testing.assert_array_equal(ours_i, idx.numpy())
        np.testing.assert_array_equal(ours_v, values.numpy())
    with pytest.raises(ValueError, match="partial_sort"):
        ks.topk_log_probs(x[:, :100], top, logs, 2)


def test_greedy_matches_openai():
    rng = np.random.default_rng(6)
    tok = get_tokenizer(True, num_languages=99)
    n_rows = 5
    theirs_dec, ours_dec = oa.GreedyDecoder(0.0, tok.eot), ks.GreedyDecoder(0.0, tok.eot)
    tokens = np.tile(np.asarray(tok.sot_sequence, np.int64), (n_rows, 1))
    t_tokens, t_sum = torch.from_numpy(tokens.copy()), torch.zeros(n_rows)
    o_sum = np.zeros(n_rows, np.float32)
    for step in range(30):
        logits = random_logits(rng, n_rows, tok)
        if step % 3 == 0:
            logits[:, 7] = logits.max(axis=1)  # ties: the first maximum wins
        logits[rng.random(n_rows) < 0.1, tok.eot] = 50.0
        t_tokens, t_done = theirs_dec.update(t_tokens, torch.from_numpy(logits.copy()), t_sum)
        tokens, done, source = ours_dec.update(tokens, logits.copy(), o_sum)
        np.testing.assert_array_equal(tokens, t_tokens.numpy())
        np.testing.assert_array_equal(o_sum, t_sum.numpy())
        assert done == bool(t_done) and source is None
        if done:
            break
    shape = (1, n_rows, -1)
    t_fin = theirs_dec.finalize(t_tokens.reshape(shape), t_sum.reshape(1, n_rows))
    o_fin = ours_dec.finalize(tokens.reshape(shape), o_sum.reshape(1, n_rows))
    np.testing.assert_array_equal(o_fin[0], t_fin[0].numpy())
    assert o_fin[1] == t_fin[1]


class RecordingInference(oa.Inference):
    """Stands in for openai's inference: records the rows beam search keeps."""

    def __init__(self):
        self.calls = []

    def rearrange_kv_cache(self, source_indices) -> None:
        self.calls.append(list(source_indices))


def beam_logits(rng, tok, n_rows: int, step: int, tied: bool, eot_rate: float) -> np.ndarray:
    logits = random_logits(rng, n_rows, tok, ts_shift=(-8.0, -2.0), spike=(0.0, 4.0))
    if tied:
        logits = np.round(logits * 2) / 2  # many equal logits, so equal scores and topk ties
    hot = rng.random(n_rows) < eot_rate
    logits[hot, tok.eot] = logits[hot].max(axis=1) + rng.choice([0.0, 0.5, 1.0])
    if step == 0 and tied:
        logits[:] = logits[0]  # a group's beams start alike: repeated candidates, equal scores
    return logits.astype(np.float32)


@pytest.mark.parametrize(
    "beam,patience,n_audio,tied,eot_rate",
    [
        (2, 1.0, 1, False, 0.05),
        (5, 1.0, 2, True, 0.1),
        (5, 2.0, 3, False, 0.1),
        (2, 2.0, 2, True, 0.03),
        (5, 1.0, 2, False, 0.0),
    ],
)
def test_beam_search_matches_openai(beam, patience, n_audio, tied, eot_rate):
    """Up to 30 steps on random logits (EOT the best token of some rows at ``eot_rate``):
    tokens, scores, finished sequences and reorder rows after every step, then finalize
    (filled from unfinished beams where too few finished)."""
    rng = np.random.default_rng(7 + beam + n_audio)
    tok = get_tokenizer(True, num_languages=99)
    n_rows = beam * n_audio
    inference = RecordingInference()
    theirs = oa.BeamSearchDecoder(beam, tok.eot, inference, patience)
    ours = ks.BeamSearchDecoder(beam, tok.eot, patience)
    theirs.reset(), ours.reset()
    tokens = np.tile(np.asarray(tok.sot_sequence, np.int64), (n_rows, 1))
    t_tokens, t_sum = torch.from_numpy(tokens.copy()), torch.zeros(n_rows)
    o_sum = np.zeros(n_rows, np.float32)
    for step in range(30):
        logits = beam_logits(rng, tok, n_rows, step, tied, eot_rate)
        t_tokens, t_done = theirs.update(t_tokens, torch.from_numpy(logits.copy()), t_sum)
        tokens, done, source = ours.update(tokens, logits.copy(), o_sum)
        np.testing.assert_array_equal(tokens, t_tokens.numpy())
        np.testing.assert_array_equal(o_sum, t_sum.numpy())
        assert source.tolist() == inference.calls[-1]
        assert done == t_done
        assert finished_of(ours) == [
            [(seq, score) for seq, score in group.items()] for group in theirs.finished_sequences
        ]
        if done:
            break
    shape = (n_audio, beam, -1)
    t_seqs, t_scores = theirs.finalize(t_tokens.reshape(shape), t_sum.reshape(n_audio, beam))
    o_seqs, o_scores = ours.finalize(tokens.reshape(shape), o_sum.reshape(n_audio, beam))
    assert [[tuple(s.tolist()) for s in g] for g in o_seqs] == [
        [tuple(s.tolist()) for s in g] for g in t_seqs
    ]
    assert o_scores == t_scores


def finished_of(decoder: ks.BeamSearchDecoder) -> list:
    return [
        [(tuple(decoder.sequences[key].tolist()), score) for key, score in group.items()]
        for group in decoder.finished
    ]


def test_beam_finalize_fills_from_unfinished_with_ties():
    """Too few finished sequences: the best unfinished beams close with EOT, in the order
    numpy's argsort gives equal scores (as openai's finalize)."""
    tok_eot, beam = 50257, 4
    theirs = oa.BeamSearchDecoder(beam, tok_eot, RecordingInference())
    ours = ks.BeamSearchDecoder(beam, tok_eot)
    theirs.finished_sequences = [{(1, 2, tok_eot): -1.5}, {}]
    ours.finished = [{(b"x", tok_eot): -1.5}, {}]
    ours.sequences = {(b"x", tok_eot): np.asarray([1, 2, tok_eot], np.int64)}
    tokens = np.arange(2 * beam * 3, dtype=np.int64).reshape(2, beam, 3)
    scores = np.asarray([[-1.0, -2.0, -1.0, -3.0], [-0.5, -0.5, -0.5, -0.5]], np.float32)
    t_seqs, t_scores = theirs.finalize(torch.from_numpy(tokens), torch.from_numpy(scores))
    o_seqs, o_scores = ours.finalize(tokens, scores)
    assert [[s.tolist() for s in g] for g in o_seqs] == [[s.tolist() for s in g] for g in t_seqs]
    assert o_scores == t_scores


@pytest.mark.parametrize("length_penalty", [None, 0.5, 1.0])
def test_ranker_matches_openai(length_penalty):
    rng = np.random.default_rng(8)
    for _ in range(50):
        groups = int(rng.integers(1, 4))
        tokens, logprobs = [], []
        for _ in range(groups):
            n = int(rng.integers(1, 6))
            tokens.append([np.zeros(int(rng.integers(1, 30)), np.int64) for _ in range(n)])
            values = rng.choice([-3.0, -7.5, float(rng.uniform(-20, 0))], size=n)  # ties too
            logprobs.append([float(np.float32(v)) for v in values])
        theirs = oa.MaximumLikelihoodRanker(length_penalty).rank(
            [[torch.from_numpy(t) for t in g] for g in tokens], logprobs
        )
        ours = ks.MaximumLikelihoodRanker(length_penalty).rank(tokens, logprobs)
        assert ours == [int(i) for i in theirs]
    if length_penalty is None:  # an empty candidate divides by its length 0, in both
        for ranker in (oa.MaximumLikelihoodRanker(None), ks.MaximumLikelihoodRanker(None)):
            with pytest.raises(ZeroDivisionError):
                ranker.rank([[np.zeros(0, np.int64)]], [[-1.0]])


# --------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("path", ["native", "numpy"])
@pytest.mark.parametrize("temperature", [0.2, 0.6, 1.0])
def test_sampling_probs_match_torch(monkeypatch, temperature, path):
    if path == "numpy":
        monkeypatch.setattr(tf, "native_library", lambda: None)
    rng = np.random.default_rng(9)
    tok = get_tokenizer(True, num_languages=99)
    logits = random_logits(rng, 4, tok)
    tokens = random_tokens(rng, tok, 4, 3, 4, "xt")
    kf.ApplyTimestampRules(tok, 3, None).apply(logits, tokens)  # -inf entries, as in decoding
    kf.SuppressTokens(range(0, 5000, 7)).apply(logits, tokens)
    ref = torch.distributions.Categorical(logits=torch.from_numpy(logits) / temperature).probs.numpy()
    ours = ks.sampling_probs(logits, temperature)
    assert ours.dtype == np.float32
    # both take exps of float32 differences of the tempered logits z (torch's (z - lse) - max,
    # ours z - max): two float32 spacings of z's largest magnitude are the relative error
    # allowed (measured worst here: 1.13; torch's row normaliser apart, tests/tolerance.py), and
    # 4 eps for each row's likeliest token (1.85)
    assert_probs_match_torch(ours, ref, logits / np.float32(temperature), spacings=2)
    top = ref.argmax(axis=1)
    rows = np.arange(len(top))
    np.testing.assert_allclose(ours[rows, top], ref[rows, top], rtol=4 * np.finfo(np.float32).eps)
    assert np.array_equal(ours.argmax(axis=1), top)
    np.testing.assert_array_equal(ks.sampling_probs(logits, temperature, top=logits.max(axis=1)), ours)


def test_sampling_draws_reproducible_and_distributed():
    logits = np.full((2, 51865), -np.inf, np.float32)
    logits[:, [10, 20, 30]] = np.log(np.asarray([0.2, 0.3, 0.5], np.float32))
    a = [ks.sample(logits, 1.0, np.random.default_rng(42)).tolist() for _ in range(2)]
    assert a[0] == a[1]
    many = np.tile(logits[:1, :64], (8000, 1))
    draws = ks.sample(many, 1.0, np.random.default_rng(0))
    assert set(draws.tolist()) <= {10, 20, 30}
    freq = [np.mean(draws == t) for t in (10, 20, 30)]
    np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=0.02)

    class Edge:  # a generator drawing the CDF's very ends
        def __init__(self, u):
            self.u = u

        def random(self, n):
            return np.full(n, self.u)

    assert ks.sample(logits, 1.0, Edge(0.0)).tolist() == [10, 10]
    assert ks.sample(logits, 1.0, Edge(1.0)).tolist() == [30, 30]  # at the total: the last drawable
    wide = np.random.default_rng(3).standard_normal((4, 51864)).astype(np.float32)
    cdf = np.cumsum(ks._exps_and_blocks(wide, 0.7)[0].astype(np.float64), axis=-1)
    for seed in range(50):  # the two-level CDF draws what the whole running sum of the weights draws
        u = np.random.default_rng(seed).random(4) * cdf[:, -1]
        expected = [int(np.searchsorted(cdf[k], u[k], side="right")) for k in range(4)]
        assert ks.sample(wide, 0.7, np.random.default_rng(seed)).tolist() == expected
    eot = 3
    dec = ks.GreedyDecoder(0.7, eot, np.random.default_rng(1))
    tokens = np.asarray([[1, 2], [1, eot]], np.int64)
    sums = np.zeros(2, np.float32)
    out, done, _ = dec.update(tokens, logits.copy(), sums)
    lp = F.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert out[1, -1] == eot and not done
    assert sums[0] == lp[0, out[0, -1]] and sums[1] == 0.0


# --------------------------------------------------------------------------
# Shadowing openai's decode loop on a random model and real speech


class ShadowFilter:
    """Runs openai's filter and ours on the same logits inside openai's decode loop."""

    def __init__(self, theirs, ours, masked: list):
        self.theirs, self.ours, self.masked = theirs, ours, masked

    def apply(self, logits, tokens):
        mine = logits.numpy().copy()
        self.ours.apply(mine, tokens.numpy().copy())
        self.theirs.apply(logits, tokens)
        np.testing.assert_array_equal(mine, logits.numpy())
        self.masked.append(int(np.isneginf(mine).sum()))


class ShadowDecoder:
    """Runs openai's decoder and ours on the same inputs inside openai's decode loop."""

    def __init__(self, theirs, ours, reorders: list | None):
        self.theirs, self.ours, self.reorders, self.steps = theirs, ours, reorders, 0

    def reset(self):
        self.theirs.reset(), self.ours.reset()

    def update(self, tokens, logits, sum_logprobs):
        mine_sum = sum_logprobs.numpy().copy()
        mine = self.ours.update(tokens.numpy().copy(), logits.numpy().copy(), mine_sum)
        tokens, done = self.theirs.update(tokens, logits, sum_logprobs)
        np.testing.assert_array_equal(mine[0], tokens.numpy())
        np.testing.assert_array_equal(mine_sum, sum_logprobs.numpy())
        assert mine[1] == bool(done)
        if self.reorders is not None:
            assert mine[2].tolist() == self.reorders[-1]
        self.steps += 1
        return tokens, done

    def finalize(self, tokens, sum_logprobs):
        mine = self.ours.finalize(tokens.numpy().copy(), sum_logprobs.numpy().copy())
        theirs = self.theirs.finalize(tokens, sum_logprobs)
        assert [[list(map(int, s)) for s in g] for g in mine[0]] == [
            [list(map(int, s)) for s in g] for g in theirs[0]
        ]
        assert mine[1] == theirs[1]
        return theirs


def shadow(task, tok) -> tuple[list, ShadowDecoder]:
    """Swap openai's filters and decoder in ``task`` for shadows pairing them with ours."""
    masked: list = []
    counterparts = {
        oa.SuppressBlank: lambda f: kf.SuppressBlank(tok, f.sample_begin),
        oa.SuppressTokens: lambda f: kf.SuppressTokens(f.suppress_tokens),
        oa.ApplyTimestampRules: lambda f: kf.ApplyTimestampRules(
            tok, f.sample_begin, f.max_initial_timestamp_index
        ),
    }
    task.logit_filters = [ShadowFilter(f, counterparts[type(f)](f), masked) for f in task.logit_filters]
    theirs = task.decoder
    if isinstance(theirs, oa.BeamSearchDecoder):
        reorders: list = []
        inner = task.inference.rearrange_kv_cache
        task.inference.rearrange_kv_cache = lambda idx: (reorders.append(list(idx)), inner(idx))
        ours = ks.BeamSearchDecoder(theirs.beam_size, theirs.eot, theirs.patience)
        task.decoder = ShadowDecoder(theirs, ours, reorders)
    else:
        task.decoder = ShadowDecoder(theirs, ks.GreedyDecoder(theirs.temperature, theirs.eot), None)
    return masked, task.decoder


@pytest.fixture(scope="module")
def jfk_mel():
    sf = pytest.importorskip("soundfile")
    import whisper

    path = Path(__file__).resolve().parents[1] / "examples" / "jfk.wav"
    if not path.exists():
        pytest.skip("examples/jfk.wav is absent")
    audio, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    return whisper.pad_or_trim(whisper.log_mel_spectrogram(audio, 80), 3000)


@pytest.mark.parametrize("beam_size", [None, 5])
def test_shadow_openai_decode_random_model(jfk_mel, beam_size):
    """openai's own decode loop (random model, real speech, timestamps on), our filters and
    decoder fed the very logits openai's see at every step, and compared there."""
    from whisper_doubles import random_model

    model = random_model(51865, seed=1)
    options = oa.DecodingOptions(language="en", fp16=False, beam_size=beam_size, sample_len=24)
    task = oa.DecodingTask(model, options)
    masked, decoder = shadow(task, task.tokenizer)
    with torch.no_grad():
        task.run(jfk_mel[None])
    assert decoder.steps >= 3 and len(set(masked)) > 2
