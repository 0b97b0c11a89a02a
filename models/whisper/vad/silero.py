"""Silero VAD v6's speech probabilities, many 32 ms windows per onnxruntime call.

The model (MIT, shipped as data by the ``silero-vad`` package; never import that package, its
``__init__`` needs torchaudio) maps one window of 512 new samples at 16 kHz, preceded by the
previous window's last 64 samples, and an LSTM state to a speech probability and the next
state. Inside: reflect-pad 64 samples on the right, an STFT as a strided convolution (258
filters of 256 taps, hop 128: four frames), the magnitude of 129 bins, four Conv1d(k=3, pad=1,
strides 1, 2, 2, 1)+ReLU, an LSTMCell(128), ReLU, a 1x1 convolution and a sigmoid (read from
the ONNX graph with ``onnx``). silero-vad's ``OnnxWrapper`` runs that graph once per window:
~135 us a window, most of it the call's own cost.

:class:`SileroVad` reads the model's weights and builds one new ONNX graph (``onnx.helper``)
that takes all windows of a block at once: everything before the LSTM has no state, so it runs
batched over ``[n_windows, 576]`` as matrix products with time on the rows (each convolution's
taps gathered beside each other: its input columns), the recurrence is ONNX's own ``LSTM`` op
over the sequence of windows (batch 1, the carried state as its initial state), and the head
runs batched again. A block is one ``session.run`` per :data:`RUN_WINDOWS` windows.

The probabilities equal the original graph's, run window by window as ``OnnxWrapper`` does, up
to float32 rounding (sums taken in another order): within 7e-6 over 10 minutes of speech,
silence and noise, while on the test clips either is within 3e-6 of the same network computed
in float64 (``tests/test_vad.py``). Feeding a recording in blocks whose
lengths are multiples of 512 samples (all but the last), carrying :class:`VadState`, gives what
one call gives.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "CONTEXT_SAMPLES",
    "RUN_WINDOWS",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "SileroVad",
    "VadModelError",
    "VadState",
    "build_batched_model",
    "check_audio",
    "packaged_model_path",
    "read_weights",
]

SAMPLE_RATE = 16000
#: new samples per window (silero-vad's window at 16 kHz)
WINDOW_SAMPLES = 512
#: samples of the previous window put before each window (``OnnxWrapper``'s context at 16 kHz)
CONTEXT_SAMPLES = 64
#: windows per ``session.run``: 8.2 s of audio; 64-256 measured fastest (caches), 1875 ~20% slower
RUN_WINDOWS = 256
HIDDEN = 128
#: the packaged model: opset 16, 8 and 16 kHz branches (the 16 kHz weights equal
#: ``silero_vad_16k_op15.onnx``'s); ``load_silero_vad(onnx=True)``'s default, so the file
#: silero-vad users run
PACKAGED_MODEL = "silero_vad/data/silero_vad.onnx"
INSTALL_HINT = "install it with `pip install --no-deps silero-vad`"

#: the weights read, by name after the model's scope prefix, with their shapes
WEIGHT_SHAPES = {
    "stft.forward_basis_buffer": (258, 1, 256),
    "encoder.0.reparam_conv.weight": (128, 129, 3),
    "encoder.0.reparam_conv.bias": (128,),
    "encoder.1.reparam_conv.weight": (64, 128, 3),
    "encoder.1.reparam_conv.bias": (64,),
    "encoder.2.reparam_conv.weight": (64, 64, 3),
    "encoder.2.reparam_conv.bias": (64,),
    "encoder.3.reparam_conv.weight": (128, 64, 3),
    "encoder.3.reparam_conv.bias": (128,),
    "decoder.rnn.weight_ih": (4 * HIDDEN, 128),
    "decoder.rnn.weight_hh": (4 * HIDDEN, HIDDEN),
    "decoder.rnn.bias_ih": (4 * HIDDEN,),
    "decoder.rnn.bias_hh": (4 * HIDDEN,),
    "decoder.decoder.2.weight": (1, HIDDEN, 1),
    "decoder.decoder.2.bias": (1,),
}


class VadModelError(ValueError):
    """The Silero VAD model file is missing, unreadable or not the model expected."""


@dataclass(frozen=True)
class VadState:
    """What one call of :meth:`SileroVad.probs` leaves for the next: the LSTM's ``h`` and ``c``
    (float32[128] each) and the last :data:`CONTEXT_SAMPLES` samples of the last window."""

    h: np.ndarray
    c: np.ndarray
    context: np.ndarray

    def __post_init__(self):
        for name, size in (("h", HIDDEN), ("c", HIDDEN), ("context", CONTEXT_SAMPLES)):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.shape != (size,) or value.dtype != np.float32:
                got = (
                    f"{value.dtype}{list(value.shape)}"
                    if isinstance(value, np.ndarray)
                    else type(value).__name__
                )
                raise ValueError(f"VadState.{name}: expected float32[{size}], got {got}")

    @classmethod
    def zeros(cls) -> VadState:
        """The state before the first window (``OnnxWrapper.reset_states``)."""
        return cls(
            np.zeros(HIDDEN, np.float32), np.zeros(HIDDEN, np.float32), np.zeros(CONTEXT_SAMPLES, np.float32)
        )


def packaged_model_path() -> Path:
    """The ``silero_vad.onnx`` the ``silero-vad`` package ships, found as data (its code is
    never imported); VadModelError when the package or the file is missing."""
    try:
        dist = importlib.metadata.distribution("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        raise VadModelError(
            f"silero VAD model: the silero-vad package is not installed; {INSTALL_HINT}"
        ) from None
    path = Path(dist.locate_file(PACKAGED_MODEL))
    if not path.is_file():
        raise VadModelError(
            f"silero VAD model {path}: no such file in the silero-vad package; {INSTALL_HINT}"
        )
    return path


def _onnx():
    """The ``onnx`` module, or VadModelError saying what to install."""
    try:
        import onnx
    except ImportError:
        raise VadModelError("Silero VAD needs onnx and onnxruntime: pip install 'kvgraph[vad]'") from None
    return onnx


def _tensors(graph, found: dict) -> None:
    """Every initializer and Constant node value of ``graph`` and its subgraphs (the opset-16
    model keeps its weights as Constant nodes inside an ``If`` on the sample rate), by name."""
    from onnx import AttributeProto

    for init in graph.initializer:
        found[init.name] = init
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _tensors(attr.g, found)
            for sub in attr.graphs:
                _tensors(sub, found)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The 16 kHz weights of the Silero VAD ONNX file ``path`` (names as in
    :data:`WEIGHT_SHAPES`, float32); VadModelError naming ``path`` when it cannot be read or is
    not that model. Works for ``silero_vad.onnx`` (weights as Constants in the 16 kHz branch)
    and ``silero_vad_16k_op15.onnx`` (initializers ``model.*``)."""
    onnx = _onnx()
    from onnx import numpy_helper

    p = Path(path)
    if not p.is_file():
        raise VadModelError(f"silero VAD model {p}: no such file; {INSTALL_HINT}")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf's DecodeError and friends: one line either way
        raise VadModelError(f"silero VAD model {p}: not an ONNX file ({' '.join(str(e).split())})") from None
    found: dict = {}
    _tensors(model.graph, found)
    basis = "stft.forward_basis_buffer"
    scopes = [
        n[: -len(basis)] for n, t in found.items() if n.endswith(basis) and tuple(t.dims) == (258, 1, 256)
    ]
    if len(scopes) != 1:
        raise VadModelError(
            f"silero VAD model {p}: not a Silero VAD v5/v6 model (no 16 kHz STFT basis 258x1x256)"
        )
    weights = {}
    for name, shape in WEIGHT_SHAPES.items():
        tensor = found.get(scopes[0] + name)
        if tensor is None or tuple(tensor.dims) != shape:
            raise VadModelError(
                f"silero VAD model {p}: not a Silero VAD v5/v6 model ({name} missing or not {shape})"
            )
        weights[name] = np.ascontiguousarray(numpy_helper.to_array(tensor), dtype=np.float32)
    return weights


class _Graph:
    """A small ``onnx.helper`` graph builder: constants and single-output nodes by value."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def const(self, value) -> str:
        """An initializer holding ``value`` (int lists become int64)."""
        arr = np.asarray(value, np.int64) if isinstance(value, (list, tuple)) else value
        name = f"k{len(self.initializers)}"
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        """Adds a node; its output name (a list of names when ``outputs`` > 1)."""
        names = [f"t{len(self.nodes)}_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def slice(self, x: str, start: int, stop: int, axis: int) -> str:
        return self.op("Slice", x, self.const([start]), self.const([stop]), self.const([axis]))

    def dense(self, x: str, weight: np.ndarray, bias: np.ndarray, relu: bool = True) -> str:
        """``x @ weight + bias``, then ReLU when asked."""
        y = self.op("Add", self.op("MatMul", x, self.const(weight)), self.const(bias))
        return self.op("Relu", y) if relu else y


def _taps(weight: np.ndarray, taps) -> np.ndarray:
    """A Conv1d weight ``[out, in, k]`` as the matrix ``[len(taps) * in, out]`` that multiplies
    input columns laid out tap by tap (the taps' inputs side by side)."""
    return np.concatenate([weight[:, :, k].T for k in taps], axis=0)


def _front(g: _Graph, w: dict) -> str:
    """frames f32[n, 576] -> magnitudes f32[n, 4, 129]: reflect pad, STFT, |.|. The STFT's
    frames are 256 samples every 128: the padded window's 128-sample chunks 0-3 beside 1-4."""
    padded = g.op("Pad", "frames", g.const([0, 0, 0, CONTEXT_SAMPLES]), mode="reflect")  # [n, 640]
    chunks = g.op("Reshape", padded, g.const([-1, 5, 128]))
    frames = g.op("Concat", g.slice(chunks, 0, 4, 1), g.slice(chunks, 1, 5, 1), axis=2)  # [n, 4, 256]
    spec = g.op("MatMul", frames, g.const(w["stft.forward_basis_buffer"][:, 0, :].T))  # [n, 4, 258]
    re, im = g.slice(spec, 0, 129, 2), g.slice(spec, 129, 258, 2)
    return g.op("Sqrt", g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im)))


def _encoder(g: _Graph, w: dict, x: str) -> str:
    """[n, 4, 129] -> [n, 128]: the four Conv1d(k=3, pad=1)+ReLU, time on the rows. Output t of
    a layer of stride s reads inputs s*t-1, s*t, s*t+1 (zeros outside): layer 0 (stride 1, 4
    steps) and layer 1 (stride 2, 4 -> 2) gather them from the input padded in time; layer 2
    (stride 2, 2 -> 1) reads only inputs 0 and 1 (taps 1 and 2), layer 3 (1 step) only tap 1:
    the taps on padding add zero and are left out."""
    weight = {i: w[f"encoder.{i}.reparam_conv.weight"] for i in range(4)}
    bias = {i: w[f"encoder.{i}.reparam_conv.bias"] for i in range(4)}
    padded = g.op("Pad", x, g.const([0, 1, 0, 0, 1, 0]))  # [n, 6, 129]
    cols = g.op("Concat", *(g.slice(padded, k, k + 4, 1) for k in range(3)), axis=2)  # [n, 4, 387]
    x = g.dense(cols, _taps(weight[0], range(3)), bias[0])  # [n, 4, 128]
    padded = g.op("Pad", x, g.const([0, 1, 0, 0, 0, 0]))  # [n, 5, 128]: input i at i + 1
    steps = [
        g.op("Reshape", g.slice(padded, 2 * t, 2 * t + 3, 1), g.const([-1, 1, 3 * 128])) for t in range(2)
    ]
    x = g.dense(g.op("Concat", *steps, axis=1), _taps(weight[1], range(3)), bias[1])  # [n, 2, 64]
    x = g.dense(g.op("Reshape", x, g.const([-1, 2 * 64])), _taps(weight[2], (1, 2)), bias[2])  # [n, 64]
    return g.dense(x, _taps(weight[3], (1,)), bias[3])  # [n, 128]


def _lstm_gates(m: np.ndarray) -> np.ndarray:
    """PyTorch's LSTM gate blocks (i, f, g, o along axis 0; torch.nn.LSTMCell's documented
    layout) in ONNX LSTM's order (i, o, f, c; the ONNX operator spec's ``W[iofc]``)."""
    i, f, g, o = np.split(m, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def _recurrence_and_head(g: _Graph, w: dict, x: str) -> str:
    """[n, 128] -> probabilities f32[n]: the LSTM over the n windows as one sequence (batch 1,
    initial state ``h0``/``c0``, final state to ``h1``/``c1``), then ReLU, the 1x1 conv, sigmoid."""
    seq = g.op("Reshape", x, g.const([-1, 1, 128]))
    W = g.const(_lstm_gates(w["decoder.rnn.weight_ih"])[None])
    R = g.const(_lstm_gates(w["decoder.rnn.weight_hh"])[None])
    B = g.const(
        np.concatenate([_lstm_gates(w["decoder.rnn.bias_ih"]), _lstm_gates(w["decoder.rnn.bias_hh"])])[None]
    )
    y, h1, c1 = g.op("LSTM", seq, W, R, B, "", "h0", "c0", outputs=3, hidden_size=HIDDEN)
    g.nodes.append(g.helper.make_node("Identity", [h1], ["h1"]))
    g.nodes.append(g.helper.make_node("Identity", [c1], ["c1"]))
    y = g.op("Relu", g.op("Reshape", y, g.const([-1, HIDDEN])))
    logit = g.dense(y, w["decoder.decoder.2.weight"][:, :, 0].T, w["decoder.decoder.2.bias"], relu=False)
    return g.op("Sigmoid", logit)


def build_batched_model(weights: dict[str, np.ndarray]) -> bytes:
    """The serialized ONNX model (opset 17) of the batched network: inputs ``frames``
    f32[n, 576], ``h0`` and ``c0`` f32[1, 1, 128]; outputs ``probs`` f32[n], ``h1``, ``c1``."""
    from onnx import TensorProto, helper

    g = _Graph()
    probs = _recurrence_and_head(g, weights, _encoder(g, weights, _front(g, weights)))
    g.nodes.append(helper.make_node("Reshape", [probs, g.const([-1])], ["probs"]))
    f32 = TensorProto.FLOAT
    state = [1, 1, HIDDEN]
    graph = helper.make_graph(
        g.nodes,
        "silero_vad_batched",
        [
            helper.make_tensor_value_info("frames", f32, ["n", CONTEXT_SAMPLES + WINDOW_SAMPLES]),
            helper.make_tensor_value_info("h0", f32, state),
            helper.make_tensor_value_info("c0", f32, state),
        ],
        [
            helper.make_tensor_value_info("probs", f32, ["n"]),
            helper.make_tensor_value_info("h1", f32, state),
            helper.make_tensor_value_info("c1", f32, state),
        ],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kvgraph")
    model.ir_version = 8  # opset 17's IR; any onnxruntime >= 1.13 loads it
    return model.SerializeToString()


def check_audio(audio) -> np.ndarray:
    """``audio`` as contiguous float32 samples, or ValueError: a 1-D floating NumPy array of
    finite 16 kHz samples is asked."""
    if not isinstance(audio, np.ndarray):
        raise ValueError(
            f"audio: expected a 1-D NumPy array of 16 kHz float samples, got {type(audio).__name__}"
        )
    if audio.ndim != 1:
        raise ValueError(f"audio: expected a 1-D array of 16 kHz samples, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio: expected float samples, got dtype {audio.dtype}")
    x = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("audio: contains NaN or infinite samples (or values beyond float32's range)")
    return x


class SileroVad:
    """The Silero VAD model on onnxruntime, a block of windows per call; build with :meth:`load`."""

    def __init__(self, session, path: Path):
        self.session = session
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, threads: int = 1) -> SileroVad:
        """The model from ``path`` (an ONNX file of Silero VAD v5/v6), or None: the one the
        ``silero-vad`` package ships. Runs on ``threads`` CPU threads (default one: the
        detector is fast enough and leaves the cores to Whisper). VadModelError (one line
        naming the path) when the file is missing or not that model."""
        if int(threads) != threads or threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads!r}")
        p = packaged_model_path() if path is None else Path(path)
        model = build_batched_model(read_weights(p))
        try:
            import onnxruntime as ort
        except ImportError:
            raise VadModelError("Silero VAD needs onnx and onnxruntime: pip install 'kvgraph[vad]'") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        return cls(ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]), p)

    def __repr__(self) -> str:
        return f"SileroVad({str(self.path)!r})"

    def probs(self, audio: np.ndarray, state: VadState | None = None) -> tuple[np.ndarray, VadState]:
        """Speech probabilities f32[ceil(len(audio) / 512)] of 16 kHz mono ``audio``, one per
        512-sample window (the last window zero-padded), and the state to pass with the audio
        that follows: feeding blocks of a multiple of 512 samples (any length for the last)
        gives the probabilities of one call. ``state`` None: the start of a recording."""
        x = check_audio(audio)
        if state is None:
            state = VadState.zeros()
        elif not isinstance(state, VadState):
            raise ValueError(f"state: expected a VadState or None, got {type(state).__name__}")
        n = -(-len(x) // WINDOW_SAMPLES)
        if n == 0:
            return np.zeros(0, np.float32), state
        buf = np.zeros(CONTEXT_SAMPLES + n * WINDOW_SAMPLES, np.float32)
        buf[:CONTEXT_SAMPLES] = state.context
        buf[CONTEXT_SAMPLES : CONTEXT_SAMPLES + len(x)] = x
        frames = sliding_window_view(buf, CONTEXT_SAMPLES + WINDOW_SAMPLES)[::WINDOW_SAMPLES]  # [n, 576]
        h, c = state.h.reshape(1, 1, HIDDEN), state.c.reshape(1, 1, HIDDEN)
        out = np.empty(n, np.float32)
        for first in range(0, n, RUN_WINDOWS):
            block = np.ascontiguousarray(frames[first : first + RUN_WINDOWS])
            p, h, c = self.session.run(None, {"frames": block, "h0": h, "c0": c})
            out[first : first + len(block)] = p
        # the next window's context: the end of this one as the model saw it (zero padding included)
        return out, VadState(
            h.reshape(HIDDEN).copy(), c.reshape(HIDDEN).copy(), buf[-CONTEXT_SAMPLES:].copy()
        )

    def speech_probs(self, audio: np.ndarray) -> np.ndarray:
        """:meth:`probs` of a whole recording from the start, without the state."""
        return self.probs(audio)[0]
