"""Typed configs with named presets, YAML files and dotted ``key=value`` overrides.

A run is described by one :class:`Config` (model + data + train). Start from a preset
(``debug``, ``world``, ``150m``, ``1b``), then apply a YAML file, then command-line overrides::

    cfg = load_config("world", yaml_path="my.yaml", overrides=["model.n_layers=4", "train.lr=3e-4"])

Unknown keys and values of the wrong type are rejected with a :class:`ValueError` that names them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "Config",
    "PRESETS",
    "preset",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
]


@dataclass
class ModelConfig:
    """Shape of the decoder. ``vocab_size=0`` means: take it from the data's vocabulary."""

    vocab_size: int = 0
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 384
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    # image slot embedding: a learned vector per raster slot of an image span, added to the input
    # of the token that predicts the code at that slot (the span's opening and its codes), so the
    # decoder need not count its way across a 64-code span. Zero-initialised, so it can be switched
    # on for a trained model. Not part of the Llama layout. The ids come from the vocabulary
    # (``image_slots_from_vocab``) when training sets it on
    image_pos_embed: bool = False
    image_tokens: int = 0  # codes per image span
    image_open_id: int = -1  # the <|image|> id
    image_code_start: int = 0  # image codes are ids [image_code_start, image_code_end)
    image_code_end: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0 (0 = from data), got {self.vocab_size}")
        if self.dim % self.n_heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")
        # image_tokens=0 with image_pos_embed: the ids come from the data's vocabulary (as vocab_size=0)
        if self.image_pos_embed and self.image_tokens != 0 and (
                self.image_tokens < 0 or self.image_open_id < 0 or not 0 <= self.image_code_start < self.image_code_end):
            raise ValueError("model.image_pos_embed needs the vocabulary's image ids (model.image_tokens > 0, "
                             "model.image_open_id >= 0, model.image_code_start < model.image_code_end); "
                             f"got {self.image_tokens}, {self.image_open_id}, "
                             f"[{self.image_code_start}, {self.image_code_end})")

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count computed from the shape alone (no model needed)."""
        d, hd = self.dim, self.head_dim
        attn = d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd + self.n_heads * hd * d
        if self.qk_norm:
            attn += 2 * hd
        ffn = 3 * d * self.ffn_dim
        per_layer = attn + ffn + 2 * d
        n = self.n_layers * per_layer + d  # + final norm
        if include_embedding:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        if self.image_pos_embed:
            n += self.image_tokens * d
        return n

    def image_slots_from_vocab(self, vocab: Any) -> None:
        """Fill the image ids of ``image_pos_embed`` from a :class:`~omniloom.tokens.vocab.Vocab`
        (set ids must agree with it)."""
        if not self.image_pos_embed:
            return
        if vocab.image_tokens <= 0:
            raise ValueError("model.image_pos_embed=true but the vocabulary has no image codes")
        lo, hi = vocab.range_of("image")
        ids = (vocab.image_tokens, vocab.special("image"), lo, hi)
        have = (self.image_tokens, self.image_open_id, self.image_code_start, self.image_code_end)
        if self.image_tokens and have != ids:
            raise ValueError(f"model image ids (image_tokens, image_open_id, image_code_start, image_code_end) "
                             f"= {have} do not match the vocabulary's {ids}")
        self.image_tokens, self.image_open_id, self.image_code_start, self.image_code_end = ids


#: what ``train.objective`` may name (see TrainConfig)
OBJECTIVES = ("sft", "dpo", "rft")

#: what ``train.dpo_span`` may name: the answer ids DPO's log-probabilities sum over (see TrainConfig)
DPO_SPANS = ("answer", "text")

#: projections a LoRA may target (the decoder's linear layers, by attribute name)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_GATE_MODES = ("token", "onward", "tag")  # train.lora_gate_mode


@dataclass
class DataConfig:
    """Where token shards live and how they become batches."""

    train: str = "data/train"  # shard directory from `omniloom tokenize`; several: comma-separated, one vocab
    val: str = ""  # optional directory of validation shards
    seq_len: int = 512
    mode: str = "sft"  # 'sft': loss on assistant turns only; 'pretrain': loss on everything
    num_workers: int = 0

    def validate(self) -> None:
        if self.seq_len <= 1:
            raise ValueError(f"data.seq_len must be > 1, got {self.seq_len}")
        if self.mode not in ("sft", "pretrain"):
            raise ValueError(f"data.mode must be 'sft' or 'pretrain', got {self.mode!r}")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is the global batch in sequences."""

    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 16  # global, in sequences, across all ranks and accumulation steps
    micro_batch_size: int = 16  # per rank, per forward/backward
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    # learning-rate multiplier of the image slot table (model.image_pos_embed): switched on for a
    # trained model it starts at zero, and at the model's rate it stays ~100x smaller than the
    # token embeddings for hundreds of steps
    image_pos_lr_mult: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "auto"  # 'auto' (bf16 where supported), 'bf16', 'fp32'
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    compile: bool = False
    progress: bool = True
    # a fresh run (no checkpoint in out_dir yet) starts from these weights with a new optimizer: a
    # bundled model name ('world'), a model directory, a checkpoint or a run's out_dir ('' = random init)
    init_from: str = ""
    # train only what must be trained (a grafted base): freeze_base freezes every weight except the
    # LoRA adapters and the embedding/output rows from train_rows_from on (-1: the vocabulary's
    # first id after the text ids, i.e. the rows a graft appended); those two matrices then get no
    # weight decay, so the frozen rows stay bit-identical. lora_rank > 0 adds adapters of that rank
    # (scale lora_alpha / lora_rank) to the comma-separated lora_targets projections
    freeze_base: bool = False
    train_rows_from: int = -1
    # more trainable rows under freeze_base, below train_rows_from: ids and inclusive ranges
    # ('130,140-149') or a JSON file holding a list of ids ('rows.json'), e.g. the text ids a new
    # language uses and the source's data never did (python -m omniloom.data.row_usage)
    train_rows_also: str = ""
    # learning-rate multiplier of those trainable rows under freeze_base (the appended rows start as
    # the mean of the base's rows, and at the adapters' rate they move slowly: docs/graft.md)
    rows_lr_mult: float = 1.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    # where the adapters act: at positions whose input id is >= lora_gate_from. 0: every position
    # (plain LoRA, folded into the weights for inference and export); -1: the vocabulary's first id
    # after the text ids, i.e. only the ids a graft appended (media codes, specials, voice/time
    # tags), so text-only input runs the base exactly (docs/graft.md, "Position-gated adapters")
    lora_gate_from: int = 0
    # how far the gate reaches. 'token': the gated ids' own positions only. 'onward': from the first
    # gated id of a document (conversation) to its end, so the answer after an image or a voice tag
    # runs the adapted layers too, while a conversation of text alone still runs the base exactly.
    # 'tag': from the task tag <|task|> of a conversation (lora_gate_from=-1) or the id lora_gate_from
    # names, and nothing else, to its end, so every conversation without the tag, media included,
    # runs the source model exactly (e.g. a language taught on tagged data: docs/recipes/add-a-language.md)
    lora_gate_mode: str = "token"
    # what the run optimises. 'sft': next-token cross-entropy on the shards' loss mask. 'dpo': direct
    # preference optimisation on preference pairs (tokenize --format preference) against a frozen
    # reference, a copy of the initial weights (train.init_from, else the random init); dpo_beta is
    # the strength of the pull towards the reference, dpo_sft_weight adds that weight times the
    # chosen answers' token cross-entropy. 'rft': rejection-sampling fine-tuning, i.e. sft on shards
    # of the best sampled candidates tokenized as ordinary messages (the run checks they are single
    # answers with an answer-only loss)
    objective: str = "sft"
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 0.0
    # which answer ids the DPO log-probabilities sum over. 'answer': the whole answer span, whatever
    # its modality. 'text': only its text ids (ids below the vocab's text_size): a text answer, or the
    # transcript interleaved in a spoken answer, so a preference on *what is said* does not also push
    # the rejected side's audio codes down. The SFT term always covers the whole chosen answer
    dpo_span: str = "answer"
    # contrastive embeddings (docs/embeddings.md): a weight > 0 adds that weight times a CLIP-style
    # symmetric InfoNCE between the mean-pooled hidden states of paired spans (a user's image or
    # speech and the text answer after it), each run stand-alone, negatives = the other pairs of the
    # rank's batch, at the fixed temperature contrastive_temperature. 0: off (the plain LM step)
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.07

    def rows_also_inline(self) -> str:
        """``train_rows_also`` written out as ids and ranges (``65-68,70,...``), so a model directory
        does not depend on the JSON file the run read (the spec unchanged if it cannot be read)."""
        try:
            ids = self.rows_also()
        except ValueError:
            return self.train_rows_also
        from itertools import groupby

        parts = []
        for _, run in groupby(enumerate(ids), key=lambda t: t[1] - t[0]):  # consecutive ids share i - index
            r = [i for _, i in run]
            parts.append(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}")
        return ",".join(parts)

    def rows_also(self) -> list[int]:
        """``train_rows_also`` as a sorted list of ids ([] when empty)."""
        spec = self.train_rows_also.strip()
        if not spec:
            return []
        if spec.endswith(".json"):
            import json
            from pathlib import Path

            try:
                ids = json.loads(Path(spec).read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"train.train_rows_also={spec}: cannot read a JSON list of ids ({e})") from None
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"train.train_rows_also={spec}: the file must hold a JSON list of integer ids")
        else:
            ids = []
            for part in spec.split(","):
                a, _, b = part.strip().partition("-")
                try:
                    lo, hi = int(a), int(b) if b else int(a)
                except ValueError:
                    raise ValueError(f"train.train_rows_also={spec!r}: {part.strip()!r} is neither an id nor a range "
                                     "a-b") from None
                if hi < lo:
                    raise ValueError(f"train.train_rows_also={spec!r}: the range {part.strip()} runs backwards")
                ids.extend(range(lo, hi + 1))
        if any(i < 0 for i in ids):
            raise ValueError(f"train.train_rows_also={spec}: ids must be >= 0")
        return sorted(set(ids))

    def validate(self) -> None:
        for name in ("steps", "batch_size", "micro_batch_size", "log_every", "eval_every", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.image_pos_lr_mult <= 0:
            raise ValueError(f"train.image_pos_lr_mult must be positive, got {self.image_pos_lr_mult}")
        if not self.rows_lr_mult > 0:
            raise ValueError(f"train.rows_lr_mult must be positive, got {self.rows_lr_mult}")
        if self.rows_lr_mult != 1.0 and not self.freeze_base:
            raise ValueError("train.rows_lr_mult sets the rate of the rows trained beside the adapters, but "
                             "train.freeze_base is false (every weight trains at train.lr)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"train.dtype must be 'auto', 'bf16' or 'fp32', got {self.dtype!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.lora_rank < 0:
            raise ValueError(f"train.lora_rank must be >= 0 (0 = no adapters), got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"train.lora_alpha must be positive, got {self.lora_alpha}")
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or (self.lora_rank and not targets):
            raise ValueError(f"train.lora_targets {self.lora_targets!r}: choose among {', '.join(LORA_TARGETS)}")
        if self.lora_gate_from < -1:
            raise ValueError(f"train.lora_gate_from must be -1 (the appended ids), 0 (every position) or an id, "
                             f"got {self.lora_gate_from}")
        if self.lora_gate_from and not self.lora_rank:
            raise ValueError("train.lora_gate_from gates adapters, but train.lora_rank is 0 (no adapters)")
        if self.lora_gate_mode not in LORA_GATE_MODES:
            raise ValueError(f"train.lora_gate_mode must be one of {', '.join(LORA_GATE_MODES)}, "
                             f"got {self.lora_gate_mode!r}")
        if self.lora_gate_mode != "token" and not self.lora_gate_from:
            raise ValueError(f"train.lora_gate_mode={self.lora_gate_mode!r} shapes a gate, but train.lora_gate_from "
                             "is 0 (ungated adapters); set it (-1: the appended ids, or the task tag with mode 'tag')")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"train.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not self.dpo_beta > 0:
            raise ValueError(f"train.dpo_beta must be > 0 (the strength of the pull towards the reference), "
                             f"got {self.dpo_beta}")
        if not self.dpo_sft_weight >= 0:
            raise ValueError(f"train.dpo_sft_weight must be >= 0, got {self.dpo_sft_weight}")
        if self.dpo_span not in DPO_SPANS:
            raise ValueError(f"train.dpo_span must be one of {', '.join(DPO_SPANS)}, got {self.dpo_span!r}")
        if not self.contrastive_weight >= 0:
            raise ValueError(f"train.contrastive_weight must be >= 0 (0 = off), got {self.contrastive_weight}")
        if not self.contrastive_temperature > 0:
            raise ValueError(f"train.contrastive_temperature must be > 0, got {self.contrastive_temperature}")
        if self.contrastive_weight > 0 and self.objective == "dpo":
            raise ValueError("train.contrastive_weight applies to the sft/rft objectives, not dpo")
        if self.train_rows_also and not self.freeze_base:
            raise ValueError("train.train_rows_also names rows to train beside the adapters, but train.freeze_base is "
                             "false (every row trains)")
        self.rows_also()  # a malformed list: ValueError naming it
        if self.train_rows_from < -1:
            raise ValueError(f"train.train_rows_from must be >= 0, or -1 (the vocab's first non-text id), "
                             f"got {self.train_rows_from}")


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )
        return self


def _debug() -> Config:
    # ~1M parameters with a 4096-token vocabulary: for tests, runs in seconds on a CPU.
    return Config(
        name="debug",
        model=ModelConfig(vocab_size=4096, dim=128, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=352,
                          max_seq_len=512),
        data=DataConfig(seq_len=256),
        train=TrainConfig(steps=200, batch_size=8, micro_batch_size=8, lr=3e-3, warmup_steps=20,
                          eval_every=100, ckpt_every=100, log_every=10),
    )


def _world() -> Config:
    # The reference model of the shapes world: ~15M parameters.
    return Config(
        name="world",
        model=ModelConfig(vocab_size=0, dim=384, n_layers=8, n_heads=6, n_kv_heads=2, ffn_dim=1024,
                          max_seq_len=1024, qk_norm=False),
        data=DataConfig(seq_len=1024),
        train=TrainConfig(steps=20000, batch_size=32, micro_batch_size=16, lr=2e-3, warmup_steps=500,
                          eval_every=1000, ckpt_every=500, compile=True),
    )


def _150m() -> Config:
    return Config(
        name="150m",
        model=ModelConfig(vocab_size=32768, dim=768, n_layers=16, n_heads=12, n_kv_heads=4, ffn_dim=2560,
                          max_seq_len=4096, tie_embeddings=True),
        data=DataConfig(seq_len=4096),
        train=TrainConfig(steps=100000, batch_size=128, micro_batch_size=8, lr=1e-3, warmup_steps=2000,
                          eval_every=2000, ckpt_every=1000),
    )


def _1b() -> Config:
    return Config(
        name="1b",
        model=ModelConfig(vocab_size=65536, dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, ffn_dim=8192,
                          max_seq_len=8192, rope_theta=500000.0, qk_norm=True, tie_embeddings=False),
        data=DataConfig(seq_len=8192),
        train=TrainConfig(steps=200000, batch_size=256, micro_batch_size=2, lr=4e-4, warmup_steps=2000,
                          eval_every=2000, ckpt_every=1000),
    )


PRESETS = {"debug": _debug, "world": _world, "150m": _150m, "1b": _1b}


def preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# overrides


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Turn ``value`` (a YAML value or a command-line string) into ``typ`` or raise ValueError."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false), got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key}: expected a string, got {value!r}")
    raise ValueError(f"{key}: unsupported config type {typ}")


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise ValueError(f"unknown config key {dotted!r}")
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            where = ".".join(parts[:i]) or "top level"
            raise ValueError(
                f"unknown config key {dotted!r}: {part!r} is not a field of {where} "
                f"(fields: {', '.join(sorted(fields))})"
            )
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                if not isinstance(value, dict):
                    raise ValueError(f"{dotted}: is a section; give its fields, e.g. {dotted}.<field>=...")
                for k, v in value.items():
                    _set(cfg, f"{dotted}.{k}", v)
                return
            hints = typing.get_type_hints(type(obj))
            setattr(obj, part, _coerce(value, hints[part], dotted))
            return
        obj = getattr(obj, part)


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``["model.dim=256", ...]`` or a (nested) dict. Returns ``cfg`` for chaining."""
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            _set(cfg, k, v)
        return cfg
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value, e.g. train.lr=1e-3")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), value.strip())
    return cfg


def load_config(
    name: str = "debug",
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Preset -> YAML file -> dotted overrides -> validated :class:`Config`."""
    cfg = preset(name)
    if yaml_path is not None:
        import yaml

        path = Path(yaml_path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        if "preset" in data:
            cfg = preset(str(data.pop("preset")))
        apply_overrides(cfg, data)
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Inverse of :func:`config_to_dict`; rejects unknown keys."""
    cfg = Config()
    apply_overrides(cfg, dict(data))
    return cfg
