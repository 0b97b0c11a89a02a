"""The MAX backend: every module here imports MAX at its top, so none is imported until MAX
is needed (``kvgraph.compile`` imports :mod:`kvgraph.max.decoder` when called).

- :mod:`~kvgraph.max.lower`: the IR -> MAX Graph lowering, one rule per op class (``RULES``);
- :mod:`~kvgraph.max.kernels`: the MAX Graph building blocks the rules emit;
- :mod:`~kvgraph.max.runtime`: the process's ``InferenceSession``, ``load_program`` and
  ``CompiledProgram`` (one program loaded on MAX);
- :mod:`~kvgraph.max.decoder`: ``CompiledDecoder``, the prefill/step decoder on MAX.
"""
