"""Load test of `omniloom serve`: N concurrent chat streams and M concurrent Realtime voice sessions.

Each realtime session speaks an eSpeak question (pcm16 24 kHz, sent at real-time pace), lets server_vad
find the turn, and measures the spoken answer: latency from speech end to first audio, and the
real-time factor (generation time / audio duration; < 1 is faster than real time). Chat streams
measure time to first token and token throughput.

  python bench/serve_load.py --chat 4 --realtime 4              # in-process server, tiny random model
  python bench/serve_load.py --model-dir world --int8 --compile --chat 0 --realtime 4   # reference model
  python bench/serve_load.py --url http://127.0.0.1:8000 --model world --realtime 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time

import numpy as np


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


async def chat_stream(client, model, max_tokens):
    t0 = time.perf_counter()
    first, n = None, 0
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                                  max_tokens=max_tokens, stream=True,
                                                  stream_options={"include_usage": True})
    async for ch in stream:
        if ch.choices and ch.choices[0].delta.content and first is None:
            first = time.perf_counter() - t0
        if ch.usage:
            n = ch.usage.completion_tokens
    return {"ttft": first if first is not None else time.perf_counter() - t0, "total": time.perf_counter() - t0,
            "tokens": n}


async def voice_session(client, model, speech24, max_tokens, pace):
    async with client.realtime.connect(model=model) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"],
                                           "max_output_tokens": max_tokens})
        pcm = np.concatenate([np.zeros(7200, np.float32), speech24, np.zeros(24000, np.float32)])
        b = (pcm * 32767).astype("<i2").tobytes()
        chunk = 4800  # 100 ms

        async def sender():
            for i in range(0, len(b), chunk):
                await conn.input_audio_buffer.append(audio=base64.b64encode(b[i:i + chunk]).decode())
                if pace:
                    await asyncio.sleep(0.1)

        send_task = asyncio.create_task(sender())
        stopped = created = first_audio = None
        audio_bytes = 0
        async for ev in conn:
            now = time.perf_counter()
            if ev.type == "input_audio_buffer.speech_stopped":
                stopped = now
            elif ev.type == "response.created":
                created = now
            elif ev.type == "response.output_audio.delta":
                audio_bytes += len(base64.b64decode(ev.delta))
                first_audio = first_audio or now
            elif ev.type == "response.done":
                done = now
                break
        await send_task
    secs = audio_bytes / 2 / 24000
    gen = done - created
    return {"first_audio": (first_audio or done) - (stopped or created), "gen_s": gen, "audio_s": secs,
            "rtf": gen / secs if secs else float("inf")}


async def main_async(args, url):
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=args.api_key or "none", max_retries=0, timeout=300)
    speech24 = None
    if args.realtime:
        import soxr

        from omniloom.world.speech import ASSISTANT_VOICES, synthesize

        speech24 = soxr.resample(synthesize("how many shapes are in the picture", ASSISTANT_VOICES["atlas"]),
                                 16000, 24000).astype(np.float32)
    t0 = time.perf_counter()
    tasks = [chat_stream(client, args.model, args.max_tokens) for _ in range(args.chat)]
    tasks += [voice_session(client, args.model, speech24, args.voice_tokens, not args.no_pace)
              for _ in range(args.realtime)]
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    chats, voices = results[:args.chat], results[args.chat:]
    report = {"wall_s": round(wall, 2), "chat_streams": args.chat, "realtime_sessions": args.realtime}
    if chats:
        toks = sum(r["tokens"] for r in chats)
        report["chat"] = {"tokens_per_s": round(toks / wall, 1),
                          "ttft_p50_s": round(pct([r["ttft"] for r in chats], 50), 3),
                          "ttft_p99_s": round(pct([r["ttft"] for r in chats], 99), 3),
                          "total_p50_s": round(pct([r["total"] for r in chats], 50), 3),
                          "total_p99_s": round(pct([r["total"] for r in chats], 99), 3)}
    if voices:
        rtf = [r["rtf"] for r in voices]
        report["realtime"] = {"first_audio_p50_s": round(pct([r["first_audio"] for r in voices], 50), 3),
                              "first_audio_p99_s": round(pct([r["first_audio"] for r in voices], 99), 3),
                              "rtf_p50": round(pct(rtf, 50), 3), "rtf_max": round(max(rtf), 3),
                              "audio_s_each": [round(r["audio_s"], 2) for r in voices],
                              "all_faster_than_real_time": all(x < 1 for x in rtf)}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one in-process)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--model-dir", default=None, help="in-process: serve this model dir (default: tiny random)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--chat", type=int, default=4)
    p.add_argument("--realtime", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--voice-tokens", type=int, default=100, help="tokens per spoken answer (25 = 1 s of audio)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-pace", action="store_true", help="send input audio as fast as possible")
    p.add_argument("--int8", action="store_true", help="in-process: int8 weight-only decoder (serve --int8)")
    p.add_argument("--compile", action="store_true", help="in-process: compiled decode step (serve --compile)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report to OUT")
    args = p.parse_args()
    if args.url:
        print(json.dumps(asyncio.run(main_async(args, args.url)), indent=2))
        return
    from omniloom.infer.generate import OmniModel
    from omniloom.serve import ServeSettings, create_app
    from omniloom.serve.testing import serve_in_thread
    from omniloom.serve.tiny import build_tiny_model

    omni = (OmniModel.load(args.model_dir, int8=args.int8, compile=args.compile) if args.model_dir
            else build_tiny_model())
    app = create_app(omni, ServeSettings(model_id=args.model, workers=args.workers,
                                         max_queue=args.chat + args.realtime + 4))
    with serve_in_thread(app) as url:
        report = asyncio.run(main_async(args, url))
    report["workers"] = args.workers
    report["setup"] = {"model": args.model_dir or "tiny", "int8": args.int8, "compile": args.compile}
    print(json.dumps(report, indent=2))
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
