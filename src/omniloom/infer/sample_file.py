"""``omniloom sample``'s work: a prompts JSONL in, K scored candidates per prompt out, resumably;
then preference pairs (TRL's format) and the best answer per prompt (a messages JSONL).

**Prompts** (one JSON object a line): ``messages`` (OpenAI-style, media by path relative to the
prompts file), optional ``id`` (default: the line number), ``output`` (``text`` | ``audio`` |
``image``), ``voice``; every other field is the prompt's metadata, carried to its samples as
``meta`` for the reward (e.g. a world task's ``task`` and ``truth``). A prompt whose messages end
with an assistant turn (a training or test file such as ``omniloom world generate``'s) has that
turn taken off as its ``reference``; without an ``output``, the reference's first medium sets it
(an image or a spoken answer), else the answer is free (the model picks).

**Samples** (one line per candidate): ``id``, ``messages`` (the prompt), ``candidate`` (an
assistant message; media written under ``<out stem>_media/`` and named by a path relative to the
samples file), ``output``, ``voice`` (of a spoken answer), ``sampling`` (index, n, seed, temperature, top_p, top_k, cfg_scale,
max_new_tokens, latency_s: wall time of the batch that drew it, batch), ``finish_reason``,
``answer_ids`` (the sampled ids after the prompt, for a verifier), ``meta``, ``reference``, and
with a reward ``score`` and ``reward`` (its spec).

**Resume**: a prompt's K lines are appended in one write once all K are drawn and scored. A rerun
keeps the prompts that have their K lines, redoes any that has fewer (their lines are removed),
drops a trailing partial line (a kill during a write), and scores lines that lack the current
reward's score.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .candidates import Candidate, candidate_seed, default_voice, sample_candidates
from .sampling import SamplingParams

__all__ = ["Prompt", "read_prompts", "run_sampling", "read_samples", "make_pairs", "best_lines", "write_pairs",
           "write_best", "media_dir_for", "absolute_paths", "code_message"]

_RESERVED = ("messages", "id", "output", "voice")
_OUTPUT_PARTS = {"image": "image", "image_url": "image", "image_codes": "image",
                 "audio": "audio", "input_audio": "audio", "audio_codes": "audio"}
_PATH_KEYS = ("path", "image", "audio", "video")


@dataclass
class Prompt:
    id: str
    line: int
    messages: list[dict]  # media paths absolute
    output: str | None
    voice: str | None
    reference: dict | None = None
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# media paths


def _is_file_ref(value: Any) -> bool:
    return isinstance(value, str) and not value.startswith(("data:", "http://", "https://"))


def _map_paths(messages: list[dict], fn: Callable[[str], str]) -> list[dict]:
    """A copy of ``messages`` with ``fn`` applied to every media file path in their parts."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if isinstance(p, dict):
                    p = dict(p)
                    for k in _PATH_KEYS:
                        if k in p and _is_file_ref(p[k]):
                            p[k] = fn(p[k])
                    if isinstance(p.get("frames"), list):
                        p["frames"] = [fn(f) if _is_file_ref(f) else f for f in p["frames"]]
                parts.append(p)
            m = {**m, "content": parts}
        out.append(m)
    return out


def absolute_paths(messages: list[dict], base: Path) -> list[dict]:
    return _map_paths(messages, lambda s: str((base / s).resolve()) if not Path(s).is_absolute() else s)


def _relative(messages: list[dict], base: Path) -> list[dict]:
    return _map_paths(messages, lambda s: os.path.relpath(s, base) if Path(s).is_absolute() else s)


def _rebase(messages: list[dict], src: Path, dst: Path) -> list[dict]:
    return _relative(absolute_paths(messages, src), dst)


def media_dir_for(out: Path) -> Path:
    """Where the media of ``out``'s candidates go: ``<dir>/<stem>_media``."""
    return out.parent / f"{out.stem}_media"


def _safe(pid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", pid)[:60]
    return name if name == pid else f"{name}-{hashlib.sha1(pid.encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------------------------------------
# prompts


def _output_of(message: dict) -> str:
    content = message.get("content")
    for p in content if isinstance(content, list) else []:
        if isinstance(p, dict) and p.get("type") in _OUTPUT_PARTS:
            return _OUTPUT_PARTS[p["type"]]
    return "text"


def _voice_of(message: dict) -> str | None:
    content = message.get("content")
    for p in content if isinstance(content, list) else []:
        if isinstance(p, dict) and _OUTPUT_PARTS.get(p.get("type")) == "audio" and isinstance(p.get("voice"), str):
            return p["voice"]
    return None


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a JSONL file (see the module's docstring); ValueError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist")
    base = path.parent.resolve()
    prompts, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            msgs = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise ValueError(f"{where}: expected an object with a non-empty \"messages\" list")
            reference = None
            if msgs[-1].get("role") == "assistant":
                reference, msgs = msgs[-1], msgs[:-1]
            if not msgs or not any(m.get("role") == "user" for m in msgs):
                raise ValueError(f"{where}: the prompt has no user turn to answer")
            output = rec.get("output")
            if output is None and reference is not None:
                output = _output_of(reference)
            if output is not None and output not in ("text", "audio", "image"):
                raise ValueError(f"{where}: output must be text, audio or image, got {output!r}")
            voice = rec.get("voice", _voice_of(reference) if reference else None)
            if voice is not None and not isinstance(voice, str):
                raise ValueError(f"{where}: voice must be a string, got {voice!r}")
            pid = str(rec.get("id", f"line{lineno}"))
            if pid in seen:
                raise ValueError(f"{where}: id {pid!r} was already used on line {seen[pid]}; ids must be unique")
            seen[pid] = lineno
            meta = {k: v for k, v in rec.items() if k not in _RESERVED}
            prompts.append(Prompt(pid, lineno, absolute_paths(msgs, base), output, voice,
                                  absolute_paths([reference], base)[0] if reference else None, meta))
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt")
    return prompts


# ------------------------------------------------------------------------------------------------
# samples file


def read_samples(path: str | Path, repair: bool = False) -> list[dict]:
    """The sample lines of ``path`` ([] when it does not exist). A last line without its newline (a
    write cut off) is dropped, and with ``repair`` cut off the file; any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(cut)
    out = []
    for lineno, raw in enumerate(data[:cut].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}); not a sample file this verb wrote?") from None
        if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("sampling"), dict):
            raise ValueError(f"{path}:{lineno}: not a sample line (needs id and sampling)")
        out.append(rec)
    return out


def _write_lines(path: Path, lines: list[dict]) -> None:
    from ..utils.fileio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in lines))


def _append(path: Path, lines: list[dict]) -> None:
    """All of one prompt's lines in one write, flushed to disk."""
    data = "".join(json.dumps(x) + "\n" for x in lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _candidate_message(c: Candidate, media: Path, pid: str, out_dir: Path) -> dict:
    """The assistant message of a candidate, its media written under ``media/<pid>/``."""
    from ..utils.fileio import atomic_write_bytes
    from ..utils.media import audio_to_wav_bytes, rgb_to_png_bytes

    content: list[dict] = []
    folder = media / _safe(pid)
    images = 0
    for p in c.parts:
        if p["type"] == "text":
            content.append({"type": "text", "text": p["text"]})
        elif p["type"] == "image":
            f = folder / f"c{c.index}{'' if images == 0 else f'_{images}'}.png"
            images += 1
            atomic_write_bytes(f, rgb_to_png_bytes(p["image"]))
            content.append({"type": "image", "path": os.path.relpath(f, out_dir)})
        elif p["type"] == "audio":
            f = folder / f"c{c.index}.wav"
            atomic_write_bytes(f, audio_to_wav_bytes(p["audio"], p["sample_rate"]))
            content.append({"type": "audio", "path": os.path.relpath(f, out_dir), "voice": p["voice"],
                            "transcript": p["transcript"] or None})
    return {"role": "assistant", "content": content}


def _for_reward(line: dict, out_dir: Path) -> dict:
    """A sample line with every media path absolute (what a reward reads)."""
    rec = dict(line)
    rec["messages"] = absolute_paths(line["messages"], out_dir)
    rec["candidate"] = absolute_paths([line["candidate"]], out_dir)[0]
    if line.get("reference"):
        rec["reference"] = absolute_paths([line["reference"]], out_dir)[0]
    return rec


@dataclass
class SampleReport:
    prompts: int  # prompts in the input
    skipped: int  # already fully sampled
    redone: int  # partly sampled before: their lines removed and sampled again
    sampled: int  # prompts sampled by this run
    rescored: int  # lines scored after the fact (sampled before without this reward)
    seconds: float = 0.0


def run_sampling(omni: Any, prompts_path: str | Path, out: str | Path, n: int, sampling: SamplingParams,
                 cfg_scale: float | None = None, batch: int | None = None, reward: Any = None,
                 progress: bool = True) -> SampleReport:
    """Sample ``n`` candidates for every prompt of ``prompts_path`` into ``out`` (resumable; see above).

    ``sampling.seed`` is the run's seed: each prompt's candidates get seeds derived from it and the
    prompt's id, so a rerun redraws a prompt identically. ``cfg_scale`` (default: the model's
    generation.json) applies to image answers. ``reward``: a :class:`~omniloom.infer.rewards.Reward`.
    """
    import time

    from tqdm import tqdm

    from ..tokens import tag_prompt

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_dir = out.parent.resolve()
    prompts = read_prompts(prompts_path)
    t0 = time.time()
    lines = read_samples(out, repair=True)
    counts: dict[str, set[int]] = {}
    for ln in lines:
        s = ln["sampling"]
        if s.get("n") != n:
            raise ValueError(f"{out} was sampled with --n {s.get('n')} (prompt {ln['id']!r}); rerun with --n "
                             f"{s.get('n')} or write to another --out")
        counts.setdefault(ln["id"], set()).add(int(s.get("index", -1)))
    done = {pid for pid, idx in counts.items() if idx == set(range(n))}
    partial = set(counts) - done
    if partial:  # redo them whole: their lines go (atomically), their media are overwritten
        lines = [ln for ln in lines if ln["id"] not in partial]
        _write_lines(out, lines)
    todo = [p for p in prompts if p.id not in done]
    base_seed = sampling.seed if sampling.seed is not None else 0
    media = media_dir_for(out)
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="sample", unit="prompt",
               disable=not progress)
    for p in todo:
        image = p.output == "image"
        cfg = (omni.image_options(cfg_scale, None)[0] if image else 1.0)
        seed = candidate_seed(base_seed, hash_id(p.id))
        params = replace(sampling, seed=seed)
        voice = (p.voice or default_voice(omni.vocab)) if p.output == "audio" else p.voice
        try:
            # a model trained on tagged data (generation.json "task_tag") is asked as it was trained; the
            # lines keep the prompt as given (tokenize --task-tag tags the pairs made from them again)
            asked = tag_prompt(p.messages, (getattr(omni, "generation", None) or {}).get("task_tag"), p.output)[0]
            _, cands, _ = sample_candidates(omni, asked, n, p.output, None, voice, params, cfg, batch=batch)
        except ValueError as e:
            raise ValueError(f"{prompts_path}:{p.line} (prompt {p.id!r}): {e}") from None
        new = []
        for c in cands:
            line = {"id": p.id, "messages": _relative(p.messages, out_dir),
                    "candidate": _candidate_message(c, media, p.id, out_dir), "output": p.output, "voice": voice,
                    "sampling": {"index": c.index, "n": n, "seed": c.seed, "temperature": sampling.temperature,
                                 "top_p": sampling.top_p, "top_k": sampling.top_k, "cfg_scale": cfg,
                                 "max_new_tokens": sampling.max_new_tokens, "latency_s": round(c.latency_s, 4),
                                 "batch": c.batch},
                    "finish_reason": c.finish_reason, "answer_ids": c.ids, "meta": p.meta}
            if p.reference is not None:
                line["reference"] = _relative([p.reference], out_dir)[0]
            if reward is not None:
                line["score"] = reward(_for_reward(line, out_dir))
                line["reward"] = reward.spec
            new.append(line)
        _append(out, new)
        lines.extend(new)
        bar.set_postfix_str(p.id[-20:], refresh=False)
        bar.update()
    bar.close()
    rescored = 0
    if reward is not None:
        for ln in lines:
            if ln.get("reward") != reward.spec or "score" not in ln:
                ln["score"] = reward(_for_reward(ln, out_dir))
                ln["reward"] = reward.spec
                rescored += 1
        if rescored:
            _write_lines(out, lines)
    return SampleReport(len(prompts), sum(p.id in done for p in prompts), sum(p.id in partial for p in todo),
                        len(todo), rescored, time.time() - t0)


def hash_id(pid: str) -> int:
    """A stable integer of a prompt id (its candidates' seeds derive from it)."""
    return int.from_bytes(hashlib.sha256(pid.encode()).digest()[:6], "little")


# ------------------------------------------------------------------------------------------------
# pairs and best answers


def _by_prompt(lines: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for ln in lines:
        if "score" not in ln:
            raise ValueError(f"sample of prompt {ln['id']!r} (candidate {ln['sampling'].get('index')}) has no score: "
                             "give --reward to score the samples first")
        groups.setdefault(ln["id"], []).append(ln)
    return groups


def _ranked(group: list[dict]) -> list[dict]:
    return sorted(group, key=lambda ln: (-float(ln["score"]), int(ln["sampling"]["index"])))


def make_pairs(lines: list[dict], margin: float = 0.0, max_pairs: int | None = None) -> list[tuple[dict, dict]]:
    """Preference pairs (chosen, rejected) per prompt.

    The rule: a prompt's candidates ranked by score (ties: lower index first); pair ``j`` is the
    ``j``-th best against the ``j``-th worst, while the chosen scores more than ``margin`` above
    the rejected, the two are distinct, and at most ``max_pairs`` per prompt. So each candidate is in
    at most one pair, the widest gaps come first, and a prompt whose candidates all score alike
    gives none.
    """
    pairs = []
    for group in _by_prompt(lines).values():
        r = _ranked(group)
        for j in range(len(r) // 2):
            if max_pairs is not None and j >= max_pairs:
                break
            chosen, rejected = r[j], r[-1 - j]
            if float(chosen["score"]) - float(rejected["score"]) <= margin:
                break
            if "answer_ids" in chosen and chosen.get("answer_ids") == rejected.get("answer_ids"):
                continue  # the same ids scored differently (a reward that is not deterministic): no preference
            pairs.append((chosen, rejected))
    return pairs


def references_path_for(out: Path) -> Path:
    """Where ``reference_lines`` keeps its judged references for ``out``: ``<dir>/<stem>.references.jsonl``."""
    return out.parent / f"{out.stem}.references.jsonl"


def _media_files(message: dict, base: Path) -> list[Path]:
    """The media files ``message`` names, under ``base``."""
    files: list[Path] = []
    _map_paths([message], lambda s: files.append(base / s) or s)
    return files


def reference_lines(lines: list[dict], reward: Any, out_dir: Path, omni: Any | None = None,
                    media: Path | None = None, progress: bool = False, cache: Path | None = None) -> list[dict]:
    """One line per prompt whose samples carry a reference answer (the input's assistant turn): that
    answer as a candidate of index -1, scored by ``reward`` like the sampled ones.

    Added to the sampled lines, it joins the ranking of :func:`make_pairs` and :func:`best_lines`, so a
    prompt whose candidates are all wrong still gives a pair: the reference (when it scores higher)
    against the worst candidate.

    With ``omni`` (the model), the reference is judged **as the model would write it**: encoded by
    the codecs into the answer ids (``answer_ids``, as a sampled line has), decoded back, and its
    media written under ``media/<id>/c-1.*``. A reference whose codec round trip is judged wrong is
    then not preferred to a sampled answer, and a sampled answer with the very same ids scores the
    same (so they make no pair). Without ``omni``, or when the reference does not open the span the
    prompt opens (another voice), it is judged as given, without ``answer_ids``: it is written as its
    message (media by path), which ``tokenize`` encodes with the codecs.

    ``cache`` (a JSONL file in ``out_dir``): each judged reference is appended there as it is done,
    and a later call takes it back instead of judging again when its prompt, metadata and message
    (with the size and modification time of its media files), the reward's spec and the model it was
    coded with are the same and its decoded media are still there (an interrupted call keeps what it
    judged). The file is rewritten to hold just this call's references when it held others. A
    reward whose code changed under the same spec is not seen: delete the file.
    """
    from tqdm import tqdm

    from ..utils.fileio import size_and_mtime

    mode = {"round_trip": omni is not None, "model": getattr(omni, "source", None)}
    kept: dict[str, dict] = {}
    read = reused = 0
    if cache is not None:
        for r in read_samples(cache, repair=True):
            kept[r["id"]] = r  # a later line for the same prompt wins
            read += 1
    out: list[dict] = []
    entries: list[dict] = []  # out's lines as the cache keeps them
    seen: set[str] = set()
    bar = tqdm(total=len({ln["id"] for ln in lines if ln.get("reference")}), desc="references", unit="prompt",
               disable=not progress)
    for ln in lines:
        if ln["id"] in seen or not ln.get("reference"):
            continue
        seen.add(ln["id"])
        bar.update(1)
        old = kept.get(ln["id"])
        # what the judgement depends on (the stamps as lists, as JSON gives them back)
        source = None if cache is None else {
            "messages": ln["messages"], "reference": ln["reference"], "meta": ln.get("meta") or {},
            "files": [list(size_and_mtime(f)) for f in _media_files(ln["reference"], out_dir)]}
        if (old is not None and old.get("source") == source and old.get("mode") == mode
                and old.get("reward") == reward.spec and "score" in old
                and ("answer_ids" not in old  # a round trip's decoded media must still be there
                     or all(f.is_file() for f in _media_files(old["candidate"], out_dir)))):
            entries.append(old)
            reused += 1
            out.append({k: v for k, v in old.items() if k not in ("source", "mode")})
            continue
        ref = {"id": ln["id"], "messages": ln["messages"], "candidate": ln["reference"], "output": ln.get("output"),
               "voice": ln.get("voice"), "sampling": {"index": -1, "n": ln["sampling"]["n"], "reference": True},
               "meta": ln.get("meta") or {}}
        if omni is not None:
            coded = _reference_round_trip(omni, ln, out_dir, media if media is not None else out_dir / "references_media")
            if coded is not None:
                ref["candidate"], ref["answer_ids"] = coded
                ref["sampling"]["round_trip"] = True
        ref["score"] = reward(_for_reward(ref, out_dir))
        ref["reward"] = reward.spec
        out.append(ref)
        if cache is not None:
            entries.append({**ref, "source": source, "mode": mode})
            _append(cache, entries[-1:])
    bar.close()
    if read != reused:  # the file held stale lines or other prompts' references: keep this call's
        _write_lines(cache, entries)
    return out


def _reference_round_trip(omni: Any, ln: dict, out_dir: Path, media: Path) -> tuple[dict, list[int]] | None:
    """(message with the decoded media, answer ids) of ``ln``'s reference encoded by the codecs, or
    None when its span does not open as the prompt's does (then it is judged as given)."""
    from .candidates import _decode

    proc = omni.processor
    try:  # the media coded once; code parts pass through prompt_ids and encode_messages as they are
        coded = proc.to_code_messages(ln["messages"] + [ln["reference"]], out_dir)
        head = list(proc.prompt_ids(coded[:-1]))  # the conversation and the assistant header
        full = list(proc.encode_messages(coded, add_eos=False).ids)
    except (ValueError, OSError) as e:
        raise ValueError(f"sample {ln['id']!r}: its reference answer cannot be encoded: {e}") from None
    if full[:len(head)] != head:
        raise ValueError(f"sample {ln['id']!r}: its reference does not encode after its prompt (template mismatch)")
    opened = _opened_ids(omni, ln)
    answer = full[len(head):]
    if answer[:len(opened)] != opened:
        return None
    ids = answer[len(opened):]
    c = _decode(omni, head + opened, -1, 0, ids)
    return _candidate_message(c, media, ln["id"], out_dir), ids


def best_lines(lines: list[dict], min_score: float | None = None) -> list[dict]:
    """The best-scored candidate of each prompt (ties: lower index), if it reaches ``min_score``."""
    out = []
    for group in _by_prompt(lines).values():
        top = _ranked(group)[0]
        if min_score is None or float(top["score"]) >= min_score:
            out.append(top)
    return out


def code_message(omni: Any, line: dict) -> dict:
    """A sample line's candidate as an assistant message of **code parts** (``image_codes``,
    ``audio_codes`` with its transcript, text): exactly the ids the model sampled.

    The media files hold the candidate decoded; a reader that encodes them again gets the codec's
    codes of that picture or sound, which need not be the sampled ones (the world's image codec
    gives back 55% of a sampled drawing's codes), so preference data that must be the model's own
    sequences takes these parts instead.
    """
    from ..tokens import segments_to_messages

    if "answer_ids" not in line:  # a reference judged as given (see reference_lines): written as it was
        return line["candidate"]
    vocab = omni.vocab
    segs = omni.processor.decode_ids(vocab.header_ids("assistant") + _opened_ids(omni, line)
                                     + [int(t) for t in line["answer_ids"]])
    msgs = segments_to_messages(segs)
    return {"role": "assistant", "content": msgs[-1]["content"] if msgs else ""}


def _opened_ids(omni: Any, line: dict) -> list[int]:
    """The ids with which the prompt of ``line`` opened its answer's span (none for text), as the
    template's ``build_prompt`` appends them: a line's ``answer_ids`` start after them."""
    proc = omni.processor
    return proc.prompt_ids([], line.get("output"), line.get("voice"))[len(proc.prompt_ids([])):]


def write_pairs(path: str | Path, pairs: list[tuple[dict, dict]], samples_dir: Path,
                answer: Callable[[dict], dict] | None = None) -> int:
    """TRL's conversational preference format: ``prompt`` / ``chosen`` / ``rejected`` message lists
    (media by path relative to ``path``), plus ``id``, ``score_chosen``, ``score_rejected``.
    ``answer``: how a line's candidate is written (default: its message, media by path; e.g.
    ``functools.partial(code_message, omni)`` for the sampled codes)."""
    path = Path(path)
    dst = path.parent.resolve()
    rows = []
    for c, r in pairs:
        chosen, rejected = (answer(c), answer(r)) if answer else (c["candidate"], r["candidate"])
        rows.append({"id": c["id"], "prompt": _rebase(c["messages"], samples_dir, dst),
                     "chosen": _rebase([chosen], samples_dir, dst), "rejected": _rebase([rejected], samples_dir, dst),
                     "score_chosen": c["score"], "score_rejected": r["score"]})
    _write_lines(path, rows)
    return len(rows)


def write_best(path: str | Path, best: list[dict], samples_dir: Path, answer: Callable[[dict], dict] | None = None) -> int:
    """One ``{"messages": prompt + [best candidate]}`` a line, ready for ``omniloom tokenize``
    (``answer`` as in :func:`write_pairs`)."""
    path = Path(path)
    dst = path.parent.resolve()
    rows = [{"messages": _rebase(b["messages"] + [answer(b) if answer else b["candidate"]], samples_dir, dst),
             "id": b["id"], "score": b["score"]} for b in best]
    _write_lines(path, rows)
    return len(rows)
