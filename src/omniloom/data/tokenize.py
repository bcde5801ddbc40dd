"""Documents -> token shards (the engine behind ``omniloom tokenize``).

Inputs are read by a reader (``omniloom.data.readers``: today's message JSONL, LLaVA, LibriSpeech,
WebDataset, HF datasets ...) as OpenAI-style message lists; media parts become codes through the
:class:`~omniloom.processor.Processor` and its codecs.

The work is cut into **units**: runs of up to ``unit_docs`` consecutive documents of one input.
Each unit writes its own shards (``u<unit>_<k>.safetensors`` in ``train/`` and ``val/``) and then
a record ``.tokenize/u<unit>.json``; the manifests are written last, over every unit in order.
So the same units can run in this process, in a local process pool (``workers``) or as Ray Data
tasks (``ray``) and give identical shards, and a rerun of an interrupted job with the same inputs
and settings skips the units already done. A document goes to the validation split by a seeded
hash of its position (input, record), so the split does not depend on how the work was cut.

A preference record (``--format preference``) is one position that becomes two documents, chosen
then rejected, written together (same split, same shard, adjacent); the manifests then say
``"pairs": true``. Pairs keep their prompts (``cfg_drop`` does not apply to them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .draws import position_draw
from .fim import FimSettings, apply_fim
from .formats.common import is_glob
from .formats.preference import Preference, encode_preference
from .readers import SEEKABLE, read_documents, read_jsonl, split_input
from ..utils.fileio import size_and_mtime
from .shards import MANIFEST, ShardWriter, sha256_file, write_manifest

__all__ = ["read_jsonl", "tokenize_files", "build_vocab", "plan_units", "Unit"]

STATE_DIR = ".tokenize"  # unit records and the plan they belong to, inside the output directory
DEFAULT_UNIT_DOCS = 2048


@dataclass(frozen=True)
class Unit:
    """Documents ``[start, stop)`` of input ``input_index`` (positions among its records)."""

    index: int
    input: str
    input_index: int
    start: int
    stop: int
    seek: dict[str, int] = field(default_factory=dict)  # reader options that start at ``start`` (JSONL: byte offset)

    @property
    def docs(self) -> int:
        return self.stop - self.start


def _voices_of(doc: list | Preference) -> Iterator[str]:
    for m in doc.messages if isinstance(doc, Preference) else doc:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else []:
            voice = part.get("voice") if isinstance(part, dict) else None
            if isinstance(voice, str) and voice and not voice.startswith("voice:"):
                yield voice


def plan_units(inputs: list[str | Path], input_format: str = "messages", reader_options: dict[str, Any] | None = None,
               unit_docs: int = DEFAULT_UNIT_DOCS, progress: bool = False) -> tuple[list[Unit], list[str]]:
    """Read every input once (no media decoding): its units, and the named voices in order of first
    appearance. A malformed record fails here, before any encoding."""
    from tqdm import tqdm

    if unit_docs < 1:
        raise ValueError(f"--unit-docs must be >= 1, got {unit_docs}")
    starts: list[tuple[str, int, int, dict[str, int]]] = []  # (input, input index, first record, seek)
    ends: list[int] = []
    voices: dict[str, None] = {}
    bar = tqdm(desc="read inputs", unit="doc", disable=not progress)
    for i, path in enumerate(inputs):
        n = 0
        if input_format in SEEKABLE:
            records: Iterator = SEEKABLE[input_format](path)
        else:
            records = ((where, None, msgs) for where, msgs in read_documents(path, input_format, **(reader_options or {})))
        for where, offset, messages in records:
            if n % unit_docs == 0:
                starts.append((str(path), i, n, {"seek": offset, "first_line": where} if offset is not None else {}))
                ends.append(n)
            n += 1
            ends[-1] = n
            voices.update(dict.fromkeys(_voices_of(messages)))
            bar.update(1)
        if n == 0:
            raise ValueError(f"input {path} holds no documents")
    bar.close()
    units = [Unit(k, path, i, start, stop, seek) for k, ((path, i, start, seek), stop) in enumerate(zip(starts, ends))]
    return units, list(voices)


def build_vocab(text_tokenizer: Any, codecs: dict[str, Any], voices: list[str] | None = None) -> Any:
    """A fresh :class:`Vocab` sized for the tokenizer and the given codecs."""
    from ..tokens.vocab import Vocab

    return Vocab.for_codecs(text_tokenizer.vocab_size, image_codec=codecs.get("image"),
                            audio_codec=codecs.get("audio"), mesh_codec=codecs.get("mesh"), voices=voices or None)


def tokenize_files(
    inputs: list[str | Path],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    mode: str = "sft",
    shard_tokens: int = 1 << 24,
    val_fraction: float = 0.0,
    seed: int = 0,
    codecs: dict[str, Any] | None = None,
    vocab: Any | None = None,
    progress: bool = True,
    codec_names: dict[str, str] | None = None,
    voices: list[str] | None = None,
    cfg_drop: float = 0.0,
    workers: int = 1,
    input_format: str = "messages",
    reader_options: dict[str, Any] | None = None,
    unit_docs: int = DEFAULT_UNIT_DOCS,
    ray: str | None = None,
    fim: FimSettings | None = None,
    task_tag: str = "none",
) -> dict[str, Any]:
    """Write ``out_dir/train`` (and ``out_dir/val`` when ``val_fraction > 0``). Returns a summary.

    ``codec_names`` (modality -> codec spec) is recorded in the manifests so that a model trained
    on these shards knows its codecs. ``voices``: assistant voice names for a new vocab (default:
    the named voices found in the data). ``cfg_drop``: the share of training documents with an
    image answer whose condition (the turns before it) is replaced by ``<|null|>``, so that
    ``--cfg-scale`` can guide image generation (``tokens.drop_condition``). ``input_format`` names
    the reader of every input (``omniloom.data.readers.FORMATS``), ``reader_options`` its options.
    ``fim``: fill-in-the-middle for a share of the training documents (``omniloom.data.fim``; the
    validation split stays left-to-right, so its loss stays comparable). ``task_tag``: ``"text-only"``
    puts the task tag (``tokens.with_task_tag``) first in the first user turn of every conversation
    with no media part, ``"all"`` in every conversation with a user turn, ``"none"`` (default) in
    none; the rule is recorded in the manifests, and a model trained on them records it in its
    generation.json (``task_tag``), so ``omniloom eval`` asks it the same way (docs/graft.md).

    Units (see the module docstring) run in this process (``workers=1``), in ``workers`` local
    processes (one torch thread each; codecs loaded again in each from ``codec_names``), or as Ray
    Data tasks when ``ray`` is ``"auto"`` (a running cluster, else a local Ray) or a cluster
    address; the shards are identical either way. Units finished by an earlier run with the same
    plan are skipped.
    """
    from ..codecs.text import TextTokenizer

    if mode not in ("sft", "pretrain"):
        raise ValueError(f"--mode must be 'sft' or 'pretrain', got {mode!r}")
    if input_format == "preference":
        if mode != "sft":
            raise ValueError("--format preference needs --mode sft (the loss covers the answers only)")
        cfg_drop = 0.0  # a pair's two documents keep the prompt they share
    from ..tokens import TASK_TAG_RULES

    if task_tag not in TASK_TAG_RULES:
        raise ValueError(f"--task-tag must be one of {', '.join(TASK_TAG_RULES)}, got {task_tag!r}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not 0.0 <= cfg_drop <= 1.0:
        raise ValueError(f"--cfg-drop must be in [0, 1], got {cfg_drop}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens <= 0:
        raise ValueError(f"--shard-tokens must be positive, got {shard_tokens}")
    if not inputs:
        raise ValueError("give at least one --input")
    for p in inputs:
        if not Path(p).exists() and not is_glob(p):
            raise ValueError(f"input {p} does not exist")
    codecs = dict(codecs or {})
    codec_names = dict(codec_names or {})
    if (workers > 1 or ray) and set(codec_names) != set(codecs):
        if ray:
            raise ValueError("--ray needs every codec named by its spec (codec objects cannot be re-created on workers)")
        workers = 1  # codec objects without names cannot be re-created in worker processes
    sources = list(inputs)
    inputs = [f for p in inputs for f in split_input(p, input_format)]  # units restart within one file
    units, found_voices = plan_units(inputs, input_format, reader_options, unit_docs, progress)
    tok = TextTokenizer.load(tokenizer_path)
    if vocab is None:
        vocab = build_vocab(tok, codecs, voices if voices is not None else found_voices)
    out = Path(out_dir)
    splits = ["train", "val"] if val_fraction > 0 else ["train"]
    job = _Job(str(out), splits, vocab, str(tokenizer_path), codec_names, mode, shard_tokens, val_fraction, seed,
               cfg_drop, input_format, dict(reader_options or {}), fim or FimSettings(), task_tag)
    todo, done = _prepare(out, job, units, inputs, progress)
    from tqdm import tqdm

    bar = tqdm(total=sum(u.docs for u in units), initial=sum(r["docs"] for r in done.values()), desc="tokenize",
               unit="doc", disable=not progress)
    if ray:
        records = _run_ray(job, todo, ray, workers, bar)
    elif workers > 1 and len(todo) > 1:
        records = _run_pool(job, todo, workers, bar)
    else:
        from ..processor import Processor

        processor = Processor(vocab, tok, codecs)
        records = (_run_unit(job, u, processor, lambda: bar.update(1)) for u in todo)
    for rec in records:
        done[rec["unit"]] = rec
    bar.close()
    return _finish(out, job, units, done, sources)


# -- one unit of work -----------------------------------------------------------------------------
@dataclass
class _Job:
    """What every unit needs, wherever it runs (picklable)."""

    out: str
    splits: list[str]
    vocab: Any
    tokenizer_path: str
    codec_names: dict[str, str]
    mode: str
    shard_tokens: int
    val_fraction: float
    seed: int
    cfg_drop: float
    input_format: str
    reader_options: dict[str, Any]
    fim: FimSettings = field(default_factory=FimSettings)
    task_tag: str = "none"

    def fingerprint(self, units: list[Unit], inputs: list[str | Path]) -> str:
        """Identifies the plan: units from an earlier run count only when this matches."""
        stats = [(str(Path(p).resolve()), *size_and_mtime(p)) for p in inputs]
        key = {k: v for k, v in asdict(self).items() if k not in ("vocab", "out")}
        if key.get("task_tag") == "none":
            del key["task_tag"]  # so a plan made before the option existed still resumes
        key |= {"vocab": self.vocab.to_dict() if hasattr(self.vocab, "to_dict") else repr(self.vocab),
                "tokenizer": sha256_file(self.tokenizer_path), "inputs": stats, "units": [asdict(u) for u in units]}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _documents(job: _Job, unit: Unit) -> Iterator[tuple[int, int, list]]:
    """``(record position, where, messages)`` of the unit's documents."""
    reader = read_documents(unit.input, job.input_format, **job.reader_options, **unit.seek)
    skip = 0 if unit.seek else unit.start  # a reader that cannot seek is read from its start
    pos = unit.start - skip
    for where, messages in reader:
        if pos >= unit.stop:
            break
        if pos >= unit.start:
            yield pos, where, messages
        pos += 1


def _run_unit(job: _Job, unit: Unit, processor: Any, on_doc: Callable[[], None] | None = None) -> dict[str, Any]:
    """Encode one unit's documents into its shards, then write its record (atomically, last)."""
    import torch

    from ..tokens import drop_condition, tag_by_rule, with_task_tag
    from ..utils.fileio import atomic_write_text

    out = Path(job.out)
    writers = {k: ShardWriter(out / k, job.vocab, None, job.shard_tokens, name_prefix=f"u{unit.index:05d}_", part=True)
               for k in job.splits}
    counts = {"train": 0, "val": 0, "dropped": 0, "fim": 0, "tagged": 0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster than two (measured)
    try:
        for pos, where, doc in _documents(job, unit):
            base_dir = Path(unit.input).parent
            try:
                if isinstance(doc, Preference):  # one position, two documents written together
                    tagged = tag_by_rule(doc.messages, job.task_tag)[1]  # decided on the prompt and both answers
                    if tagged:
                        doc = replace(doc, prompt=with_task_tag(doc.prompt))
                        counts["tagged"] += 1
                    pair = encode_preference(processor, doc, base_dir)
                else:
                    doc, tagged = tag_by_rule(doc, job.task_tag)
                    counts["tagged"] += tagged
                    enc = processor.encode_messages(doc, mode=job.mode, base_dir=base_dir)
            except ValueError as e:
                raise ValueError(f"{unit.input}:{where}: {e}") from e
            val = "val" in writers and position_draw(job.seed, "split", unit.input_index, pos) < job.val_fraction
            split = "val" if val else "train"
            if isinstance(doc, Preference):
                writers[split].add_pair(*((e.ids, e.loss_mask) for e in pair))
            else:
                if split == "train" and job.cfg_drop > 0:
                    dropped = drop_condition(enc, job.vocab)
                    if dropped is not None and position_draw(job.seed, "cfg-drop", unit.input_index, pos) < job.cfg_drop:
                        enc = dropped
                        counts["dropped"] += 1
                ids, mask = enc.ids, enc.loss_mask
                if split == "train" and job.fim.rate > 0:
                    ids, mask, how = apply_fim(ids, mask, job.vocab, processor.text_tokenizer, job.fim, job.seed,
                                               unit.input_index, pos)
                    counts["fim"] += how is not None
                writers[split].add(ids, mask)
            counts[split] += 1
            if on_doc is not None:
                on_doc()
    finally:
        torch.set_num_threads(threads)
    record = {"unit": unit.index, "docs": unit.docs, "counts": counts,
              "shards": {k: w.close()["shards"] for k, w in writers.items()}}
    atomic_write_text(out / STATE_DIR / f"u{unit.index:05d}.json", json.dumps(record))
    return record


# -- where the units run --------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _processor_for(job: _Job) -> Any:
    """This process's processor for ``job`` (codecs loaded by spec once per process)."""
    if _WORKER.get("key") != id(job):
        import torch

        from ..codecs import load_codec
        from ..codecs.text import TextTokenizer
        from ..processor import Processor

        torch.set_num_threads(1)
        codecs = {m: load_codec(ref) for m, ref in job.codec_names.items()}
        _WORKER.update(key=id(job), proc=Processor(job.vocab, TextTokenizer.load(job.tokenizer_path), codecs))
    return _WORKER["proc"]


def _pool_init(job: _Job) -> None:
    _WORKER["job"] = job


def _pool_unit(unit: Unit) -> dict[str, Any]:
    job = _WORKER["job"]
    return _run_unit(job, unit, _processor_for(job))


def _run_pool(job: _Job, units: list[Unit], workers: int, bar: Any) -> Iterator[dict[str, Any]]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch's thread pools
    with ctx.Pool(min(workers, len(units)), _pool_init, (job,)) as pool:
        for rec in pool.imap_unordered(_pool_unit, units):  # a worker's ValueError is re-raised here
            bar.update(rec["docs"])
            yield rec


class _RayUnit:
    """A Ray Data actor: loads the codecs once, then encodes the units it is given."""

    def __init__(self, job: _Job):
        self.job = job

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        unit = Unit(**json.loads(row["unit"]))
        try:
            return {"record": json.dumps(_run_unit(self.job, unit, _processor_for(self.job))), "error": ""}
        except ValueError as e:  # bad input: sent back as data (Ray Data keeps only the text of a raised error)
            return {"record": "", "error": str(e)}


def _run_ray(job: _Job, units: list[Unit], address: str, workers: int, bar: Any) -> Iterator[dict[str, Any]]:
    """Run the units as Ray Data tasks on a pool of actors (one CPU each). ``address``: ``auto``
    (the running cluster, else a local Ray started for this run) or a cluster address. Every node
    must see the inputs and the output directory at the same paths (a shared file system).

    The Ray driver runs in a child process, never in the caller's: a Ray driver installs SIGTERM
    handlers, may start a new local Ray from a Ray Data thread still running after shutdown, and
    ends its whole process (exit 1, no message) when that cluster's GCS goes away a minute later:
    a test runner or a server that called tokenize would die with it."""
    import importlib.util
    import multiprocessing as mp
    import queue as queue_mod

    if importlib.util.find_spec("ray") is None:
        raise ValueError("--ray needs Ray: pip install 'omniloom[ray]'")
    if not units:
        return
    ctx = mp.get_context("spawn")
    q = ctx.Queue()

    def start() -> Any:
        proc = ctx.Process(target=_ray_driver, args=(job, units, address, workers, q), name="omniloom-ray-driver")
        proc.start()
        return proc

    child, got, retried = start(), 0, False
    try:
        while True:
            try:
                kind, value = q.get(timeout=1.0)
            except queue_mod.Empty:
                if not child.is_alive():
                    if got == 0 and not retried:
                        # a driver ends its process without a word when the cluster it joined goes away
                        # (`auto` may find a local Ray that is just shutting down): one more start, on a
                        # cluster found (or started) afresh; no unit was written yet
                        print(f"warning: the Ray driver ended (exit code {child.exitcode}) before its first unit; "
                              "starting it again", file=sys.stderr)
                        child.join()
                        child, retried = start(), True
                        continue
                    raise RuntimeError(f"the Ray driver process ended (exit code {child.exitcode}) before the "
                                       "last unit") from None
                continue
            if kind == "record":
                got += 1
                bar.update(value["docs"])
                yield value
            elif kind == "error":  # bad input, or a cluster that cannot be reached: the user's to fix
                raise ValueError(value)
            elif kind == "failed":
                raise RuntimeError(f"the Ray run failed: {value}")
            else:  # "end"
                break
    finally:
        child.join(timeout=60)
        if child.is_alive():  # the caller stopped early (an error, or the generator closed)
            child.terminate()
            child.join(timeout=10)


def _ray_driver(job: _Job, units: list[Unit], address: str, workers: int, q: Any) -> None:
    """The child process of :func:`_run_ray`: connects to (or starts) Ray, runs the units, and puts
    ("record", rec) per unit, then ("end", None); or ("error", message) / ("failed", message)."""
    try:
        for rec in _ray_records(job, units, address, workers):
            q.put(("record", rec))
        q.put(("end", None))
    except ValueError as e:
        q.put(("error", str(e)))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        q.put(("failed", f"{type(e).__name__}: {e}"))


def _ray_records(job: _Job, units: list[Unit], address: str, workers: int) -> Iterator[dict[str, Any]]:
    import ray
    import ray.data

    started = False
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address == "auto":
            try:
                ray.init(address="auto", **kw)
            except ConnectionError:
                ray.init(num_cpus=workers, **kw)
        else:
            try:
                ray.init(address=address, **kw)
            except ConnectionError as e:
                raise ValueError(f"--ray {address}: cannot reach a Ray cluster there ({e})") from e
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        size = max(1, min(len(units), int(ray.cluster_resources().get("CPU", 1))))
        ds = ray.data.from_items([{"unit": json.dumps(asdict(u))} for u in units], override_num_blocks=len(units))
        ds = ds.map(_RayUnit, fn_constructor_kwargs={"job": job}, num_cpus=1,
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size))
        for row in ds.iter_rows():
            if row["error"]:
                raise ValueError(row["error"])
            yield json.loads(row["record"])
    finally:
        if started:
            ray.shutdown()


# -- before and after -----------------------------------------------------------------------------
def _prepare(out: Path, job: _Job, units: list[Unit], inputs: list[str | Path],
             progress: bool) -> tuple[list[Unit], dict[int, dict[str, Any]]]:
    """Make the output directory ready: manifests gone (an unfinished directory never looks
    complete), vocab and tokenizer in each split, and the records of an earlier run of the same
    plan kept (their units are skipped) or, for another plan, its unit files removed."""
    from ..utils.fileio import atomic_path, atomic_write_text

    state = out / STATE_DIR
    fingerprint = job.fingerprint(units, inputs)
    old = _read_json(state / "plan.json")
    done: dict[int, dict[str, Any]] = {}
    if old is not None and old.get("fingerprint") == fingerprint:
        for u in units:
            rec = _read_json(state / f"u{u.index:05d}.json")
            if rec is not None and all((out / k / s["file"]).is_file() for k, shards in rec["shards"].items()
                                       for s in shards):
                done[u.index] = rec
        if done and progress:
            print(f"tokenize: resuming, {len(done)} of {len(units)} units already done")
    elif state.is_dir():  # another plan's units: their shards must not mix with this run's
        for f in state.glob("u*.json"):
            rec = _read_json(f) or {}
            for k, shards in rec.get("shards", {}).items():
                for s in shards:
                    (out / k / s["file"]).unlink(missing_ok=True)
            f.unlink()
    for k in ("train", "val"):
        (out / k / MANIFEST).unlink(missing_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state / "plan.json", json.dumps({"fingerprint": fingerprint, "units": len(units)}))
    for k in job.splits:
        (out / k).mkdir(parents=True, exist_ok=True)
        job.vocab.save(out / k / "vocab.json")
        with atomic_path(out / k / "tokenizer.json") as tmp:
            shutil.copyfile(job.tokenizer_path, tmp)
    return [u for u in units if u.index not in done], done


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _finish(out: Path, job: _Job, units: list[Unit], done: dict[int, dict[str, Any]],
            inputs: list[str | Path]) -> dict[str, Any]:
    """Write each split's manifest over all units in order; return the summary."""
    from ..utils.fileio import atomic_write_text

    missing = [u.index for u in units if u.index not in done]
    if missing:
        raise RuntimeError(f"units {missing[:5]} did not finish")
    counts = {k: sum(done[u.index]["counts"].get(k, 0) for u in units) for k in ("train", "val", "dropped", "fim", "tagged")}
    if counts["train"] == 0:
        raise ValueError(f"no documents for the training split in {', '.join(map(str, inputs))}")
    if "val" in job.splits and counts["val"] == 0:
        raise ValueError(f"--val-fraction {job.val_fraction} left the validation split empty; use more data or 0")
    meta = {"mode": job.mode, "input_format": job.input_format, "sources": [str(p) for p in inputs],
            "codecs": dict(job.codec_names), "cfg_drop": job.cfg_drop, "units": len(units)}
    if job.fim.rate > 0:
        meta["fim"] = {"rate": job.fim.rate, "spm_rate": job.fim.spm_rate}
    if job.task_tag != "none":
        meta["task_tag"] = job.task_tag
    if job.input_format == "preference":
        meta["pairs"] = True
    manifests = {k: write_manifest(out / k, job.vocab, [s for u in units for s in done[u.index]["shards"].get(k, [])], meta)
                 for k in job.splits}
    # task prompts written beside the input (e.g. by `omniloom world generate`) travel with the
    # shards into every checkpoint, so the trained model can name them (generation.json "prompts")
    prompts = Path(inputs[0]).parent / "generation.json"
    if prompts.is_file():
        for k in job.splits:
            atomic_write_text(out / k / "generation.json", prompts.read_text())
    return {k: {"docs": m["total_docs"], "tokens": m["total_tokens"], "shards": len(m["shards"]),
                "dir": str(out / k), **({"pairs": m["total_docs"] // 2} if m.get("pairs") else {})}
            for k, m in manifests.items()} | {"vocab_size": job.vocab.size,
                                                                     "condition_dropped": counts["dropped"],
                                                                     "fim_documents": counts["fim"],
                                                                     "task_tagged": counts["tagged"]}
