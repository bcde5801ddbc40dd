"""The training loop, for one process or many (``torchrun``): data -> TrainStep -> logs, evals,
checkpoints, plots.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is gloo on CPU and NCCL on GPU, and the
model is sharded with FSDP2 ``fully_shard`` (each block, then the root). ``parallel="replicate"``
keeps a full copy per rank and all-reduces gradients instead (a fallback; FSDP2 works on gloo).
Every rank builds the model from the same seed, reads its own slice of each global batch, and
rank 0 writes logs, plots and checkpoints.

``train.objective`` picks what is optimised: ``sft`` (and ``rft``, the same on best-candidate
shards) the masked next-token loss over packed rows; ``dpo`` the preference loss over whole pairs
(:mod:`omniloom.train.dpo`, :class:`~omniloom.data.pairs.PairLoader`) against a frozen copy of the
initial weights, rebuilt from them when a run resumes.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..config import Config, config_to_dict
from ..data.loader import PackedLoader
from ..data.shards import ShardSet
from ..utils.fileio import atomic_write_text
from ..model.llama import Transformer
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .plot import plot_metrics
from .step import TrainStep

__all__ = ["train", "setup_distributed", "resolve_vocab_size", "init_weights", "validation_loss"]


def setup_distributed() -> tuple[int, int, torch.device]:
    """Init the process group from torchrun's env vars when ``WORLD_SIZE`` > 1. Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    return rank, world, device


def resolve_vocab_size(cfg: Config, vocab_size: int, source: str) -> None:
    """``model.vocab_size=0`` -> the data's vocabulary rounded up to 64; too small -> ValueError."""
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = (vocab_size + 63) // 64 * 64
    elif vocab_size > cfg.model.vocab_size:
        raise ValueError(f"the data's vocabulary ({source}) has {vocab_size} ids but model.vocab_size is "
                         f"{cfg.model.vocab_size}; set model.vocab_size=0 to size the model from the data")


def _shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # parameters stay fp32 (the optimizer's master copy); autocast in TrainStep picks bf16 compute
    mp = MixedPrecisionPolicy()
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _flat(batches: list[list[dict[str, torch.Tensor]]]) -> list[dict[str, torch.Tensor]]:
    return [mb for b in batches for mb in b]


def train(cfg: Config, resume: str = "auto", parallel: str = "fsdp", stop_after: int | None = None,
          log: Callable[[str], None] | None = None, stop_after_s: float | None = None) -> dict[str, Any]:
    """Run (or continue) training as described by ``cfg``. Returns the last metrics record.

    ``resume``: 'auto' (newest good checkpoint in ``out_dir/ckpt`` if any), 'never', or a path.
    ``stop_after``: stop after this step without changing the LR schedule (time-sliced jobs).
    ``stop_after_s``: stop, likewise, after the first step that ends this many seconds after the
    loop began (compilation included): a checkpoint and an eval are written, and rerunning the same
    command resumes. For lent machines with a hard time limit; all ranks stop at the same step.
    """
    if parallel not in ("fsdp", "replicate"):
        raise ValueError(f"parallel must be 'fsdp' or 'replicate', got {parallel!r}")
    if stop_after_s is not None and stop_after_s < 0:
        raise ValueError(f"the time budget must be >= 0 seconds, got {stop_after_s}")
    rank, world, device = setup_distributed()
    main = rank == 0
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    tc = cfg.train

    # data first: a missing or corrupt shard stops here, before anything is written
    train_set = ShardSet.open(cfg.data.train)
    from ..tokens.vocab import Vocab

    vocab = Vocab.load(train_set.vocab_path())
    resolve_vocab_size(cfg, vocab.size, str(train_set.vocab_path()))
    cfg.model.image_slots_from_vocab(vocab)
    if tc.train_rows_also.strip().endswith(".json"):  # read once: the run and its checkpoints keep the ids
        tc.train_rows_also = tc.rows_also_inline()  # (unreadable: left as it was, and validate names it)
    cfg.validate()
    if tc.warmup_steps >= tc.steps:  # the LR would still be rising when the run ends
        clipped = tc.steps // 10
        say(f"train.warmup_steps={tc.warmup_steps} is not shorter than train.steps={tc.steps}: warming up for "
            f"{clipped} steps instead (a tenth of the run)")
        tc.warmup_steps = clipped
    from .dpo import check_objective_data

    dpo = tc.objective == "dpo"
    check_objective_data(tc.objective, train_set)
    if dpo:
        from ..data.pairs import PairLoader

        loader: PackedLoader | PairLoader = PairLoader(train_set, cfg.data.seq_len, tc.batch_size,
                                                       tc.micro_batch_size, rank, world, tc.seed)
        if loader.skipped and main:
            say(f"train.objective=dpo: {loader.skipped} of {loader.num_pairs} pairs are longer than "
                f"data.seq_len+1={cfg.data.seq_len + 1} tokens (chosen and rejected together) and are skipped")
    else:
        loader = PackedLoader(train_set, cfg.data.seq_len, tc.batch_size, tc.micro_batch_size, rank, world, tc.seed)
    if tc.objective == "rft" and main:
        say(f"train.objective=rft: supervised fine-tuning on the best candidates in {train_set.path}")
    val_set = ShardSet.open(cfg.data.val) if cfg.data.val else None
    if val_set is not None:  # checked before training, not after it
        check_objective_data(tc.objective, val_set, "data.val")
        if dpo:
            from .dpo import val_pair_loader

            val_loader = val_pair_loader(val_set, cfg, rank, world)
        else:
            val_batch, val_micro = _val_batch(val_set, cfg, world)
        if not any(bool(sh["loss_mask"].any()) for sh in val_set.shards):
            raise ValueError(f"validation set {val_set.path} holds no loss tokens (no assistant turns with "
                             f"data.mode={cfg.data.mode!r}?), so it cannot measure an eval loss; tokenize it with "
                             "answers, or leave data.val empty")

    out = Path(tc.out_dir)
    ckpt_root = out / "ckpt"
    resume_from = find_checkpoint(ckpt_root, resume)

    torch.manual_seed(tc.seed)
    model = Transformer(cfg.model).to(device)
    init_dir = None
    if tc.lora_rank:  # before the weights load, so that a source's adapters load as adapters
        from ..model.lora import apply_lora_from_config
        from ..tokens.vocab import Vocab

        apply_lora_from_config(model, tc, Vocab.load(train_set.vocab_path()))
    # a resumed run keeps its own weights, but DPO rebuilds its reference from the initial ones
    if tc.init_from and (resume_from is None or dpo):
        init_dir = init_weights(model, tc.init_from, cfg, train_set.vocab_path())
    reference = copy.deepcopy(model).requires_grad_(False).eval() if dpo else None
    if tc.freeze_base:
        from .step import freeze_for_adapters

        trainable = freeze_for_adapters(model)
        also = tc.rows_also()
        if also and also[-1] >= cfg.model.vocab_size:
            raise ValueError(f"train.train_rows_also names id {also[-1]}, beyond the vocabulary ({cfg.model.vocab_size} ids)")
        if main:
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            say(f"freeze_base: training {len(trainable)} tensors ({n_train / 1e6:.2f}M parameters, rows from "
                f"{tc.train_rows_from if tc.train_rows_from >= 0 else vocab.text_size} of the embedding/output"
                f"{f' and {len(also)} more (train.train_rows_also)' if also else ''})")
    if world > 1 and parallel == "fsdp":
        model = _shard_model(model, device)
        if reference is not None:
            reference = _shard_model(reference, device)
    if reference is not None:
        from .dpo import DPOStep

        step: TrainStep = DPOStep(model, reference, tc, vocab=vocab, device=device)
    else:
        step = TrainStep(model, tc, vocab=vocab, device=device)
    if resume_from is not None:
        trainer = load_checkpoint(resume_from, model, step.optimizer)
        step.step = int(trainer["step"])
        loader.load_state_dict(trainer["loader"])
        if main:
            say(f"resumed from {resume_from} at step {step.step}")
    elif init_dir is not None and main:
        say(f"starting from the weights of {init_dir}")

    metrics_path = out / "metrics.jsonl"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(config_to_dict(cfg), indent=1))
        replaced = _drop_replayed(metrics_path, step.step) if resume_from is not None else 0
        with open(metrics_path, "a") as f:
            event = {"event": "start" if resume_from is None else "resume", "step": step.step,
                     "world_size": world, "time": time.time()}
            if replaced:
                event["replaced_records"] = replaced  # logged after the checkpoint; the replay logs them again
            f.write(json.dumps(event) + "\n")
        say(f"training {cfg.model.num_params():,} parameters on {world} x {device.type}, "
            f"global batch {tc.batch_size} = {world} ranks x {loader.micro} micro x {loader.accumulation_steps} "
            f"accumulation, seq_len {cfg.data.seq_len}, autocast {step.amp_dtype}")

    def evaluate() -> dict[str, float]:
        """``eval_loss`` (and, for DPO, ``eval_dpo/*``) on the validation set."""
        assert val_set is not None
        if dpo:
            from .dpo import dpo_validation

            return dpo_validation(step, val_loader, tc.eval_batches)
        return {"eval_loss": validation_loss(step, val_set, cfg, val_batch, val_micro, rank, world)[0]}

    def log_eval(s: int, ev: dict[str, float], what: str = "") -> None:  # rank 0 only
        with open(metrics_path, "a") as f:
            f.write(json.dumps({"step": s, **ev}) + "\n")
        more = "".join(f" {k.removeprefix('eval_')}={v:.3f}" for k, v in ev.items() if k != "eval_loss")
        (bar.write if bar is not None else say)(f"step {s}{what}: eval loss {ev['eval_loss']:.4f}{more}")

    assets: dict[str, Path | str] = {"vocab.json": train_set.vocab_path(),
                                     "tokenizer.json": train_set.path / "tokenizer.json"}
    if train_set.manifest.get("codecs"):
        assets["codecs.json"] = json.dumps(train_set.manifest["codecs"], indent=1)
    gen_table = generation_table(init_dir if init_dir is not None else _init_source_dir(tc.init_from),
                                 train_set.path, train_set.manifest.get("task_tag"))
    if gen_table is not None:
        assets["generation.json"] = json.dumps(gen_table, indent=1)

    def checkpoint() -> None:
        save_checkpoint(ckpt_root, step.step, model, step.optimizer, cfg, loader.state_dict(), tc.keep_checkpoints,
                        assets=assets)
        if main:
            plot_metrics(metrics_path, out / "loss.png")

    last_target = tc.steps if stop_after is None else min(tc.steps, stop_after)
    bar = None
    if init_dir is not None and val_set is not None and resume_from is None:  # where a fine-tune starts from
        ev = evaluate()
        if main:
            log_eval(0, ev, f" ({tc.init_from})")
    if main and tc.progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step.step, desc="train", unit="step", dynamic_ncols=True)
    record: dict[str, Any] = {}
    tokens_window, time_window = 0.0, 0.0
    deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
    from ..utils.memory import heap_trim_enabled, release_free_heap

    trim_heap = device.type == "cpu" and heap_trim_enabled()  # else resident memory creeps up (utils/memory.py)
    while step.step < last_target:
        t0 = time.perf_counter()
        batch = loader.next_batch()
        stats = step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if trim_heap:
            release_free_heap()
        dt = time.perf_counter() - t0
        tokens_window += stats["tokens"]
        time_window += dt
        s = step.step
        record = {"step": s, **stats, "tokens_per_s": stats["tokens"] / max(dt, 1e-9)}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{tokens_window / max(time_window, 1e-9):,.0f}")
        if s % tc.log_every == 0 or s == 1 or s == last_target:
            record["tokens_per_s"] = tokens_window / max(time_window, 1e-9)
            tokens_window, time_window = 0.0, 0.0
            if main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                mods = " ".join(f"{k}={v:.3f}" for k, v in stats.items() if k.startswith(("loss/", "dpo/")))
                (bar.write if bar is not None else say)(f"step {s}/{tc.steps} loss {stats['loss']:.4f} {mods} lr {stats['lr']:.2e} "
                        f"grad_norm {stats['grad_norm']:.3f} tok/s {record['tokens_per_s']:,.0f}")
        stopping = deadline is not None and s != last_target and _time_is_up(deadline, device)
        if val_set is not None and (s % tc.eval_every == 0 or s == last_target or stopping):
            ev = evaluate()
            record.update(ev)
            if main:
                log_eval(s, ev)
                plot_metrics(metrics_path, out / "loss.png")
        if stopping:
            if main:
                (bar.write if bar is not None else say)(
                    f"stopping after step {s}/{tc.steps}: the time budget of {stop_after_s:g} s is spent "
                    "(the same command resumes)")
            break
        if s % tc.ckpt_every == 0 and s != last_target:
            checkpoint()
    if bar is not None:
        bar.close()
    if step.step > 0 and (resume_from is None or step.step > int(resume_from.name.split("_")[-1])):
        checkpoint()
    elif main:
        plot_metrics(metrics_path, out / "loss.png")
    if dist.is_initialized():
        dist.barrier()
    return record


def _drop_replayed(metrics_path: Path, resumed_step: int) -> int:
    """Remove the records of steps after ``resumed_step`` (a resumed run computes and logs them again,
    bit-identically), so that each step is in metrics.jsonl once. Rewritten atomically; returns how many."""
    if not metrics_path.is_file():
        return 0
    keep, dropped = [], 0
    for line in metrics_path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            dropped += 1
            continue
        if "event" not in r and int(r.get("step", 0)) > resumed_step:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        atomic_write_text(metrics_path, "".join(x + "\n" for x in keep))
    return dropped


def _time_is_up(deadline: float, device: torch.device) -> bool:
    """Past the deadline, by rank 0's clock when several ranks train (they must stop together)."""
    up = time.monotonic() >= deadline
    if dist.is_initialized():
        flag = torch.tensor([1.0 if up else 0.0], device=device)
        dist.broadcast(flag, src=0)
        up = bool(flag.item())
    return up


def _init_source_dir(source: str) -> Path | None:
    """The model directory ``train.init_from`` names (a resumed run reads no weights from it, but
    still takes its decoding defaults), or None."""
    if not source:
        return None
    from ..utils.model_dir import resolve_model_dir

    try:
        return resolve_model_dir(source)
    except ValueError:
        return None


def generation_table(init_dir: Path | None, data_dir: Path, task_tag: str | None) -> dict | None:
    """A run's generation.json: the decoding defaults of the model it starts from (cfg_scale, voice
    aliases, ...), with what the data says over them (its task prompts: a fine-tune on Spanish data
    is asked in Spanish), and the data's task tag rule (``tokenize --task-tag``: the model is asked
    the same way, and untagged data drops the start model's rule; omniloom eval reads it). None
    when neither has one."""
    from ..utils.fileio import read_json

    table: dict | None = None
    for d in (init_dir, data_dir):
        if d is not None and (d / "generation.json").is_file():
            table = (table or {}) | read_json(d / "generation.json", "generation config")
    if task_tag not in (None, "none"):
        table = (table or {}) | {"task_tag": task_tag}
    elif table is not None:  # untagged data: asked untagged, whatever the start model was asked with
        table.pop("task_tag", None)
    return table


def init_weights(model: torch.nn.Module, source: str, cfg: Config, data_vocab: Path) -> Path:
    """Load the weights of ``source`` (bundled model name, model directory, checkpoint or run) into
    ``model``, which must have the same shape, after checking that the data was tokenized with the
    source's vocabulary. Returns the directory the weights came from."""
    from safetensors.torch import load_file

    from ..config import config_from_dict
    from ..infer.generate import resolve_model_dir
    from ..tokens.vocab import Vocab
    from ..utils.fileio import read_json

    try:
        d = resolve_model_dir(source)
    except ValueError as e:
        raise ValueError(f"train.init_from: {e}") from None
    from ..model.delta import is_delta_dir, read_delta

    delta = is_delta_dir(d)
    for name in ("config.json",) if delta else ("model.safetensors", "config.json"):
        if not (d / name).is_file():
            raise ValueError(f"train.init_from={source}: {d / name} is missing (a model directory or checkpoint "
                             "holds model.safetensors + config.json; a delta directory its delta over a base)")
    src_cfg = config_from_dict(read_json(d / "config.json", "model config"))
    theirs = config_to_dict(src_cfg.model)
    ours = config_to_dict(cfg.model)
    # the image slot embedding may be switched on for a model trained without it (zero-initialised)
    adding_slots = ours["image_pos_embed"] and not theirs.get("image_pos_embed", False)
    slot_keys = ("image_pos_embed", "image_tokens", "image_open_id", "image_code_start", "image_code_end")
    diff = [f"model.{k}={ours[k]!r} (theirs {theirs.get(k)!r})" for k in ours
            if ours[k] != theirs.get(k) and not (adding_slots and k in slot_keys)]
    if diff:
        raise ValueError(f"train.init_from={source}: the model differs from {d}: {', '.join(diff)}")
    if (d / "vocab.json").is_file() and not Vocab.load(d / "vocab.json").same_ids(Vocab.load(data_vocab)):
        raise ValueError(f"train.init_from={source}: the training data's vocabulary {data_vocab} is not the one "
                         f"{d} was trained with; tokenize the data with --vocab {d / 'vocab.json'} "
                         f"--tokenizer {d / 'tokenizer.json'}")
    if delta:  # the base (from its package) with the delta applied; adapters come folded in
        state = read_delta(d)[1]
    else:
        state = {k: v.float() for k, v in load_file(str(d / "model.safetensors")).items()}
    from ..model.lora import is_adapter_key, merge_lora_state

    own = model.state_dict()
    lora_keys = [k for k in state if is_adapter_key(k)]
    same_adapters = all(k in own and own[k].shape == state[k].shape for k in lora_keys) \
        and src_cfg.train.lora_alpha == cfg.train.lora_alpha
    src_gate, our_gate = src_cfg.train.lora_gate_from, cfg.train.lora_gate_from
    if lora_keys and src_gate and not (same_adapters and src_gate == our_gate):
        raise ValueError(f"train.init_from={source}: its adapters act only at ids >= a gate "
                         f"(train.lora_gate_from={src_gate}), so they cannot be folded into the weights; continue "
                         f"it with the same adapters (lora_rank, lora_alpha, lora_targets) and lora_gate_from={src_gate}")
    if lora_keys and not same_adapters:  # the source's weights as they answer (adapters folded in)
        state = merge_lora_state(state, src_cfg.train.lora_alpha)
    # the source's adapters go on training when this run has the same ones; a run with adapters
    # from a source without them starts its adapters fresh (B = 0: the source's function)
    fresh = [k for k in own if is_adapter_key(k) and k not in state]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in fresh]
    if adding_slots:
        missing = [k for k in missing if k != "image_pos.weight"]
    if missing or unexpected:
        raise ValueError(f"train.init_from={source}: {d / 'model.safetensors'} does not fit the model "
                         f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    return d


def validation_loss(step: TrainStep, val_set: ShardSet, cfg: Config, batch: int, micro: int, rank: int = 0,
                    world: int = 1) -> tuple[float, int]:
    """(mean loss, batches) over the first ``cfg.train.eval_batches`` batches of ``val_set`` (fewer if
    it holds fewer), unshuffled, so every evaluation and every model sees the same tokens.
    ``batch``/``micro`` come from ``_val_batch``."""
    vl = PackedLoader(val_set, cfg.data.seq_len, batch, micro, rank, world, cfg.train.seed, shuffle=False)
    n = min(cfg.train.eval_batches, vl.batches_per_epoch)
    batches = _flat([vl.batch_at(0, i) for i in range(n)])
    if not any(int(b["loss_mask"].sum()) for b in batches):
        raise ValueError(f"validation set {val_set.path}: its first {n} batch(es) hold no loss tokens (no assistant "
                         f"turns with data.mode={cfg.data.mode!r}?), so there is no eval loss to measure; tokenize it "
                         "with answers, or leave data.val empty")
    return step.eval_loss(batches), n


def _val_batch(val_set: ShardSet, cfg: Config, world: int) -> tuple[int, int]:
    """(global eval batch, per-rank micro-batch) that the validation set can fill.

    A small validation set gets smaller eval micro-batches rather than an error; only one with
    fewer rows than ranks is refused.
    """
    rows = val_set.num_tokens // (cfg.data.seq_len + 1)
    if rows < world:
        raise ValueError(f"validation set {val_set.path} has {rows} rows of seq_len+1={cfg.data.seq_len + 1} "
                         f"tokens, fewer than the {world} rank(s); give more validation data or a shorter seq_len")
    micro = max(1, min(cfg.train.micro_batch_size, rows // world))
    unit = world * micro
    batch = min(cfg.train.batch_size, rows) // unit * unit
    return max(unit, batch), micro
