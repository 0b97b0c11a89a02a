"""Whisper tiny.en's decoder through kvgraph: print its cached IR, compile, decode JFK greedily."""

from pathlib import Path

import numpy as np
import whisper

import kvgraph
from kvgraph.max.runtime import load_program
from models import whisper as mw
from models.whisper.audio.load import load_audio

dims, weights = mw.load_checkpoint("tiny.en", keep_float16=True)  # real weights, float16 as shipped
spec = mw.spec_from_dims(dims)
result = kvgraph.run_passes(kvgraph.build(spec), kvgraph.passes.default_pipeline())
print(kvgraph.format_graph(result.step).splitlines()[0][:160], "...")

encoder = load_program(mw.build_encoder(dims), weights)  # the audio encoder, also on MAX
decoder = kvgraph.compile(spec, weights)

audio = load_audio(Path(__file__).with_name("jfk.wav"))
mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio)).numpy()[None]
features = encoder(mel)[0].to_numpy()

tok = whisper.tokenizer.get_tokenizer(multilingual=False)
prompt = np.array([list(tok.sot_sequence_including_notimestamps)])
logits, state = decoder.prefill(prompt, features)
out = [int(logits[0].argmax())]
while out[-1] != tok.eot and len(out) < 100:  # plain greedy, no logit filters
    logits, state = decoder.step(np.array([[out[-1]]]), state)
    out.append(int(logits[0, -1].argmax()))
print(tok.decode([t for t in out if t < tok.eot]))
