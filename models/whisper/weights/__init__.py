"""A checkpoint to openai-whisper's ``(dims, state_dict)`` arrays: ``load.py`` (the one entry,
``load_checkpoint``) over ``packages.py`` (where a named checkpoint is installed),
``ct2.py`` + ``from_ct2.py`` (CTranslate2's ``model.bin`` and its names mapped to openai's),
``pt.py`` (openai's ``.pt``), ``shapes.py`` (openai's shape table, checked on every load) and
``alignment_heads.py`` (the cross-attention heads word timestamps read)."""
