"""generate(): the span grammar shapes every answer, audio streams in 80 ms chunks, usage counts add up."""

import numpy as np
import pytest
import torch

from omniloom.codecs.audio import AudioCodec, AudioCodecConfig
from omniloom.codecs.image import ImageCodec, ImageCodecConfig
from omniloom.codecs.text import TextTokenizer
from omniloom.config import preset
from omniloom.infer.generate import AudioChunk, Done, ImageOut, OmniModel, TextDelta, generate
from omniloom.infer.grammar import SpanGrammar
from omniloom.infer.sampling import SamplingParams
from omniloom.model import Transformer
from omniloom.tokens import Vocab

CORPUS = ["what color is the star?", "a big red circle at the top left", "draw a small blue square", "three"] * 20


@pytest.fixture(scope="module")
def omni():
    torch.manual_seed(0)
    tok = TextTokenizer.train(CORPUS, vocab_size=300)
    image = ImageCodec(ImageCodecConfig()).eval()
    audio = AudioCodec(AudioCodecConfig()).eval()
    vocab = Vocab.for_codecs(tok.vocab_size, image, audio, voices=["nova", "atlas"])
    cfg = preset("debug").model
    cfg.vocab_size = vocab.size
    return OmniModel(Transformer(cfg), vocab, tok, {"image": image, "audio": audio})


def _run(omni, **kw):
    return list(generate(omni, [{"role": "user", "content": "draw a small blue square"}], **kw))


def test_forced_image_has_exactly_one_full_image(omni):
    events = _run(omni, output_modality="image", outputs=("image",),
                  sampling=SamplingParams(max_new_tokens=80, temperature=1.0, seed=0))
    imgs = [e for e in events if isinstance(e, ImageOut)]
    assert len(imgs) == 1
    assert len(imgs[0].codes) == omni.vocab.image_tokens
    assert imgs[0].image.shape == (64, 64, 3) and imgs[0].image.dtype == np.uint8
    done = events[-1]
    assert isinstance(done, Done) and done.usage["image_tokens"] == omni.vocab.image_tokens


def test_forced_audio_streams_chunks_of_80ms(omni):
    events = _run(omni, output_modality="audio", voice="atlas", outputs=("audio",),
                  sampling=SamplingParams(max_new_tokens=21, temperature=1.0, seed=1))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "length"
    assert chunks and all(c.voice == "atlas" and c.sample_rate == 16000 for c in chunks)
    frames = done.usage["audio_tokens"] // omni.vocab.audio_codebooks
    total = sum(len(c.pcm) for c in chunks)
    assert total == frames * 640  # every frame decoded, nothing more
    # while streaming, each chunk carries 2 frames (80 ms), the last one may hold the remainder
    hop = 640
    assert all(len(c.pcm) <= 2 * hop + hop for c in chunks[:-1])
    assert done.usage["completion_tokens"] == done.usage["audio_tokens"] + done.usage["text_tokens"]


def test_text_only_outputs_never_open_spans(omni):
    events = _run(omni, outputs=("text",), sampling=SamplingParams(max_new_tokens=30, temperature=1.5, seed=2))
    assert all(isinstance(e, (TextDelta, Done)) for e in events)
    done = events[-1]
    assert done.usage["image_tokens"] == 0 and done.usage["audio_tokens"] == 0


def test_grammar_audio_frames_and_voice(omni):
    v = omni.vocab
    g = SpanGrammar(v, outputs=("audio",))
    assert not g.allowed()[v.special("image")]
    g.advance(v.special("audio"))
    allowed = g.allowed()
    assert allowed[v.voice_id("nova")] and not allowed[v.voice_id(None)]
    g.advance(v.voice_id("nova"))
    a = g.allowed()
    lo, hi = v.range_of("audio")
    assert a[lo:hi].all() and a[v.special("/audio")] and not a[v.special("/image")]


def test_bad_output_modality(omni):
    with pytest.raises(ValueError, match="output_modality"):
        _run(omni, output_modality="smell")


class _ScriptedEngine:
    """Stands in for the engine: emits a fixed token script through the request's grammar."""

    def __init__(self, script):
        self.script = script

    def stream(self, requests):
        for tok in self.script:
            requests[0].constraint.advance(tok)
            yield 0, tok


def test_audio_span_closed_before_any_frame(omni, monkeypatch):
    v = omni.vocab
    lo = v.range_of("audio")[0]
    cases = {
        "closed at once": [v.special("/audio"), v.end_id],
        "one frame then stop": [lo + 5, v.special("/audio"), v.end_id],
        "cut mid-span": [v.text_size - 1],
    }
    for name, script in cases.items():
        monkeypatch.setattr(omni, "engine", _ScriptedEngine(script))
        events = _run(omni, output_modality="audio", voice="nova")
        done = events[-1]
        assert isinstance(done, Done), name
        pcm = sum(len(e.pcm) for e in events if isinstance(e, AudioChunk))
        assert pcm == done.usage["audio_tokens"] * 640, name


def test_guidance_mixes_conditional_and_unconditional_logits(omni):
    """cfg_scale s: the first image code is argmax of uncond + s * (cond - uncond) over image codes."""
    from omniloom.tokens import null_condition

    v = omni.vocab
    msgs = [{"role": "user", "content": "draw a small blue square"}]
    prompt = omni.processor.prompt_ids(msgs, "image")
    uncond = null_condition(v) + [v.special("assistant"), v.special("image")]
    with torch.no_grad():
        lc = omni.model(torch.tensor([prompt]))[0, -1].float()
        lu = omni.model(torch.tensor([uncond]))[0, -1].float()
    lo, hi = v.range_of("image")
    expected, got = {}, {}
    for s in (1.0, 6.0):
        expected[s] = int(torch.argmax((lu + s * (lc - lu))[lo:hi]))
        events = _run(omni, output_modality="image", outputs=("image",), cfg_scale=s,
                      sampling=SamplingParams(max_new_tokens=80, temperature=0.0))
        got[s] = [e for e in events if isinstance(e, ImageOut)][0].codes[0]
    assert got == expected
    assert expected[1.0] != expected[6.0]  # the scale changes the choice on this model


def test_on_prompt_sees_the_prompt_before_any_token_and_never_for_bad_input(omni):
    """The hook the server's scheduler uses: called once with the prompt ids (what prompt usage is
    counted from) before the first event; a request whose media cannot be read never reaches it."""
    seen, order = [], []
    omni.on_prompt = lambda ids: (seen.append(list(ids)), order.append("prompt"))
    try:
        msgs = [{"role": "user", "content": "draw a small blue square"}]
        for ev in generate(omni, msgs, sampling=SamplingParams(max_new_tokens=4, temperature=0.0)):
            order.append(type(ev).__name__)
        assert order[0] == "prompt" and order.count("prompt") == 1 and order[-1] == "Done"
        assert seen[0] == omni.processor.prompt_ids(msgs)
        seen.clear()
        bad = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv",
                                                                                      "format": "wav"}}]}]
        with pytest.raises(ValueError):
            list(generate(omni, bad, sampling=SamplingParams(max_new_tokens=4)))
        assert seen == []
    finally:
        omni.on_prompt = None


def test_speak_via_text_writes_then_speaks():
    """A spoken answer written first as text (streamed as the transcript), then spoken through the
    model's own speak prompt; the token budget covers both parts."""
    from omniloom.infer.generate import AudioChunk, Done, TextDelta, TranscriptDelta, generate
    from omniloom.infer.sampling import SamplingParams
    from omniloom.serve.tiny import build_tiny_model

    omni = build_tiny_model()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    msgs = [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "what color is the triangle?"}]}]
    sp = SamplingParams(max_new_tokens=40, temperature=0.0)
    text = [ev.text for ev in generate(omni, msgs, outputs=("text",), sampling=SamplingParams(
        max_new_tokens=20, temperature=0.0)) if isinstance(ev, TextDelta)]  # the text gets half the budget
    evs = list(generate(omni, msgs, output_modality="audio", outputs=("audio",), voice="nova", sampling=sp,
                        speak_via_text=True))
    kinds = [type(ev).__name__ for ev in evs]
    transcript = "".join(ev.text for ev in evs if isinstance(ev, TranscriptDelta))
    assert transcript == "".join(text) and transcript.strip()  # the model's text answer, as it streamed
    first_audio = kinds.index("AudioChunk")
    assert "TranscriptDelta" not in kinds[first_audio:]  # written first, then spoken
    done = evs[-1]
    assert isinstance(done, Done) and done.usage["completion_tokens"] <= 40
    assert done.usage["text_tokens"] + done.usage["audio_tokens"] <= done.usage["completion_tokens"]
    # the speak prompt is what a direct spoken answer of that text would use
    spoken = [ev for ev in evs if isinstance(ev, AudioChunk)]
    direct = [ev for ev in generate(omni, [{"role": "user", "content": omni.task_prompt("speak", transcript.strip())}],
                                    output_modality="audio", outputs=("audio",), voice="nova",
                                    sampling=SamplingParams(max_new_tokens=40 - done.usage["text_tokens"],
                                                            temperature=0.0), speak_via_text=False)
              if isinstance(ev, AudioChunk)]
    assert spoken and np.allclose(np.concatenate([c.pcm for c in spoken]), np.concatenate([c.pcm for c in direct]))
    # a question without an image (e.g. "say ...": the model's own speech task) is spoken directly
    plain = [{"role": "user", "content": "say a red circle"}]

    def pcm(via):
        return np.concatenate([ev.pcm for ev in generate(omni, plain, output_modality="audio", outputs=("audio",),
                                                         voice="nova", sampling=SamplingParams(
                                                             max_new_tokens=40, temperature=0.0), speak_via_text=via)
                               if isinstance(ev, AudioChunk)])
    assert np.array_equal(pcm(True), pcm(False))
