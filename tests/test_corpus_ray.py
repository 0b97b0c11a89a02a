"""``transcribe_corpus`` / ``kvgraph transcribe-corpus``: a corpus as a Ray Data job.

Unmarked tests (no Ray cluster, no MAX): listing inputs, output names, the resume test, the
manifest, the read step, the command line's errors. The ``max`` tests run a real Ray cluster on
loopback only: a head and a second node (``ray start``, one CPU each, ``--node-ip-address
127.0.0.1``, token authentication with a token of the test's own, a temp dir of the test's own)
started by a module fixture (``python -m models.whisper.corpus.cluster start``: ``ray start`` with
the loopback address kept) and stopped by their process ids afterwards (``cluster.stop_nodes``;
``ray stop`` would stop every Ray of this user on the machine). One job over bundled speech and a corrupt file, with a
worker that dies right after writing one file's outputs (``os._exit`` from the ``on_written``
hook, once), is checked for: every transcript equal to a sequential ``transcribe`` on the
session's tiny.en, each file written exactly once, the corrupt file's error row; a rerun writes
nothing; ``kvgraph transcribe-corpus`` without ``--address`` starts (and stops) its own Ray on
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from whisper_clips import JFK, JFK_WORDS, SPEECH, assert_same_result, words
from whisper_fixtures import *  # noqa: F401,F403

from models.whisper.corpus import inputs, outputs, reading

try:  # the job's driver runs in this process: pyarrow must load before the suite's MAX models
    import models.whisper.corpus.ray_job  # noqa: F401 - (see MAX_BEFORE_PYARROW there)
except ImportError:  # no pyarrow: the Ray tests skip
    pass
from models.whisper.corpus.cluster import processes_under, stop_nodes

ROOT = Path(__file__).resolve().parents[1]
SHARED_SPEECH = ROOT.parent / "shared" / "data" / "speech"
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- no Ray, no MAX


def _tone(path: Path, seconds: float = 0.5, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def test_list_audio_paths_directories_globs(tmp_path):
    a = _tone(tmp_path / "in" / "a.wav")
    b = _tone(tmp_path / "in" / "sub" / "b.flac")
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    refs = inputs.list_audio([tmp_path / "in"])
    assert [(r.file, r.name) for r in refs] == [(str(a), "a.wav"), (str(b), os.path.join("sub", "b.flac"))]
    refs = inputs.list_audio([str(tmp_path / "in" / "**" / "*.flac"), a])  # a glob, then a file
    assert [(r.file, r.name) for r in refs] == [(str(b), os.path.join("sub", "b.flac")), (str(a), "a.wav")]
    assert [r.name for r in inputs.list_audio([a, a, tmp_path / "in"])] == ["a.wav", "sub/b.flac"]
    with pytest.raises(inputs.InputError, match=r"^\S*nope\.wav: no such file or directory$"):
        inputs.list_audio([tmp_path / "nope.wav"])
    with pytest.raises(inputs.InputError, match=r"\*\.mp3: matches no audio file$"):
        inputs.list_audio([str(tmp_path / "in" / "*.mp3")])
    _tone(tmp_path / "in" / "a.flac")  # a.wav and a.flac: the same outputs
    with pytest.raises(
        inputs.InputError, match=r"a\.wav: its outputs \(a\.\*\) would overwrite those of \S*a\.flac;"
    ):
        inputs.list_audio([tmp_path / "in"])


def test_list_audio_uris(tmp_path):
    pytest.importorskip("pyarrow.fs")
    _tone(tmp_path / "x" / "a.wav")
    _tone(tmp_path / "x" / "d" / "b.wav")
    uri = (tmp_path / "x").as_uri()
    refs = inputs.list_audio([uri])
    assert [(r.file, r.name) for r in refs] == [(uri + "/a.wav", "a.wav"), (uri + "/d/b.wav", "d/b.wav")]
    assert [r.name for r in inputs.list_audio([uri + "/d/*.wav"])] == ["b.wav"]
    assert [r.name for r in inputs.list_audio([uri + "/a.wav"])] == ["a.wav"]
    with pytest.raises(inputs.InputError, match="nope.wav: no such file or directory"):
        inputs.list_audio([uri + "/nope.wav"])
    # a URI reads the bytes the path reads
    np.testing.assert_array_equal(
        reading.read_samples(uri + "/a.wav"), reading.read_samples(str(tmp_path / "x/a.wav"))
    )


def test_outputs_resume_and_manifest(tmp_path):
    result = {
        "text": " Hello there.",
        "language": "en",
        "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 1.5, "text": " Hello there.", "tokens": [1]}],
    }
    assert not outputs.is_done("sub/a.wav", str(tmp_path), "all")
    written = outputs.write_transcript(result, "sub/a.wav", str(tmp_path), "all")
    assert sorted(written) == sorted(outputs.output_files("sub/a.wav", str(tmp_path), "all"))
    assert [os.path.basename(p) for p in outputs.output_files("sub/a.wav", "o", "all")] == [
        f"a.{f}" for f in ("txt", "vtt", "srt", "tsv", "json")
    ]
    assert (tmp_path / "sub" / "a.txt").read_text() == "Hello there.\n"
    assert outputs.is_done("sub/a.wav", str(tmp_path), "all")
    assert outputs.recorded_language("sub/a.wav", str(tmp_path)) == "en"
    os.unlink(tmp_path / "sub" / "a.srt")  # one output missing: not done
    assert not outputs.is_done("sub/a.wav", str(tmp_path), "all")
    assert outputs.is_done("sub/a.wav", str(tmp_path), "txt")
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.json", "a.tsv", "a.txt", "a.vtt"]  # no temporaries
    rows = [
        outputs.manifest_row("a.wav", "ok", duration=1.5, language="en"),
        outputs.manifest_row("b", "error", error="x"),
    ]
    path = outputs.write_manifest(rows, str(tmp_path / "manifest.jsonl"))
    assert outputs.read_manifest(path) == rows
    assert list(rows[1]) == list(outputs.MANIFEST_FIELDS)
    with pytest.raises(ValueError, match="status 'done'"):
        outputs.manifest_row("a", "done")
    with pytest.raises(ValueError, match="output format 'mp4'"):
        outputs.output_files("a.wav", "o", "mp4")


def test_read_batch_reports_bad_files_in_their_rows(tmp_path):
    good = _tone(tmp_path / "good.wav", seconds=1.0)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    out = reading.read_batch({"file": np.array([str(good), str(bad)], dtype=object)})
    samples = np.frombuffer(out["samples"][0], np.float32)
    np.testing.assert_array_equal(samples, reading.read_samples(str(good)))
    assert out["duration"][0] == 1.0 and out["error"][0] == ""
    assert out["samples"][1] == b"" and np.isnan(out["duration"][1])
    assert out["error"][1].startswith(f"{bad}: truncated WAV file")


def test_reader_actor_reads_as_read_batch(tmp_path):
    good = _tone(tmp_path / "a.wav", seconds=0.25)
    batch = {"file": np.array([str(good), str(tmp_path / "missing.wav")], dtype=object)}
    got, want = reading.Reader()(batch), reading.read_batch(batch)
    assert list(got["error"]) == list(want["error"]) and got["error"][0] == "" and got["error"][1]
    assert got["samples"][0] == want["samples"][0] and got["duration"][0] == 0.25


def test_files_go_out_largest_first(tmp_path):
    from models.whisper.corpus.ray_job import dispatch_order

    files = [_tone(tmp_path / f"{n}.wav", seconds=s) for n, s in (("a", 0.5), ("b", 2.0), ("c", 1.0))]
    refs = [inputs.AudioRef(str(f), f.name) for f in files]
    refs.insert(1, inputs.AudioRef("s3://bucket/x.wav", "x.wav"))  # a URI: size unknown, after
    refs.append(inputs.AudioRef(str(tmp_path / "gone.wav"), "gone.wav"))  # cannot be seen: after
    order = dispatch_order(list(enumerate(refs)))
    assert [i for i, _ in order] == [2, 3, 0, 1, 4]


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from models.whisper.apps.cli import corpus

    assert corpus.main([str(JFK)]) == 2  # --output-dir is required
    assert "required: --output-dir" in capsys.readouterr().err
    assert corpus.main([str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"kvgraph: error: {tmp_path / 'nope'}: no such file or directory\n"
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert corpus.main([str(JFK), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvgraph: error: ") and "pip install 'kvgraph[ray]'" in err


# ---------------------------------------------------------------- a Ray cluster on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _ray_env(temp: Path) -> dict:
    """Ray's environment for the test's processes: token authentication with the test's own
    token (never ~/.ray), temp files under ``temp``."""
    token = temp / "token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_TMPDIR": str(temp)}


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, one CPU each, on 127.0.0.1; the driver's environment set
    for them while the module runs. Yields the head's address."""
    temp = Path(tempfile.mkdtemp(prefix="kvr-", dir="/tmp"))  # short: Unix socket paths
    env = _ray_env(temp)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before Ray is imported: it reads its token once
    port = _free_port()
    common = ["--node-ip-address", LOOPBACK, "--num-cpus", "1", "--object-store-memory", str(150 * 2**20)]
    common += ["--disable-usage-stats"]
    head = ["start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp)]
    second = ["start", "--address", f"{LOOPBACK}:{port}"]
    try:
        pytest.importorskip("ray.data", reason="the 'ray' extra is not installed")
        for args in (head + common, second + common):
            run = subprocess.run(
                [sys.executable, "-m", "models.whisper.corpus.cluster", *args],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stdout + run.stderr
        yield f"{LOOPBACK}:{port}"
    finally:
        left = stop_nodes(temp)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


class WriteLog:
    """The ``on_written`` hook of the test job: appends each written file to a log; the first
    time ``victim`` is written, its worker dies (``os._exit``) right after the write."""

    def __init__(self, log: Path, victim: str):
        self.log, self.victim, self.marker = str(log), victim, str(log) + ".killed"

    def __call__(self, file: str, paths: list) -> None:
        with open(self.log, "a") as f:
            f.write(file + "\n")
        if file.endswith(self.victim) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


def _corpus(root: Path) -> tuple[list[Path], Path]:
    """jfk, the two bundled clips (one in a sub-directory), a shared clip when there is one,
    and a corrupt WAV."""
    files = [root / "jfk.wav", root / "demo-nogo.wav", root / "sub" / "basic-pbx-ivr-main.wav"]
    sources = [JFK, SPEECH / "demo-nogo.wav", SPEECH / "basic-pbx-ivr-main.wav"]
    if (SHARED_SPEECH / "dir-instr.wav").is_file():
        files.append(root / "dir-instr.wav")
        sources.append(SHARED_SPEECH / "dir-instr.wav")
    for dst, src in zip(files, sources):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    bad = root / "broken.wav"
    bad.write_bytes(JFK.read_bytes()[:3000])  # a WAV cut short
    return files, bad


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory):
    """One job on the cluster, a worker killed mid-run; the rows, paths and write log."""
    import ray.cloudpickle

    from models.whisper.corpus.ray_job import transcribe_corpus

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook travels by value
    tmp = tmp_path_factory.mktemp("corpus")
    files, bad = _corpus(tmp / "in")
    log = tmp / "writes.log"
    out = tmp / "out"
    hook = WriteLog(log, victim="demo-nogo.wav")
    rows = transcribe_corpus([tmp / "in"], out, address=cluster, batch_size=2, on_written=hook)
    return {"rows": rows, "files": files, "bad": bad, "log": log, "out": out, "hook": hook, "in": tmp / "in"}


@pytest.mark.max
def test_cluster_is_on_loopback_only(cluster):
    from models.whisper.corpus.cluster import node_addresses, ray_session

    with ray_session(cluster) as ray:
        assert node_addresses(ray) == [LOOPBACK, LOOPBACK]
        assert ray.util.get_node_ip_address() == LOOPBACK  # the driver's node


@pytest.mark.max
def test_job_transcripts_equal_sequential_transcribe(job, tiny_model):
    rows = {r["file"]: r for r in job["rows"]}
    assert [r["file"] for r in job["rows"]] == [r.file for r in inputs.list_audio([job["in"]])]
    assert sorted(rows) == sorted(str(f) for f in [*job["files"], job["bad"]])
    for f in job["files"]:
        row = rows[str(f)]
        assert row["status"] == "ok" and row["error"] is None, row
        assert row["node"] == LOOPBACK and row["language"] == "en"
        assert row["duration"] == pytest.approx(sf.info(f).duration, abs=1e-3)
        name = os.path.relpath(f, job["in"])
        [json_path] = outputs.output_files(name, str(job["out"]), "json")
        ours = json.loads(Path(json_path).read_text())
        assert_same_result(ours, tiny_model.transcribe(str(f)))
    assert (job["out"] / "sub" / "basic-pbx-ivr-main.srt").is_file()  # sub-directories kept
    assert words((job["out"] / "jfk.txt").read_text()) == JFK_WORDS


@pytest.mark.max
def test_job_survives_a_dead_worker_writing_each_file_once(job):
    assert os.path.exists(job["hook"].marker)  # the worker did die
    writes = Counter(job["log"].read_text().split())
    assert writes == Counter(str(f) for f in job["files"])  # each file written exactly once
    assert outputs.read_manifest(str(job["out"] / "manifest.jsonl")) == job["rows"]


@pytest.mark.max
def test_job_reports_a_corrupt_file_and_goes_on(job):
    [row] = [r for r in job["rows"] if r["status"] != "ok"]
    assert row["file"] == str(job["bad"]) and row["status"] == "error"
    assert row["error"].startswith(f"{job['bad']}: truncated WAV file")
    assert not list(job["out"].glob("broken.*"))


@pytest.mark.max
def test_rerun_writes_nothing(job, cluster):
    from models.whisper.corpus.ray_job import transcribe_corpus

    before = {p: p.stat().st_mtime_ns for p in job["out"].rglob("*") if p.name != "manifest.jsonl"}
    log = job["log"].read_text()
    hook = WriteLog(job["log"], victim="none")
    good = [job["in"] / "jfk.wav", job["in"] / "demo-nogo.wav"]
    rows = transcribe_corpus(good, job["out"], address=cluster, on_written=hook)
    assert [(r["status"], r["language"]) for r in rows] == [("skipped", "en"), ("skipped", "en")]
    assert job["log"].read_text() == log
    assert {p: p.stat().st_mtime_ns for p in job["out"].rglob("*") if p.name != "manifest.jsonl"} == before


@pytest.mark.max
def test_cli_starts_a_local_ray_on_loopback(tmp_path, cluster):
    temp = Path(tempfile.mkdtemp(prefix="kvr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(_ray_env(temp))
    env.pop("RAY_AUTH_MODE")  # a local Ray's default: token authentication, here with the test's token
    cmd = [sys.executable, "-m", "kvgraph", "transcribe-corpus", str(JFK), "-o", str(tmp_path), "-f", "txt"]
    try:
        run = subprocess.run(
            [*cmd, "--num-cpus", "1", "--no-progress"], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-3000:]
        [row] = outputs.read_manifest(str(tmp_path / "manifest.jsonl"))
        assert (row["status"], row["node"]) == ("ok", LOOPBACK)
        assert words((tmp_path / "jfk.txt").read_text()) == JFK_WORDS
        assert "1 ok, 0 skipped, 0 failed" in run.stderr
        assert not processes_under(temp)  # its Ray stopped with it
    finally:
        stop_nodes(temp)
        shutil.rmtree(temp, ignore_errors=True)
