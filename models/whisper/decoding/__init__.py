"""One 30 s window of audio features to text tokens, torch-free: ``protocol.py`` (what decoding
needs of a backend, and its timings), ``options.py`` (``DecodingOptions`` / ``DecodingResult``),
``tokenizer.py`` (tiktoken over openai-whisper's vocabulary files), ``torch_float.py`` (torch's
CPU float32 rounding, reproduced: SLEEF exp/log, lane sums, softmax), ``filters.py`` (the logit
filters), ``search.py`` (greedy, beam search, sampling, the ranker), ``task.py`` (the decoding
task: prompt, language detection, the loop over the backend's steps). ``adapter.py`` runs
openai-whisper's own decoding code over a backend instead: the reference the tests compare
with (it imports torch)."""
