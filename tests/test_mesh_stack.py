"""The 3D ("mesh") modality through the stack: vocab range, span, grammar, processor, generate, chat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omniloom.codecs.mesh import MeshCodec, MeshCodecConfig, read_mesh_voxels, write_mesh
from omniloom.codecs.text import TextTokenizer
from omniloom.config import Config, ModelConfig, config_to_dict
from omniloom.infer.engine import Engine, Request
from omniloom.infer.generate import Done, MeshOut, OmniModel, generate
from omniloom.infer.grammar import SpanGrammar
from omniloom.infer.sampling import SamplingParams
from omniloom.model import Transformer
from omniloom.processor import Processor
from omniloom.tokens import Vocab, build_prompt, decode_ids, encode_conversation, segments_to_messages

WORLD_VOCAB = Path(__file__).resolve().parent.parent / "src/omniloom/assets/models/world/vocab.json"
CORPUS = ["make a 3D model of a big cube", "describe the 3D model", "a red cube on a blue sphere", "three"] * 20


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(1)  # a random-init codec whose shapes are neither empty nor full
    return MeshCodec(MeshCodecConfig()).eval()


@pytest.fixture(scope="module")
def vocab(tok, codec):
    return Vocab.build(tok.vocab_size, image_codebook_size=40, image_tokens=4, audio_codebook_size=24,
                       audio_codebooks=2, mesh_codebook_size=codec.codebook_size, mesh_tokens=codec.tokens,
                       voices=["nova"])


def _box() -> np.ndarray:
    vox = np.zeros((16, 16, 16), dtype=bool)
    vox[3:11, 5:13, 0:6] = True
    return vox


# ------------------------------------------------------------------ vocab


def _without_mesh(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d.pop("mesh", None)
    d["ranges"].pop("mesh", None)
    return d


def test_world_vocab_takes_a_mesh_range_in_its_padding():
    stored = json.loads(WORLD_VOCAB.read_text())
    old = _without_mesh(stored)
    plain = Vocab.from_dict(old)
    # a vocab.json without a mesh key loads unchanged and writes the very same bytes back
    assert json.dumps(plain.to_dict(), indent=1) == json.dumps(old, indent=1)
    assert plain.mesh_codebook_size == 0 and plain.range_of("mesh") == (plain.audio_end, plain.audio_end)
    with_mesh = dict(old, mesh={"codebook_size": 40, "tokens": 64})
    with_mesh.pop("size")
    v = Vocab.from_dict(with_mesh)
    assert v.size == plain.size == old["size"]  # the 40 codes sit in the padding: no id moves, no row added
    for name, (lo, hi) in old["ranges"].items():
        assert v.range_of(name) == (lo, hi) == plain.range_of(name)
    assert v.special_tokens == plain.special_tokens
    assert v.range_of("mesh") == (plain.audio_end, plain.audio_end + 40)
    assert v.range_of("mesh")[1] <= v.size
    # the stored file (with or without its mesh range) agrees with that layout
    shipped = Vocab.load(WORLD_VOCAB)
    assert shipped.size == plain.size and all(shipped.range_of(n) == plain.range_of(n) for n in old["ranges"])
    assert Vocab.from_dict(v.to_dict()) == v


def test_mesh_markers_are_reserved_slots_3_and_4(vocab):
    plain = Vocab.build(vocab.text_size, image_codebook_size=40, image_tokens=4, audio_codebook_size=24,
                        audio_codebooks=2, voices=["nova"])
    assert vocab.special("mesh") == vocab.special("reserved:3") == plain.special("reserved:3")
    assert vocab.special("/mesh") == vocab.special("<|reserved:4|>")
    assert vocab.special("fim_middle") == vocab.special("reserved:2")
    assert {s: vocab.special(s) for s in vocab.special_tokens} == {s: plain.special(s) for s in plain.special_tokens}


def test_mesh_range_ids_and_modality(vocab, codec):
    lo, hi = vocab.range_of("mesh")
    assert lo == vocab.audio_end and hi - lo == codec.codebook_size and vocab.size >= hi
    assert vocab.size % vocab.pad_multiple == 0
    ids = np.arange(vocab.size)
    mods = vocab.modality_of(ids)
    assert (mods[lo:hi] == Vocab.MODALITIES.index("mesh")).all()
    assert (mods[hi:] == Vocab.MODALITIES.index("special")).all()  # padding counts as special, as before
    assert (mods[vocab.audio_start:lo] == Vocab.MODALITIES.index("audio")).all()
    assert vocab.to_global("mesh", 3) == lo + 3 and vocab.to_local("mesh", hi - 1) == codec.codebook_size - 1
    with pytest.raises(ValueError, match="out of range"):
        vocab.to_global("mesh", codec.codebook_size)
    # a range too big for the padding grows the vocabulary; reserve comes after it
    big = Vocab.build(vocab.text_size, mesh_codebook_size=200, mesh_tokens=8, reserve=10)
    assert big.size >= big.range_of("mesh")[1] + 10 and big.size % 64 == 0
    assert Vocab.for_codecs(vocab.text_size, mesh_codec=codec).range_of("mesh")[1] - big.mesh_start == 40


def test_mesh_vocab_errors():
    with pytest.raises(ValueError, match="both be set"):
        Vocab.build(100, mesh_codebook_size=40)
    with pytest.raises(ValueError, match="reserved specials"):
        Vocab.build(100, mesh_codebook_size=40, mesh_tokens=64, num_reserved_specials=4)


# ------------------------------------------------------------------ template


def test_mesh_span_round_trip(vocab, tok):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, vocab.mesh_codebook_size, vocab.mesh_tokens).tolist()
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "make a 3D model of a big cube"}]},
        {"role": "assistant", "content": [{"type": "mesh_codes", "codes": codes},
                                          {"type": "image_codes", "codes": [1, 2, 3, 4]}]},
    ]
    enc = encode_conversation(messages, vocab, tok, mode="sft")
    i = enc.ids.index(vocab.special("mesh"))
    span = enc.ids[i:i + vocab.mesh_tokens + 2]
    assert span[-1] == vocab.special("/mesh")
    assert span[1:-1] == [vocab.mesh_start + c for c in codes]
    assert all(enc.loss_mask[i:i + len(span)])  # an assistant's shape is learned
    segs = decode_ids(enc.ids, vocab, tok, strict=True)
    mesh = [s for s in segs if s.modality == "mesh"]
    assert len(mesh) == 1 and mesh[0].codes == codes and mesh[0].complete and mesh[0].role == "assistant"
    assert segments_to_messages(segs) == messages
    # a cut inside the span: what was read, incomplete; a wrong length is malformed
    cut = decode_ids(enc.ids[:i + 10], vocab, tok)
    assert cut[-1].modality == "mesh" and cut[-1].codes == codes[:9] and not cut[-1].complete
    bad = enc.ids[:i + 10] + enc.ids[i + vocab.mesh_tokens + 1:]
    with pytest.raises(ValueError, match="mesh span has 9 codes"):
        decode_ids(bad, vocab, tok, strict=True)
    with pytest.raises(ValueError, match="exactly 64 codes"):
        encode_conversation([{"role": "user", "content": [{"type": "mesh_codes", "codes": codes[:5]}]}], vocab, tok)


def test_prompt_opens_a_mesh_span_and_plain_vocabs_refuse(vocab, tok):
    msgs = [{"role": "user", "content": "make a 3D model of a big cube"}]
    p = build_prompt(msgs, vocab, tok, "mesh")
    assert p[-2:] == [vocab.special("assistant"), vocab.special("mesh")]
    plain = Vocab.build(tok.vocab_size)
    with pytest.raises(ValueError, match="no mesh codes"):
        build_prompt(msgs, plain, tok, "mesh")
    with pytest.raises(ValueError, match="no mesh codes"):
        encode_conversation([{"role": "user", "content": [{"type": "mesh_codes", "codes": [0]}]}], plain, tok)
    # without a mesh range, reserved slot 3 is no span opener
    ids = [plain.special("reserved:3"), 5]
    assert [s.modality for s in decode_ids(ids, plain, tok)] == ["text"]


def test_grammar_forces_exactly_n_mesh_codes(vocab):
    g = SpanGrammar(vocab, outputs=("mesh",))
    free = g.allowed()
    assert free[vocab.special("mesh")] and not free[vocab.special("image")] and not free[5]
    assert not SpanGrammar(vocab, outputs=("text", "image")).allowed()[vocab.special("mesh")]
    g.advance(vocab.special("mesh"))
    lo, hi = vocab.range_of("mesh")
    for _ in range(vocab.mesh_tokens):
        allowed = g.allowed()
        assert allowed[lo:hi].all() and allowed.sum() == hi - lo
        g.advance(lo)
    assert g.allowed().nonzero().flatten().tolist() == [vocab.special("/mesh")]
    g.advance(vocab.special("/mesh"))
    assert g.state == "free" and g.allowed()[vocab.end_id]


# ------------------------------------------------------------------ processor


def test_processor_mesh_parts_to_codes_and_back(vocab, tok, codec, tmp_path):
    proc = Processor(vocab, tok, {"mesh": codec})
    vox = _box()
    stl = write_mesh(vox, tmp_path / "box.stl")
    np.save(tmp_path / "box.npy", vox)
    want = codec.encode(read_mesh_voxels(stl)).tolist()
    by_path = proc.to_code_part({"type": "mesh", "path": "box.stl"}, base_dir=tmp_path)
    assert by_path == {"type": "mesh_codes", "codes": want}
    assert proc.to_code_part({"type": "mesh", "mesh": stl.read_bytes()})["codes"] == want
    assert proc.to_code_part({"type": "mesh", "mesh": str(tmp_path / "box.npy")})["codes"] == \
        codec.encode(vox).tolist()
    assert proc.to_code_part({"type": "mesh", "mesh": torch.from_numpy(vox)})["codes"] == codec.encode(vox).tolist()
    enc = proc.encode_messages([{"role": "user", "content": [{"type": "mesh", "path": str(stl)},
                                                             {"type": "text", "text": "describe the 3D model"}]}])
    seg = next(s for s in proc.decode_ids(enc.ids, strict=True) if s.modality == "mesh")
    assert seg.codes == want
    back = proc.decode_media(seg)
    assert back.shape == (16, 16, 16) and back.dtype == torch.bool
    assert torch.equal(back, codec.decode(torch.tensor(want)))
    with pytest.raises(ValueError, match="does not exist"):
        proc.to_code_part({"type": "mesh", "path": str(tmp_path / "nope.stl")}, where="message 0 part 1")
    with pytest.raises(ValueError, match="needs a mesh codec"):
        Processor(vocab, tok).to_code_part({"type": "mesh", "path": str(stl)})
    with pytest.raises(ValueError, match="does not match the vocab"):
        Processor(Vocab.build(tok.vocab_size), tok, {"mesh": codec})


def test_tokenize_passes_mesh_parts_through(tok, codec, tmp_path):
    from omniloom.data.shards import ShardSet
    from omniloom.data.tokenize import tokenize_files

    write_mesh(_box(), tmp_path / "box.stl")
    rec = {"messages": [{"role": "user", "content": "make a 3D model of a big cube"},
                        {"role": "assistant", "content": [{"type": "mesh", "path": "box.stl"}]}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    tokenize_files([tmp_path / "d.jsonl"], tok.save(tmp_path / "tok"), tmp_path / "out", codecs={"mesh": codec},
                   progress=False)
    shards = ShardSet.open(tmp_path / "out" / "train")
    v = Vocab.load(tmp_path / "out" / "train" / "vocab.json")
    assert v.mesh_tokens == codec.tokens and v.mesh_codebook_size == codec.codebook_size
    ids = shards.ids[:].tolist()
    i = ids.index(v.special("mesh"))
    assert [t - v.mesh_start for t in ids[i + 1:i + 1 + v.mesh_tokens]] == \
        codec.encode(read_mesh_voxels(tmp_path / "box.stl")).tolist()


# ------------------------------------------------------------------ generation and chat


def _tiny_model(vocab: Vocab) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab.size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                      max_seq_len=256)
    return Transformer(cfg).eval()


def test_engine_and_generate_draw_exactly_one_whole_mesh(vocab, tok, codec):
    omni = OmniModel(_tiny_model(vocab), vocab, tok, {"mesh": codec})
    prompt = build_prompt([{"role": "user", "content": "make a 3D model of a big cube"}], vocab, tok, "mesh")
    grammar = SpanGrammar(vocab, omni.model.cfg.vocab_size, outputs=("mesh",), prefix=prompt)
    out = Engine(omni.model).generate([Request(prompt, SamplingParams(max_new_tokens=80, temperature=1.0, seed=3),
                                               grammar)])[0]
    lo, hi = vocab.range_of("mesh")
    assert all(lo <= t < hi for t in out[:vocab.mesh_tokens])
    assert out[vocab.mesh_tokens] == vocab.special("/mesh")
    assert out[vocab.mesh_tokens + 1] in (vocab.end_id, vocab.special("mesh"))  # answer done, or another shape
    events = list(generate(omni, [{"role": "user", "content": "make a 3D model of a big cube"}], "mesh", ("mesh",),
                           sampling=SamplingParams(max_new_tokens=80, temperature=1.0, seed=3)))
    meshes = [e for e in events if isinstance(e, MeshOut)]
    assert len(meshes) == out.count(vocab.special("/mesh")) >= 1
    assert meshes[0].codes == [t - lo for t in out[:vocab.mesh_tokens]]
    assert all(len(m.codes) == vocab.mesh_tokens for m in meshes)
    assert np.array_equal(meshes[0].voxels, codec.decode(torch.tensor(meshes[0].codes)).numpy())
    done = events[-1]
    assert isinstance(done, Done) and done.usage["mesh_tokens"] == sum(lo <= t < hi for t in out)


def _model_dir(d: Path, vocab: Vocab, tok, codec: MeshCodec | None) -> Path:
    from safetensors.torch import save_file

    cfg = Config(name="tiny")
    cfg.model = _tiny_model(vocab).cfg
    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in _tiny_model(vocab).state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    vocab.save(d / "vocab.json")
    tok.save(d / "tokenizer.json")
    if codec is not None:
        codec.save(d / "codecs" / "mesh")
        (d / "codecs.json").write_text(json.dumps({"mesh": "codecs/mesh"}))
    return d


def test_chat_mesh_writes_a_watertight_stl_and_reads_one(vocab, tok, codec, tmp_path, capsys):
    import trimesh

    from omniloom.cli import main

    model = _model_dir(tmp_path / "m", vocab, tok, codec)
    out = tmp_path / "shape.stl"
    assert main(["chat", "--model", str(model), "--mesh", str(out), "--temperature", "1", "--seed", "0",
                 "--max-new-tokens", "80", "make a 3D model of a big cube"]) == 0
    printed = capsys.readouterr()
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 0 and mesh.is_watertight
    assert f"watertight) written to {out}" in printed.out and f"mesh {vocab.mesh_tokens})" in printed.err
    # the written shape is the decoded answer: read back, it voxelises to the same occupancy
    vox = read_mesh_voxels(out)
    assert vox.any() and vox.shape == (16, 16, 16)
    # a mesh as input: its span is in the prompt
    assert main(["chat", "--model", str(model), "--mesh-in", str(out), "--max-new-tokens", "4",
                 "describe the 3D model"]) == 0
    err = capsys.readouterr().err
    prompt_tokens = int(err.split("tokens: prompt ")[1].split(",")[0])
    assert prompt_tokens >= vocab.mesh_tokens + 2


def test_chat_mesh_on_a_model_without_3d_says_so(vocab, tok, tmp_path, capsys):
    from omniloom.cli import main

    model = _model_dir(tmp_path / "m", vocab, tok, None)
    assert main(["chat", "--model", str(model), "--mesh", str(tmp_path / "o.stl"), "a cube"]) == 2
    err = capsys.readouterr().err
    assert "this model has no 3D codec" in err and "codecs.json" in err and "vocab.json" not in err
    plain = Vocab.build(tok.vocab_size, voices=["nova"])
    model2 = _model_dir(tmp_path / "p", plain, tok, None)
    assert main(["chat", "--model", str(model2), "--mesh-in", str(tmp_path / "x.stl"), "describe"]) == 2
    assert "mesh range in its vocab.json" in capsys.readouterr().err
    assert main(["chat", "--model", str(model), "--mesh", str(tmp_path / "o.ply"), "a cube"]) == 2
    assert ".stl" in capsys.readouterr().err
    assert not (tmp_path / "o.stl").exists()


def test_same_ids_tolerates_a_mesh_range_only_one_side_holds():
    old = _without_mesh(json.loads(WORLD_VOCAB.read_text()))
    plain = Vocab.from_dict(old)
    mesh = Vocab.from_dict({k: v for k, v in old.items() if k != "size"} | {"mesh": {"codebook_size": 40, "tokens": 64}})
    other = Vocab.from_dict({k: v for k, v in old.items() if k != "size"} | {"mesh": {"codebook_size": 40, "tokens": 8}})
    assert plain.same_ids(mesh) and mesh.same_ids(plain) and mesh.same_ids(mesh)
    assert not mesh.same_ids(other)  # two different mesh codecs: their codes mean different shapes
    moved = Vocab.from_dict({k: v for k, v in old.items() if k not in ("size", "special_tokens")} | {"reserve": 64})
    assert not plain.same_ids(moved)


def test_fine_tune_from_a_model_with_a_mesh_range_takes_data_without_one(tmp_path):
    """Shards tokenized before a model gained its mesh range still fine-tune it (train.init_from)."""
    import torch.nn as nn

    from omniloom.train.loop import init_weights

    tok = TextTokenizer.train(CORPUS, vocab_size=300)
    plain = Vocab.build(tok.vocab_size, voices=["nova"])
    mesh = Vocab.build(tok.vocab_size, voices=["nova"], mesh_codebook_size=20, mesh_tokens=8)  # fits the padding
    assert mesh.size == plain.size
    src = _model_dir(tmp_path / "src", mesh, tok, None)
    plain.save(tmp_path / "data_vocab.json")
    from omniloom.config import config_from_dict

    cfg = config_from_dict(json.loads((src / "config.json").read_text()))
    model = Transformer(cfg.model)
    for p in model.parameters():
        nn.init.zeros_(p)
    init_weights(model, str(src), cfg, tmp_path / "data_vocab.json")
    assert any(p.abs().sum() > 0 for p in model.parameters())  # the source's weights came in
    Vocab.build(tok.vocab_size, voices=["nova"], reserve=64).save(tmp_path / "moved.json")
    with pytest.raises(ValueError, match="is not the one"):
        init_weights(model, str(src), cfg, tmp_path / "moved.json")


def test_interactive_chat_attaches_a_mesh(vocab, tok, codec, tmp_path, capsys, monkeypatch):
    from omniloom.cli import main

    model = _model_dir(tmp_path / "m", vocab, tok, codec)
    stl = write_mesh(_box(), tmp_path / "box.stl")
    lines = iter([f"/mesh {stl}", "describe the 3D model", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(model), "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert int(err.split("tokens: prompt ")[1].split(",")[0]) >= vocab.mesh_tokens + 2  # the shape was sent


def test_gguf_vocabulary_names_the_mesh_codes(vocab):
    from omniloom.model.gguf_io import CONTROL, UNUSED, gguf_omni_vocab

    tokens, types, _ = gguf_omni_vocab(vocab.to_dict())
    T = vocab.text_size
    lo, hi = vocab.range_of("mesh")
    assert len(tokens) == len(types) == vocab.size - T
    assert tokens[lo - T] == "<|mesh:0|>" and tokens[hi - 1 - T] == f"<|mesh:{vocab.mesh_codebook_size - 1}|>"
    assert set(types[lo - T:hi - T]) == {CONTROL} and set(types[hi - T:]) <= {UNUSED}
    assert tokens[vocab.special("mesh") - T] == "<|reserved:3|>"  # the span marker keeps its stored name


def test_plan_counts_the_mesh_range_apart_from_the_padding(vocab):
    from omniloom.train.plan import _vocab_summary

    s = _vocab_summary(vocab)
    assert s["mesh"] == vocab.mesh_codebook_size and s["padding"] == vocab.size - vocab.range_of("mesh")[1]
    assert s["specials"] + s["image"] + s["audio"] + s["mesh"] + s["padding"] == s["added"]


def test_the_world_model_loads_its_mesh_codec_and_answers_in_3d(tmp_path):
    """The shipped world model carries a mesh range and the mesh-world codec (its weights predate
    3D, so the shape is untrained; what is checked is the path: a whole span, decoded, written)."""
    import trimesh

    from omniloom.codecs import model_codec_refs
    from omniloom.utils.model_dir import resolve_model_dir

    world = resolve_model_dir("world")
    assert model_codec_refs(world)["mesh"] == "mesh-world"
    v = Vocab.load(world / "vocab.json")
    codec = MeshCodec.from_dir("mesh-world")
    assert (v.mesh_codebook_size, v.mesh_tokens) == (codec.codebook_size, codec.tokens)
    cfg = json.loads((world / "config.json").read_text())
    assert cfg["model"]["vocab_size"] >= v.range_of("mesh")[1]  # the range lies inside the trained rows
    omni = OmniModel.load("world")
    events = list(generate(omni, [{"role": "user", "content": "make a 3D model of a big red cube"}], "mesh",
                           ("mesh",), sampling=SamplingParams(max_new_tokens=v.mesh_tokens + 2)))
    shape = next(e for e in events if isinstance(e, MeshOut))
    assert len(shape.codes) == v.mesh_tokens and shape.voxels.shape == (16, 16, 16)
    if shape.voxels.any():
        assert trimesh.load(write_mesh(shape.voxels, tmp_path / "w.stl"), force="mesh").is_watertight
