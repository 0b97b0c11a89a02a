"""The instruction-set class the custom kernels are instantiated for (:mod:`kvgraph.max.isa`):
which class a CPU gets, its L1d, the forced class, and that programs built for one class or
one CPU are never the programs another loads (the store and memo keys say which)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgraph.errors import InputError
from kvgraph.max import isa as I

# /proc/cpuinfo flags of the kinds this project runs on (abridged to what matters)
ZEN3 = {"fpu", "sse4_2", "avx", "avx2", "fma", "bmi2"}
ZEN5 = ZEN3 | {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SPR = ZEN5 | {"amx_tile", "amx_bf16", "amx_int8"}
OLD = {"fpu", "sse2", "sse4_2", "avx"}  # AVX without AVX2/FMA


@pytest.mark.parametrize(
    "machine, flags, cls",
    [
        ("x86_64", ZEN3, "avx2"),
        ("x86_64", ZEN5, "avx512"),
        ("x86_64", SPR, "avx512"),
        ("x86_64", OLD, "sse"),
        ("x86_64", {"avx2"}, "sse"),  # AVX2 without FMA: the tiles' arithmetic is FMAs
        ("aarch64", {"fp", "asimd"}, "neon"),
        ("arm64", set(), "neon"),
    ],
)
def test_each_cpu_kind_gets_its_class(machine, flags, cls):
    assert I.classify(machine, frozenset(flags)) == cls


def test_each_class_has_a_tile_of_at_least_one_row():
    """What the kernels derive from a class at compile time (gemv's rows a tile, attend's
    output chunk), recomputed here: never a zero tile, never a chunk that does not divide."""
    for name, (lanes, regs) in I.CLASSES.items():
        assert lanes in (4, 8, 16) and regs >= 9, name
        assert min(6, (regs - 5) // 4) >= 1, name  # gemv.mojo tile_rows
        for dh in (64, 128):
            nc, rt = dh // lanes, (6 if dh <= 64 else 3)
            ch = nc
            while ch > 1 and (nc % ch or (rt + 1) * ch > regs):  # attend.mojo out_chunk
                ch -= 1
            assert ch >= 1 and nc % ch == 0 and (rt + 1) * ch <= regs, (name, dh)


def _cache_dir(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return root


def test_l1d_is_read_from_sysfs(tmp_path):
    spr = _cache_dir(tmp_path / "a", [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K")])
    zen3 = _cache_dir(tmp_path / "b", [(1, "Instruction", "32K"), (1, "Data", "32K")])
    assert I.l1d_bytes(spr) == 48 * 1024 and I.l1d_bytes(zen3) == 32 * 1024
    assert I.l1d_bytes(tmp_path / "missing") == 32 * 1024
    bad = _cache_dir(tmp_path / "c", [(1, "Data", "lots")])
    assert I.l1d_bytes(bad) == 32 * 1024


def test_a_class_can_be_forced_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.delenv(I.ENV, raising=False)  # this machine's own class (a run may force one)
    here = I.host()
    for name in I.CLASSES:
        monkeypatch.setenv(I.ENV, name)
        got = I.host()
        assert got.name == name and got.lanes == I.CLASSES[name][0] and got.l1d == here.l1d
    monkeypatch.setenv(I.ENV, "avx1024")
    with pytest.raises(InputError) as e:
        I.host()
    assert "KVGRAPH_ISA" in str(e.value) and "avx2" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv(I.ENV)
    assert I.host() == here


def _request():
    import kvgraph
    import kvgraph.specs
    from kvgraph.max.runtime import ProgramRequest

    spec = kvgraph.specs.get("llama-demo")
    return ProgramRequest(kvgraph.build(spec), kvgraph.init_weights(spec, seed=0))


@pytest.mark.max
def test_a_program_of_another_class_or_cpu_is_a_store_miss(monkeypatch, tmp_path):
    """The store key covers the CPU (its model and flags) and the kernels' class: a key forged
    for another class or another CPU finds nothing where this machine's program is stored."""
    from kvgraph.max import custom, runtime
    from kvgraph.store import ProgramStore

    if custom.kernel_package() is None:
        pytest.skip("custom kernels unavailable here: the class is not part of the key")
    r = _request()
    monkeypatch.delenv(I.ENV, raising=False)
    mine = runtime.store_key([r])
    assert runtime.store_key([r]) == mine  # stable
    others = {}
    for name in I.CLASSES:
        monkeypatch.setenv(I.ENV, name)
        others[name] = runtime.store_key([r])
        assert r.memo_key()[-1] == runtime.kernels_id() and name in runtime.kernels_id()
    monkeypatch.delenv(I.ENV)
    assert others[I.host().name] == mine
    assert len(set(others.values())) == len(I.CLASSES)  # one program per class
    monkeypatch.setattr(runtime, "cpu_id", lambda: "x86_64|AMD EPYC 7B13|fpu avx2 fma")
    foreign_cpu = runtime.store_key([r])
    assert foreign_cpu != mine

    store = ProgramStore(tmp_path / "store")
    assert store.put(mine, lambda path: Path(path).write_bytes(b"a program"))
    assert store.target(mine) is not None
    for key in [*(k for n, k in others.items() if n != I.host().name), foreign_cpu]:
        assert store.target(key) is None  # a miss: compiled anew, never this machine's program


@pytest.mark.parametrize(
    "flags, granted, env, want",
    [
        (ZEN3, False, {}, "emulate"),
        (ZEN5, False, {}, "avx512"),
        (SPR, True, {}, "amx"),
        (SPR, False, {}, "avx512"),  # AMX listed, the tile state refused
        (SPR, True, {I.AMX_ENV: "off"}, "avx512"),
        (SPR, True, {I.BF16_ENV: "avx512"}, "avx512"),
        (SPR, True, {I.BF16_ENV: "emulate"}, "emulate"),
        (ZEN3, False, {I.BF16_ENV: "avx512"}, "avx512"),  # its kernel's FMA form: any CPU
        (ZEN5, False, {I.BF16_ENV: " Auto "}, "avx512"),
    ],
)
def test_each_cpu_kind_gets_its_bfloat16_engine(flags, granted, env, want, monkeypatch):
    monkeypatch.setattr(I, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(I, "_amx_granted", lambda: granted)
    monkeypatch.setattr(I.platform, "machine", lambda: "x86_64")
    for var in (I.AMX_ENV, I.BF16_ENV):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert I.bf16_engine() == want


def test_a_bfloat16_engine_this_cpu_lacks_or_misspelt_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(I, "cpu_flags", lambda: frozenset(ZEN5))
    monkeypatch.setattr(I, "_amx_granted", lambda: False)
    monkeypatch.setenv(I.BF16_ENV, "amx")
    with pytest.raises(InputError, match="KVGRAPH_BF16=amx: .*amx_tile, amx_bf16"):
        I.bf16_engine()
    monkeypatch.setenv(I.BF16_ENV, "avx-512")
    with pytest.raises(
        InputError, match="'avx-512' is not a bfloat16 engine: one of auto, amx, avx512, emulate"
    ):
        I.bf16_engine()


@pytest.mark.parametrize(
    "info, want",
    [
        ({"flags": "fpu avx2 fma avx512f"}, {"fpu", "avx2", "fma", "avx512f"}),  # x86
        ({"Features": "fp asimd evtstrm"}, {"fp", "asimd", "evtstrm"}),  # Arm
        ({}, set()),  # no /proc/cpuinfo
    ],
)
def test_the_cpu_flags_are_read_from_either_field(info, want, monkeypatch):
    monkeypatch.setattr(I.native, "cpuinfo", lambda: info)
    assert I._flags.__wrapped__(None) == frozenset(want)  # the uncached reader


# --------------------------------------------------------------------------
# A virtual CPU target (KVGRAPH_CPU_TARGET): one machine builds the code of another kind


@pytest.fixture
def zen5_host(monkeypatch):
    """This process as a Zen 5 (x86-64, AVX-512 with bfloat16, no AMX), its CPU caches
    emptied before and after (they are keyed by the target, not by the host's fields)."""
    from kvgraph.max import native

    info = {
        "model name": "AMD EPYC 9B45",
        "flags": " ".join(
            sorted(ZEN5 | {"sse2", "ssse3", "sse4_1", "popcnt", "f16c", "avx512dq", "avx512vl"})
        ),
    }
    monkeypatch.setattr(native, "host_cpuinfo", lambda: info)
    monkeypatch.setattr(I.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(I, "_amx_granted", lambda: False)
    for var in (native.TARGET_ENV, I.ENV, I.BF16_ENV, I.AMX_ENV):
        monkeypatch.delenv(var, raising=False)
    caches = (native._cpu_id, I._flags, I._detected)
    for c in caches:
        c.cache_clear()
    yield native
    for c in caches:
        c.cache_clear()


def test_a_virtual_cpu_target_is_what_every_choice_and_key_sees(zen5_host, monkeypatch):
    """Under ``KVGRAPH_CPU_TARGET`` the class, the bfloat16 engine and the CPU part of every
    compiled-code key are the target's: an AVX-512 machine building ``x86-64-v3`` code gets
    the AVX2 tiles, emulated bfloat16 and keys no program of its own answers."""
    native = zen5_host
    host_id = native.cpu_id()
    assert I.host().name == "avx512" and I.bf16_engine() == "avx512"
    seen = {}
    for target, cls, bf16 in [
        ("x86-64-v3", "avx2", "emulate"),
        ("znver3", "avx2", "emulate"),
        ("x86-64-v2", "sse", "emulate"),
        ("x86-64-v4", "avx512", "emulate"),
        ("znver5", "avx512", "avx512"),
    ]:
        monkeypatch.setenv(native.TARGET_ENV, f" {target.upper()} ")
        assert native.virtual_target() == target
        assert I.host().name == cls and I.bf16_engine() == bf16, target
        assert target in native.cpuinfo()["model name"] and "AMD EPYC 9B45" in native.cpuinfo()["model name"]
        seen[target] = native.cpu_id()
        assert seen[target] != host_id and target in seen[target]
    assert len(set(seen.values())) == len(seen)  # x86-64-v3 and znver3: the same flags, other keys
    monkeypatch.delenv(native.TARGET_ENV)
    assert native.virtual_target() is None and native.cpu_id() == host_id and I.host().name == "avx512"


@pytest.mark.parametrize(
    "target, machine, words",
    [
        (
            "sapphirerapids",
            "x86_64",
            ["KVGRAPH_CPU_TARGET=sapphirerapids", "amx_bf16, amx_int8, amx_tile", "cannot run here"],
        ),
        ("pentium-mmx", "x86_64", ["'pentium-mmx' is not a CPU kvgraph can target", "x86-64-v3", "znver3"]),
        ("x86-64-v3", "aarch64", ["targets are x86-64 CPUs", "aarch64"]),
    ],
)
def test_a_virtual_target_this_cpu_cannot_run_is_a_one_line_error(
    zen5_host, monkeypatch, target, machine, words
):
    native = zen5_host
    monkeypatch.setattr(native.platform, "machine", lambda: machine)
    monkeypatch.setenv(native.TARGET_ENV, target)
    with pytest.raises(InputError) as e:
        native.virtual_target()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_the_session_and_the_native_libraries_build_for_the_virtual_target(zen5_host, monkeypatch, tmp_path):
    """MAX is told the target before its session exists (so before any compile), and a
    native library is built with ``--target-cpu``; without a target, neither."""
    from kvgraph.max import runtime

    native = zen5_host
    told, built = [], []
    monkeypatch.setattr(runtime, "set_virtual_cpu_target", told.append)
    monkeypatch.setattr(runtime.engine, "InferenceSession", lambda devices: ("session", told[:]))
    monkeypatch.setattr(native.custom, "build_into", lambda target, command: built.append(command))
    for env, want in [("znver3", ["znver3"]), (None, [])]:
        if env:
            monkeypatch.setenv(native.TARGET_ENV, env)
        else:
            monkeypatch.delenv(native.TARGET_ENV, raising=False)
        monkeypatch.setattr(runtime, "_SESSION", None)
        told.clear()
        assert runtime.session() == ("session", want)
        native._build(Path("mojo"), Path("lib.mojo"), tmp_path / "lib.so")
        assert (["--target-cpu", "znver3"] == built[-1][4:6]) == bool(env), built[-1]
