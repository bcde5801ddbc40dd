"""omniloom export --format gguf: a llama.cpp file of the decoder and the extended vocabulary, read
back by omniloom's own GGUF reader and by transformers' (an independent reader)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from omniloom.cli import main  # noqa: E402
from omniloom.codecs.text import TextTokenizer  # noqa: E402
from omniloom.config import Config, ModelConfig, config_to_dict  # noqa: E402
from omniloom.model import Transformer  # noqa: E402
from omniloom.model.base_lm import BaseLM, read_gguf  # noqa: E402
from omniloom.model.gguf_io import (gguf_field, gguf_pre_name, permute_qk, read_gguf_files,  # noqa: E402
                                    unpermute_qk)
from omniloom.tokens import Vocab, build_prompt  # noqa: E402

CORPUS = ["what color is the star?", "a big red circle at the top left", "draw a small blue square",
          "numbers 12 and 345 and 6789", "say hello world"] * 20
SAMPLE = "what color is the big star? numbers 12 and 345, hello world!"
#: max |logit difference| allowed, relative to the largest |logit| of the original (measured on
#: these random models: f32 0, f16 0.8-1.1e-3, q8_0 1.9-2.4e-2)
TOL = {"f32": 1e-6, "f16": 3e-3, "q8_0": 5e-2}


def _randomise(model: Transformer, seed: int) -> Transformer:
    """Weights of std 0.1 (norms around 1) so that logits spread over a few units, unlike the
    near-uniform logits of the 0.02 init: a tolerance on them then means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if p.ndim == 1 else 0.1 * torch.randn(p.shape, generator=g))
    return model


def make_model_dir(d: Path, tie: bool = True, ffn_dim: int = 80, **model_kw) -> Path:
    """A random tiny model directory: BPE, a vocabulary with image and 2-codebook audio ranges."""
    tok = TextTokenizer.train(CORPUS, vocab_size=300)
    vocab = Vocab.build(tok.vocab_size, image_codebook_size=40, image_tokens=4, audio_codebook_size=24,
                        audio_codebooks=2, voices=["nova", "atlas"])
    cfg = Config(name="tiny")
    # ffn_dim 80: the down projection's rows (80 long) are no multiple of Q8_0's 32-block
    cfg.model = ModelConfig(vocab_size=vocab.size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=ffn_dim,
                            max_seq_len=128, tie_embeddings=tie, **model_kw)
    model = _randomise(Transformer(cfg.model), seed=1)
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    vocab.save(d / "vocab.json")
    tok.save(d / "tokenizer.json")
    (d / "generation.json").write_text(json.dumps({"prompts": {"caption": "describe the image"}}))
    return d


def _logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.float()(torch.tensor([ids]))[0]


def _load_dir(d: Path) -> tuple[Transformer, Vocab, TextTokenizer]:
    from safetensors.torch import load_file

    from omniloom.config import config_from_dict

    cfg = config_from_dict(json.loads((d / "config.json").read_text()))
    model = Transformer(cfg.model)
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model, Vocab.load(d / "vocab.json"), TextTokenizer.load(d / "tokenizer.json")


def _from_gguf(base: BaseLM) -> Transformer:
    model = Transformer(base.cfg)
    model.load_state_dict(base.state)
    return model


def _export(src: Path, out: Path, gguf_type: str = "f16", *extra: str) -> int:
    return main(["export", "--checkpoint", str(src), "--format", "gguf", "--gguf-type", gguf_type, "--out", str(out),
                 *extra])


def _sample_ids(vocab: Vocab, tok: TextTokenizer) -> list[int]:
    """Text, then an image span and audio codes of both codebooks: every range of the vocabulary."""
    return (vocab.bos_ids + tok.encode(SAMPLE) + [vocab.special("image")]
            + [vocab.to_global("image", c) for c in (0, 7, 39, 12)] + [vocab.special("/image"), vocab.special("audio"),
                                                                       vocab.voice_id("nova")]
            + vocab.audio_to_global(np.array([[3, 20], [23, 0]])))


def test_permute_qk_is_the_inverse_of_unpermute():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not torch.equal(permute_qk(w, 4), w)


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_survive_the_round_trip(tmp_path, gguf_type, tie):
    src = make_model_dir(tmp_path / "m", tie=tie)
    out = tmp_path / f"m.{gguf_type}.gguf"
    assert _export(src, out, gguf_type) == 0
    model, vocab, tok = _load_dir(src)
    base = read_gguf(out)
    assert base.cfg.tie_embeddings == tie and base.cfg.vocab_size == vocab.size
    ids = _sample_ids(vocab, tok)
    a, b = _logits(model, ids), _logits(_from_gguf(base), ids)
    err = (a - b).abs().max().item() / a.abs().max().item()
    assert err <= TOL[gguf_type], err
    if gguf_type != "f32":
        assert err > 0  # the weights really were stored in the smaller type
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree >= (1.0 if gguf_type == "f32" else 0.8), agree  # random logits have near ties
    r = gguf.GGUFReader(str(out))
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert ("output.weight" in kinds) == (not tie)
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[gguf_type]
    assert kinds["blk.0.attn_q.weight"] == want and kinds["token_embd.weight"] == want
    # rows of 80 are no whole number of Q8_0 blocks: f16 instead
    assert kinds["blk.0.ffn_down.weight"] == ("F16" if gguf_type == "q8_0" else want)


def test_vocabulary_metadata_matches_the_vocab(tmp_path):
    src = make_model_dir(tmp_path / "m")
    out = tmp_path / "m.gguf"
    assert _export(src, out) == 0
    _, vocab, tok = _load_dir(src)
    r = gguf.GGUFReader(str(out))
    tokens = list(gguf_field(r, "tokenizer.ggml.tokens"))
    types = list(gguf_field(r, "tokenizer.ggml.token_type"))
    assert len(tokens) == vocab.size == len(set(tokens))
    assert gguf_field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert gguf_field(r, "tokenizer.ggml.bos_token_id") == vocab.bos_id
    assert gguf_field(r, "tokenizer.ggml.eos_token_id") == vocab.eos_id
    assert gguf_field(r, "tokenizer.ggml.eot_token_id") == vocab.end_id
    assert gguf_field(r, "tokenizer.ggml.padding_token_id") == vocab.pad_id
    for i in (vocab.bos_id, vocab.special("assistant"), vocab.voice_id("atlas"), vocab.time_id(0.5)):
        assert tokens[i] == vocab.special_name(i) and types[i] == 3
    assert tokens[vocab.to_global("image", 7)] == "<|image:7|>"
    assert tokens[vocab.to_global("audio", 5, codebook=1)] == "<|audio:1:5|>"
    assert set(types[vocab.range_of("audio")[1]:]) <= {5}  # the padding tail: unused
    assert set(types[:vocab.text_size]) == {1}
    # the tokenizer rebuilt from the metadata gives the same ids as ours
    assert read_gguf(out).tokenizer.encode(SAMPLE, add_special_tokens=False).ids == tok.encode(SAMPLE)
    # the model directory's files travel verbatim; the chat template writes what build_prompt does
    files = read_gguf_files(out)
    for name in ("vocab.json", "tokenizer.json", "generation.json"):
        assert files[name] == (src / name).read_text()
    from omniloom.graft.chat import render_template

    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what color is the star?"}]
    text = render_template(gguf_field(r, "tokenizer.chat_template"), conv, True)
    rebuilt = read_gguf(out).tokenizer.encode(text, add_special_tokens=False).ids
    msgs = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in conv]
    assert rebuilt == build_prompt(msgs, vocab, tok)


def test_from_gguf_rebuilds_the_model_directory(tmp_path):
    src = make_model_dir(tmp_path / "m")
    out = tmp_path / "m.gguf"
    assert _export(src, out, "f32") == 0
    assert main(["export", "--from-gguf", str(out), "--out", str(tmp_path / "back")]) == 0
    back = tmp_path / "back"
    for name in ("vocab.json", "tokenizer.json", "generation.json"):
        assert (back / name).read_text() == (src / name).read_text()
    a_model, vocab, tok = _load_dir(src)
    b_model, _, _ = _load_dir(back)
    ids = _sample_ids(vocab, tok)
    assert torch.allclose(_logits(a_model, ids), _logits(b_model, ids), atol=1e-5)


def _chatml_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    # digits one by one, then GPT-2's split: SmolLM2's pre-tokenizer ("smollm" in llama.cpp)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_grafted_model_exports_with_its_chat_format(tmp_path):
    from omniloom.graft.chat import render_template
    from omniloom.graft.graft import graft

    tok = _chatml_tokenizer()
    cfg = ModelConfig(vocab_size=tok.get_vocab_size() + 4, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                      max_seq_len=128, tie_embeddings=False)
    state = _randomise(Transformer(cfg), seed=2).state_dict()
    base = BaseLM(cfg=cfg, state=state, tokenizer=tok, chat_template=CHATML, bos_token="<|im_start|>",
                  eos_token="<|im_end|>", source="test")
    graft(base, tmp_path / "g", voices=())
    out = tmp_path / "g.gguf"
    assert _export(tmp_path / "g", out, "q8_0") == 0
    model, vocab, ttok = _load_dir(tmp_path / "g")
    r = gguf.GGUFReader(str(out))
    tokens = list(gguf_field(r, "tokenizer.ggml.tokens"))
    assert gguf_field(r, "tokenizer.ggml.pre") == "smollm"
    assert tokens[vocab.end_id] == "<|im_end|>" and gguf_field(r, "tokenizer.ggml.eot_token_id") == vocab.end_id
    assert tokens[tok.get_vocab_size()] == "<|unused:{}|>".format(tok.get_vocab_size())  # the base's spare rows
    assert "graft.json" in read_gguf_files(out)
    back = read_gguf(out)
    assert back.tokenizer.encode(SAMPLE, add_special_tokens=False).ids == ttok.encode(SAMPLE)
    conv = [{"role": "user", "content": "numbers 12 and 345"}]
    text = render_template(gguf_field(r, "tokenizer.chat_template"), conv, True)
    msgs = [{"role": "user", "content": [{"type": "text", "text": conv[0]["content"]}]}]
    assert back.tokenizer.encode(text, add_special_tokens=False).ids == build_prompt(msgs, vocab, ttok)
    ids = build_prompt(msgs, vocab, ttok)
    a, b = _logits(model, ids), _logits(_from_gguf(back), ids)
    assert (a - b).abs().max().item() <= TOL["q8_0"] * a.abs().max().item()


@pytest.mark.slow
def test_transformers_gguf_loader_agrees(tmp_path):
    """transformers reads the file with its own GGUF code (q/k un-permutation, tokenizer): same logits."""
    transformers = pytest.importorskip("transformers")
    src = make_model_dir(tmp_path / "m", tie=False)
    assert _export(src, tmp_path / "m.gguf", "f32") == 0
    model, vocab, tok = _load_dir(src)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32)
    ids = _sample_ids(vocab, tok)
    with torch.no_grad():
        b = hf(torch.tensor([ids])).logits[0]
    assert torch.allclose(_logits(model, ids), b, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert hf_tok(SAMPLE, add_special_tokens=False)["input_ids"] == tok.encode(SAMPLE)


def test_clear_errors(tmp_path, capsys):
    src = make_model_dir(tmp_path / "m")
    assert _export(src, tmp_path / "m.bin") == 2
    assert "must name a .gguf file" in capsys.readouterr().err
    assert _export(src, tmp_path / "m.gguf", "f16", "--dtype", "float16") == 2
    assert "--gguf-type" in capsys.readouterr().err
    qk = make_model_dir(tmp_path / "qk", qk_norm=True)
    assert _export(qk, tmp_path / "qk.gguf") == 2
    assert "qk_norm" in capsys.readouterr().err and not (tmp_path / "qk.gguf").exists()
    (src / "tokenizer.json").unlink()
    assert _export(src, tmp_path / "m.gguf") == 2
    assert "tokenizer.json" in capsys.readouterr().err
    # a GGUF that omniloom did not write: --from-gguf says to graft it instead
    w = gguf.GGUFWriter(str(tmp_path / "foreign.gguf"), "llama")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert main(["export", "--from-gguf", str(tmp_path / "foreign.gguf"), "--out", str(tmp_path / "x")]) == 2
    assert "omniloom graft" in capsys.readouterr().err


def test_image_slot_embedding_needs_drop_image_pos(tmp_path, capsys):
    src = make_model_dir(tmp_path / "m")
    cfg = json.loads((src / "config.json").read_text())
    vocab = Vocab.load(src / "vocab.json")
    mc = ModelConfig(**cfg["model"])
    mc.image_pos_embed = True
    mc.image_slots_from_vocab(vocab)
    cfg["model"] = mc.__dict__
    (src / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    sd = load_file(str(src / "model.safetensors"))
    sd["image_pos.weight"] = torch.randn(vocab.image_tokens, mc.dim)
    save_file(sd, str(src / "model.safetensors"))
    assert _export(src, tmp_path / "m.gguf") == 2
    assert "--drop-image-pos" in capsys.readouterr().err
    assert _export(src, tmp_path / "m.gguf", "f32", "--drop-image-pos") == 0
    assert main(["export", "--from-gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "back")]) == 0
    _, _, _ = _load_dir(tmp_path / "back")  # a model without the slot embedding, loadable


def test_pre_tokenizer_names():
    assert gguf_pre_name({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}) == "gpt-2"
    with pytest.raises(ValueError, match="no llama.cpp equivalent"):
        gguf_pre_name({"type": "Whitespace"})
    with pytest.raises(ValueError, match="no llama.cpp equivalent"):  # a leading space llama.cpp would not add
        gguf_pre_name({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True})


# ------------------------------------------------------------------------- the llama.cpp backend


def test_llama_cpp_backend_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from omniloom.infer.generate import OmniModel
    from omniloom.infer.llamacpp_backend import llama_cpp_available, use_llama_cpp

    model, vocab, tok = _load_dir(make_model_dir(tmp_path / "m"))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as where it is not installed
    assert not llama_cpp_available()
    with pytest.raises(ValueError, match="llama-cpp-python"):
        use_llama_cpp(OmniModel(model, vocab, tok))


def test_llama_cpp_backend_decodes_like_the_torch_engine(tmp_path):
    """Same answers through llama.cpp (an f32 export) as through the torch engine: greedy text, a stop
    id, and an image span under the grammar with classifier-free guidance (a second context)."""
    pytest.importorskip("llama_cpp")
    from omniloom.infer.engine import Engine, Request
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.grammar import SpanGrammar
    from omniloom.infer.llamacpp_backend import LlamaCppEngine, use_llama_cpp
    from omniloom.infer.sampling import SamplingParams
    from omniloom.tokens.template import null_condition

    model, vocab, tok = _load_dir(make_model_dir(tmp_path / "m"))
    omni = OmniModel(model, vocab, tok)
    torch_engine = omni.engine
    engine = use_llama_cpp(omni, gguf_type="f32", threads=2)
    assert isinstance(omni.engine, LlamaCppEngine) and isinstance(torch_engine, Engine)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "draw a small blue square"}]}]
    prompt = build_prompt(msgs, vocab, tok)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    ref = torch_engine.generate([Request(prompt, greedy)])[0]
    assert engine.generate([Request(prompt, greedy)])[0] == ref
    stop = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(ref[3],))
    assert engine.generate([Request(prompt, stop)])[0] == ref[:ref.index(ref[3]) + 1]

    img = build_prompt(msgs, vocab, tok, "image")
    uncond = null_condition(vocab) + vocab.header_ids("assistant") + [vocab.special("image")]

    def req():
        return Request(img, SamplingParams(max_new_tokens=vocab.image_tokens + 1, temperature=0.0),
                       SpanGrammar(vocab, vocab.size, outputs=("image",), prefix=img), uncond_prompt=uncond,
                       cfg_scale=3.0)

    a, b = torch_engine.generate([req()])[0], engine.generate([req()])[0]
    assert a == b and len(a) == vocab.image_tokens + 1 and a[-1] == vocab.special("/image")
