"""kvgraph.plugins: the core imports no model family; families add specs and commands as plugins.

The entry point declared in pyproject.toml is exercised without reinstalling the checkout: a
throwaway ``*.dist-info`` on ``PYTHONPATH`` declares the same entry point to a subprocess.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib import import_module
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import tomllib

import kvgraph.plugins
import models.whisper.plugin
from kvgraph import DecoderSpec, core_specs, specs
from kvgraph.cli import main
from kvgraph.plugins import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_nothing_from_models():
    bad = []
    for path in sorted((ROOT / "kvgraph").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            if any(m == "models" or m.startswith("models.") for m in mods):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {', '.join(mods)}")
    assert not bad, "the kvgraph core imports the models package:\n" + "\n".join(bad)


def _declared_plugins() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["entry-points"][kvgraph.plugins.GROUP]


def test_pyproject_declares_the_models_plugin():
    declared = _declared_plugins()
    assert declared == {"whisper": "models.whisper.plugin:register"}
    for value in declared.values():
        module, _, attr = value.partition(":")
        assert callable(getattr(import_module(module), attr)), value


def _run(args, extra_path=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "kvgraph", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_point_discovery_end_to_end(tmp_path):
    """With pyproject.toml's entry point installed, ``kvgraph list`` names Whisper's specs first
    and ``kvgraph transcribe`` reaches models.whisper.apps.cli.transcribe."""
    info = tmp_path / "kvgraph_plugin_probe-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvgraph-plugin-probe\nVersion: 0\n")
    lines = [f"{k} = {v}" for k, v in _declared_plugins().items()]
    (info / "entry_points.txt").write_text(f"[{kvgraph.plugins.GROUP}]\n" + "\n".join(lines) + "\n")
    r = _run(["list"], str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["whisper-tiny.en", "whisper-base", "llama-demo"]
    assert r.stderr == ""
    r = _run(["transcribe", "--help"], str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: kvgraph transcribe") and "--no-kv-cache" in r.stdout


@pytest.fixture
def bare(monkeypatch):
    """The CLI and kvgraph.specs over a registry with no plugin but the core."""
    reg = Registry(discover=False, core=[core_specs.register_core])
    monkeypatch.setattr(kvgraph.plugins, "REGISTRY", reg)
    monkeypatch.setattr(specs, "BUILTIN", specs._Builtins(reg))
    return reg


def test_without_plugins_transcribe_is_a_one_line_error(bare, capsys):
    assert main(["transcribe", "a.wav", "--model", "base"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "'transcribe'" in err and "kvgraph.plugins" in err and "Traceback" not in err
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["llama-demo"]


def test_transcribe_arguments_are_forwarded_untouched(monkeypatch):
    import models.whisper.apps.cli.transcribe

    seen = []
    monkeypatch.setattr(models.whisper.apps.cli.transcribe, "main", lambda argv: seen.append(argv) or 3)
    argv = ["a.wav", "--model", "show", "-h", "--", "list"]
    assert main(["transcribe", *argv]) == 3
    assert seen == [argv]


def test_registry_applies_a_plugin_once_and_all_or_nothing():
    reg = Registry(discover=False, core=[core_specs.register_core])
    reg.use(models.whisper.plugin.register)
    reg.use(models.whisper.plugin.register)
    assert list(reg.specs()) == ["whisper-tiny.en", "whisper-base", "llama-demo"]
    assert list(reg.commands()) == ["transcribe", "prepare", "serve", "listen", "transcribe-corpus"]
    assert reg.specs()["whisper-base"].owner == "models.whisper.plugin:register"
    assert isinstance(reg.specs()["whisper-tiny.en"].make(), DecoderSpec)

    def clashes(r):
        r.add_spec("fresh", core_specs.llama_demo)
        r.add_spec("llama-demo", core_specs.llama_demo)

    with pytest.raises(ValueError, match="'llama-demo' .* already registered by kvgraph"):
        reg.use(clashes)
    assert "fresh" not in reg.specs()
    with pytest.raises(ValueError, match="reserved"):
        reg.use(lambda r: r.add_command("show", print))


def test_a_broken_entry_point_is_skipped_with_a_warning(monkeypatch):
    eps = [
        EntryPoint("broken", "no_such_module_kvgraph:register", kvgraph.plugins.GROUP),
        EntryPoint("whisper", "models.whisper.plugin:register", kvgraph.plugins.GROUP),
    ]
    monkeypatch.setattr(
        "importlib.metadata.entry_points", lambda group: eps if group == kvgraph.plugins.GROUP else []
    )
    reg = Registry(core=[core_specs.register_core])
    with pytest.warns(RuntimeWarning, match="broken = no_such_module_kvgraph:register"):
        names = list(reg.specs())
    assert names == ["whisper-tiny.en", "whisper-base", "llama-demo"]
