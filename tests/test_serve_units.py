"""omniloom serve, units: server_vad thresholds and timing on eSpeak speech, truncation keeps what was heard."""

import asyncio
import json

import numpy as np
import pytest
import soxr

from omniloom.serve.realtime import RealtimeSession
from omniloom.serve.vad import ServerVAD


@pytest.fixture(scope="module")
def speech():
    from omniloom.world.speech import ASSISTANT_VOICES, synthesize

    return soxr.resample(synthesize("three red circles", ASSISTANT_VOICES["nova"]), 16000, 24000).astype(np.float32)


def _max_prob(clip):
    vad = ServerVAD(0.5, 500)
    best = 0.0
    for i in range(0, len(clip), 768):  # one 32 ms window at a time
        vad.push(clip[i:i + 768])
        best = max(best, vad.last_prob)
    return best


def test_vad_threshold_is_honoured(speech):
    # quiet speech in noise: silero is unsure (peak well below 0.5), so the threshold decides
    rng = np.random.default_rng(0)
    clip = np.concatenate([np.zeros(12000, np.float32), 0.05 * speech, np.zeros(24000, np.float32)])
    clip = clip + 0.02 * rng.standard_normal(len(clip)).astype(np.float32)
    peak = _max_prob(clip)
    assert 0.02 < peak < 0.9
    assert ServerVAD(peak + 0.0005, 500).push(clip) == []
    assert [e.kind for e in ServerVAD(peak * 0.8, 500).push(clip)][:1] == ["start"]
    assert ServerVAD(0.5, 500).push(clip) == []  # the default threshold hears no one


def test_vad_times_follow_the_audio(speech):
    lead = 24000  # 1 s of silence first
    clip = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(36000, np.float32)])
    evs = ServerVAD(0.5, 500).push(clip)
    assert [e.kind for e in evs] == ["start", "stop"]
    end_ms = 1000 + 1000 * len(speech) / 24000
    assert 950 <= evs[0].ms <= 1300 and abs(evs[1].ms - end_ms) < 300
    # pushed in odd-sized chunks the decisions are the same
    vad = ServerVAD(0.5, 500)
    chunked = [e for i in range(0, len(clip), 1000) for e in vad.push(clip[i:i + 1000])]
    assert [(e.kind, e.ms) for e in chunked] == [(e.kind, e.ms) for e in evs]


class _FakeWS:
    def __init__(self):
        self.sent = []

    async def send_text(self, text):
        self.sent.append(json.loads(text))


class _State:
    voices = ["nova"]

    class settings:
        model_id = "m"
        max_audio_seconds = 60


def test_truncate_keeps_only_the_heard_transcript():
    ws = _FakeWS()
    sess = RealtimeSession.__new__(RealtimeSession)  # no model needed for this path
    sess.st, sess.ws, sess.beta, sess.response = _State(), ws, False, None
    sess._lock = asyncio.Lock()
    sess.session = {"instructions": ""}
    item = {"id": "item_a", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_audio", "transcript": "the star is red"}]}
    sess.items = [{"id": "item_u", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "?"}]},
                  item]
    sess.extra = {"item_a": {"timeline": [(0.0, "the star "), (480.0, "is "), (900.0, "red")], "audio_ms": 1500.0}}
    asyncio.run(sess.truncate({"item_id": "item_a", "content_index": 0, "audio_end_ms": 600}))
    assert item["content"][0]["transcript"] == "the star is "
    assert ws.sent[-1]["type"] == "conversation.item.truncated" and ws.sent[-1]["audio_end_ms"] == 600
    assert sess._messages()[-1] == {"role": "assistant", "content": [{"type": "text", "text": "the star is "}]}
    with pytest.raises(ValueError, match="past the item's audio"):
        asyncio.run(sess.truncate({"item_id": "item_a", "content_index": 0, "audio_end_ms": 5000}))


def test_worker_views_of_an_int8_model_share_its_weights_and_answer_alike():
    import threading

    from omniloom.infer.engine import Request
    from omniloom.infer.sampling import SamplingParams
    from omniloom.model.quant import is_quantized, quantize_int8
    from omniloom.serve.scheduler import _worker_view
    from omniloom.serve.tiny import build_tiny_model

    omni = build_tiny_model()
    quantize_int8(omni.model)
    view = _worker_view(omni, threading.local(), share=True)
    assert view.model is not omni.model and is_quantized(view.model)
    assert view.model.lm_head.weight_int8.data_ptr() == omni.model.lm_head.weight_int8.data_ptr()
    params = SamplingParams(max_new_tokens=10, temperature=0)
    prompt = [omni.vocab.bos_id, 5, 6, 7]
    assert view.engine.generate([Request(prompt, params)]) == omni.engine.generate([Request(prompt, params)])


def test_sse_error_event_ends_a_stream_in_the_openai_envelope():
    """An error found after a stream's headers went out is sent as one last event (chat and completions)."""
    from omniloom.serve.errors import APIError, sse_error_event

    ev = sse_error_event(APIError(429, "busy"))
    assert ev.startswith("data: ") and ev.endswith("\n\n")
    body = json.loads(ev[6:])
    assert body["error"]["message"] == "busy" and body["error"]["type"] == "rate_limit_error"
    body = json.loads(sse_error_event(ValueError("the audio has no samples"))[6:])
    assert body["error"] == {"message": "the audio has no samples", "type": "invalid_request_error", "param": None,
                             "code": None}
