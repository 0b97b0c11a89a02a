"""A corpus transcribed as a Ray Data job: :func:`transcribe_corpus`.

The pipeline (Ray Data's batch-inference shape)::

    from_items(files)                                 the files not done yet, listed by the driver
      .map_batches(Reader, ActorPoolStrategy)          reader actors (no CPU reserved): read +
                                                       decode + resample to 16 kHz, a file a call
      .map_batches(CorpusWorker, ActorPoolStrategy)    actors: model loaded once, batching engine
                                                       fed a file a call, up to batch_size at once;
                                                       outputs written by the actor
      .iter_rows()                                     the driver: one manifest row per file

Files whose outputs all exist are skipped before Ray is asked for anything (a rerun with
nothing left to do does not start Ray). The rest go out largest first (local files by size):
a worker's last file is then a short one, and the workers finish together. A file that cannot
be read or transcribed becomes an ``error`` row; the job goes on. An actor that dies (its
process killed, its node lost) is restarted by Ray and its calls are sent again (Ray Data's
actor pool retries them without limit); the files it had written are not written again
(:mod:`models.whisper.corpus.worker`).
Actors are placed by Ray Data's default strategy, which spreads them over the nodes.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator

from models.whisper.corpus.cluster import node_addresses, ray_session
from models.whisper.corpus.inputs import AudioRef, is_uri, list_audio
from models.whisper.corpus.outputs import formats_of, is_done, manifest_row, recorded_language, write_manifest
from models.whisper.corpus.reading import Reader
from models.whisper.corpus.worker import CorpusWorker, WorkerConfig

#: pyarrow (Ray Data's blocks) loaded after a MAX model in the same process crashes in its
#: compute kernels (SIGSEGV in opentelemetry's RuntimeContext: the two libraries' copies clash;
#: measured with max 26.7 and pyarrow 26.0.1); loaded before, both work. The driver loads no
#: model; a process that already did is warned (see transcribe_corpus).
MAX_BEFORE_PYARROW = "pyarrow" not in sys.modules and "kvgraph.max.runtime" in sys.modules
import pyarrow  # noqa: E402, F401 - before any MAX model of this process: see above

__all__ = ["transcribe_corpus", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.jsonl"


def transcribe_corpus(
    inputs: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    address: str | None = None,
    model: str = "tiny.en",
    output_format: str = "all",
    batch_size: int = 8,
    num_workers: int | None = None,
    cpus_per_worker: float = 1.0,
    num_cpus: int | None = None,
    node_ip_address: str | None = None,
    manifest: str | None = MANIFEST_NAME,
    writer_args: dict | None = None,
    kv_cache: bool = True,
    on_written: Callable[[str, list], None] | None = None,
    ray_init_args: dict | None = None,
    progress: bool = True,
    **transcribe_options,
) -> list[dict]:
    """Transcribes every audio file of ``inputs`` (paths, directories, globs, pyarrow URIs:
    :func:`~models.whisper.corpus.inputs.list_audio`) into ``output_dir`` with Ray Data; returns
    the manifest rows (:data:`~models.whisper.corpus.outputs.MANIFEST_FIELDS`), in input order,
    also written to ``output_dir/manifest`` (JSON lines; None: not written).

    ``address``: an existing Ray cluster (``"auto"``, ``"host:port"``, ``"ray://host:port"``);
    None starts a local Ray on this machine (``num_cpus``, default all) bound to 127.0.0.1
    (:func:`~models.whisper.corpus.cluster.ray_session`). ``num_workers`` actors (default: one
    per live node), each reserving ``cpus_per_worker`` CPUs, load ``model`` once and decode
    ``batch_size`` files at once; ``transcribe_options`` are ``transcribe``'s (``language``,
    ``beam_size``, ``temperature``, ``word_timestamps``, ...); ``writer_args`` the writers' word
    options. Every worker must see ``output_dir`` at the same path (one machine, or a shared
    filesystem).
    ``on_written(file, paths)`` runs on the worker once a file's outputs are in place.
    ``progress``: Ray Data's progress bars (on a terminal; log lines otherwise)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    formats_of(output_format)
    if MAX_BEFORE_PYARROW:
        warnings.warn(
            "this process loaded MAX before pyarrow; pyarrow may crash (SIGSEGV): run the job from a "
            "process that has not loaded a model, or import models.whisper.corpus.ray_job first",
            RuntimeWarning,
            stacklevel=2,
        )
    refs = list_audio(inputs)
    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    config = WorkerConfig(
        model=model,
        output_dir=output_dir,
        output_format=output_format,
        batch_size=batch_size,
        kv_cache=kv_cache,
        writer_args=dict(writer_args or {}),
        options=dict(transcribe_options),
        on_written=on_written,
    )
    rows: dict[int, dict] = {}
    pending: list[tuple[int, AudioRef]] = []
    for i, ref in enumerate(refs):
        if is_done(ref.name, output_dir, output_format):
            rows[i] = manifest_row(ref.file, "skipped", language=recorded_language(ref.name, output_dir))
        else:
            pending.append((i, ref))
    if pending:
        session = ray_session(
            address, num_cpus=num_cpus, node_ip_address=node_ip_address, init_args=ray_init_args
        )
        with session as ray:
            ray.data.DataContext.get_current().enable_progress_bars = progress
            workers = min(num_workers or len(node_addresses(ray)) or 1, len(pending))
            job = _pipeline(ray, pending, config, workers, cpus_per_worker)
            for index, row in job:
                rows[index] = row
    ordered = [rows[i] for i in range(len(refs))]
    if manifest:
        write_manifest(ordered, os.path.join(output_dir, manifest))
    return ordered


def _pipeline(
    ray, pending: list[tuple[int, AudioRef]], config: WorkerConfig, workers: int, cpus: float
) -> Iterator[tuple[int, dict]]:
    """The Ray Data job over the ``pending`` files; yields ``(index, manifest row)`` as rows
    arrive. Reads take no CPU of their own (they are brief beside decoding, and a node whose
    CPUs the actors hold must still read): two reader actors per worker. Each worker takes a
    file a call, ``batch_size`` calls at once, all into its one batching engine: a worker
    asks for the next file as soon as one finishes, so no worker waits on another's batch."""
    items = [{"index": i, "file": ref.file, "name": ref.name} for i, ref in dispatch_order(pending)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        Reader,
        batch_size=1,
        batch_format="numpy",
        num_cpus=0,
        compute=ray.data.ActorPoolStrategy(size=2 * workers),
    )
    ds = ds.map_batches(
        CorpusWorker,
        fn_constructor_args=(config,),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=workers,
            max_concurrent_calls_per_actor=config.batch_size,
            max_tasks_in_flight_per_actor=config.batch_size,  # none queued behind a busy worker
            enable_true_multi_threading=True,
        ),
        num_cpus=cpus,
    )
    for row in ds.iter_rows():
        yield int(row["index"]), _manifest_row(row)


def dispatch_order(pending: list[tuple[int, AudioRef]]) -> list[tuple[int, AudioRef]]:
    """The order files go out to the workers: largest first (the longest-processing-time-first
    rule: the workers' last files are short ones, so they finish close together), local files
    by size in bytes; URIs and files that cannot be seen after them, in their given order."""
    return sorted(pending, key=lambda p: -_size(p[1].file))


def _size(file: str) -> int:
    """A local file's size in bytes (0 for a URI or a file that cannot be seen)."""
    if is_uri(file):
        return 0
    try:
        return os.path.getsize(file)
    except OSError:
        return 0


def _manifest_row(row) -> dict:
    """A worker's row as a manifest row (empty strings and NaN back to None)."""

    def text(key):
        return str(row[key]) if row[key] not in (None, "") else None

    def number(key):
        value = row[key]
        return None if value is None or not math.isfinite(float(value)) else round(float(value), 3)

    return manifest_row(
        str(row["file"]),
        str(row["status"]),
        duration=number("duration"),
        language=text("language"),
        error=text("error"),
        node=text("node"),
        load_s=number("load_s"),
    )
