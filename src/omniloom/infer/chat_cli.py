"""Talk to a model: one-shot (a prompt on the command line) or interactive (a prompt per line).

    omniloom chat --model runs/world/ckpt/step_0020000 "what is two plus three?"
    omniloom chat --model world --image scene.png "describe the image"
    omniloom chat --model world --audio question.wav --speak --voice nova
    omniloom chat --model world --draw "draw a big red circle in the center"
    omniloom chat --model world --draw --best-of 8 --verifier runs/pref/verifier "draw a red star at the top"
    omniloom chat --model world --mesh out.stl "make a 3D model of a big cube"
    omniloom chat --model world --mesh-in shape.stl "describe the 3D model"

Text streams to the terminal as it is generated. Generated images are written as PNG and speech
as WAV under --out-dir, and their paths are printed; a 3D answer (--mesh FILE) is written to FILE
(.stl, .obj or .glb by its suffix) with whether the mesh is watertight. In interactive mode the
conversation is kept (media files attach to the next message); type /exit to leave, /reset to
start over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default=None, help="the message; without it, chat interactively")
    p.add_argument("--model", default="world", help="a bundled model name or a model/checkpoint directory")
    p.add_argument("--image", action="append", default=[], help="attach an image file (repeat)")
    p.add_argument("--audio", action="append", default=[], help="attach a speech/audio file (WAV/FLAC)")
    p.add_argument("--video", default=None, help="attach a video file (sampled at the codec's fps)")
    p.add_argument("--mesh-in", action="append", default=[], dest="mesh_in", metavar="FILE",
                   help="attach a 3D shape (.stl/.obj/.glb mesh or .npy voxels; repeat); needs a model with a 3D codec")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--speak", action="store_true", help="answer in speech (with its transcript)")
    out.add_argument("--draw", action="store_true", help="answer with an image")
    out.add_argument("--mesh", default=None, metavar="OUT",
                     help="answer with a 3D shape, written to OUT (.stl, .obj or .glb); needs a model with a 3D codec")
    p.add_argument("--voice", default=None, help="assistant voice for spoken answers (e.g. nova, atlas)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--task-tag", action="store_true",
                   help="put the task tag first in the conversation's first user turn: a model trained with gated "
                        "adapters on tagged data (tokenize --task-tag) answers it with its adapters, not as the "
                        "base (docs/graft.md)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default; with --best-of: 1)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance for images (>1 on; default: the model's generation.json, else 1)")
    p.add_argument("--image-candidates", type=int, default=None, metavar="N",
                   help="draw up to N images for a drawing request and keep the one the model itself captions "
                        "closest to the request (best-of-N search; 1 off; default: the model's generation.json, "
                        "else 1; the bundled world model says 16 with guidance 2)")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="sample N answers and keep the one the learned verifier scores highest (1 off; needs "
                        "--verifier or a model directory holding one; see docs/preference.md)")
    p.add_argument("--verifier", default=None, metavar="DIR",
                   help="a verifier trained on this model (omniloom verifier train) for --best-of")
    p.add_argument("--out-dir", default="chat_out", help="where generated images and audio are written")
    p.add_argument("--int8", action="store_true", help="int8 weight-only quantization of the decoder (faster on a CPU)")
    p.add_argument("--backend", choices=["torch", "llama.cpp"], default="torch",
                   help="who decodes the tokens: torch (default) or llama.cpp through llama-cpp-python (optional, "
                        "not installed with omniloom), with omniloom's sampling, span grammar and stop rules")
    p.add_argument("--gguf", default=None, metavar="FILE",
                   help="--backend llama.cpp: this model's `export --format gguf` file (default: export one now)")
    p.add_argument("--gguf-type", choices=["f16", "q8_0", "f32"], default="q8_0", dest="gguf_type",
                   help="--backend llama.cpp without --gguf: the weights' type of the export (default q8_0)")


def _user_message(text: str | None, images, audios, video, meshes=()) -> dict:
    parts: list[dict] = []
    for f in images:
        parts.append({"type": "image", "path": str(Path(f).resolve())})
    for f in meshes:
        parts.append({"type": "mesh", "path": str(Path(f).resolve())})
    if video:
        parts.append({"type": "video", "path": str(Path(video).resolve())})
    for f in audios:
        parts.append({"type": "audio", "path": str(Path(f).resolve())})
    if text:
        parts.append({"type": "text", "text": text})
    if not parts:
        raise ValueError("nothing to send: give a prompt or a media file")
    for part in parts:
        if "path" in part and not Path(part["path"]).is_file():
            raise ValueError(f"{part['type']} file {part['path']} does not exist")
    return {"role": "user", "content": parts}


def _tagged(messages: list[dict], args) -> list[dict]:
    """``messages`` with the task tag first in the first user turn when ``--task-tag`` asks for it."""
    from ..tokens import with_task_tag

    return with_task_tag(messages) if getattr(args, "task_tag", False) else messages


def _answer(omni, messages, args, out_dir: Path, turn: int) -> dict:
    import numpy as np

    from .generate import AudioChunk, Done, ImageOut, MeshOut, TextDelta, TranscriptDelta, generate
    from .grammar import OUTPUTS
    from .sampling import SamplingParams

    temperature = args.temperature if args.temperature is not None else (1.0 if args.best_of > 1 else 0.0)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    modality = "audio" if args.speak else "image" if args.draw else "mesh" if args.mesh else None
    text, transcript, audio, images, meshes = [], [], [], [], []
    done = None
    cfg_scale, candidates = omni.image_options(args.cfg_scale, args.image_candidates)
    outputs = ("audio",) if args.speak else OUTPUTS  # --speak: a spoken answer (about an image: via text)
    if args.best_of > 1:  # the verifier picks among N direct answers (no caption search, no via-text speech)
        from .best_of import generate_best_of

        events = generate_best_of(omni, args.verifier_loaded, messages, args.best_of, modality, outputs, args.voice,
                                  sampling, cfg_scale if modality == "image" else 1.0)
    else:
        events = generate(omni, messages, output_modality=modality, outputs=outputs, voice=args.voice,
                          sampling=sampling, cfg_scale=cfg_scale, image_candidates=candidates)
    for ev in events:
        if isinstance(ev, TextDelta):
            text.append(ev.text)
            print(ev.text, end="", flush=True)
        elif isinstance(ev, TranscriptDelta):
            transcript.append(ev.text)
            print(ev.text, end="", flush=True)
        elif isinstance(ev, AudioChunk):
            audio.append(ev)
        elif isinstance(ev, ImageOut):
            images.append(ev)
        elif isinstance(ev, MeshOut):
            meshes.append(ev)
        elif isinstance(ev, Done):
            done = ev
    print()
    for w in (done.warnings if done is not None else []):
        print(f"warning: {w}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    content: list[dict] = []
    if text:
        content.append({"type": "text", "text": "".join(text)})
    for k, im in enumerate(images):
        if im.image.size == 0:
            print(f"[image: {len(im.codes)} codes, but this model has no image codec to draw them]")
            continue
        from PIL import Image

        path = out_dir / f"turn{turn:02d}_image{k}.png"
        Image.fromarray(im.image).save(path)
        print(f"[image written to {path}]")
        content.append({"type": "image", "path": str(path.resolve())})
    for k, mesh in enumerate(meshes):
        path = _mesh_path(args.mesh or str(out_dir / "shape.stl"), turn, k)
        if _write_mesh(mesh, path):
            content.append({"type": "mesh", "path": str(path.resolve())})
    if audio:
        import soundfile as sf

        pcm = np.concatenate([a.pcm for a in audio])
        path = out_dir / f"turn{turn:02d}_speech.wav"
        sf.write(path, pcm, audio[0].sample_rate)
        print(f"[speech ({len(pcm) / audio[0].sample_rate:.2f} s, voice {audio[0].voice}) written to {path}]")
        content.append({"type": "audio", "path": str(path.resolve()), "voice": audio[0].voice,
                        "transcript": "".join(transcript) or None})
    if done is not None:
        u = done.usage
        print(f"[{done.finish_reason}; tokens: prompt {u['prompt_tokens']}, answer {u['completion_tokens']} "
              f"(text {u['text_tokens']}, audio {u['audio_tokens']}, image {u['image_tokens']}"
              + (f", mesh {u['mesh_tokens']}" if u.get("mesh_tokens") else "") + ")"
              + (f"; image chosen from {u['image_candidates']} candidates" if "image_candidates" in u else "") + "]",
              file=sys.stderr)
        if done.best_of:
            b = done.best_of
            print(f"[best of {b['n']} by the verifier: candidate {b['chosen']} (scores "
                  f"{', '.join(f'{x:.2f}' for x in b['scores'])}); {b['seconds']:.2f} s, of which sampling "
                  f"{b['sample_s']:.2f} s and verifying {b['verify_s']:.2f} s]", file=sys.stderr)
    return {"role": "assistant", "content": content or ""}


def _mesh_path(out: str, turn: int, k: int) -> Path:
    """Where the ``k``-th shape of ``turn`` goes: ``out`` itself for the first shape of the first
    turn, else ``out`` with ``_turnTT_K`` before its suffix (an interactive chat keeps every turn's)."""
    p = Path(out)
    return p if (turn, k) == (0, 0) else p.with_name(f"{p.stem}_turn{turn:02d}_{k}{p.suffix}")


def _write_mesh(mesh, path: Path) -> bool:
    """Write a decoded 3D answer; print where and whether trimesh finds the written mesh watertight."""
    if mesh.voxels.size == 0:
        print(f"[3D shape: {len(mesh.codes)} codes, but this model has no 3D codec to build them]")
        return False
    if not mesh.voxels.any():
        print("[3D shape: the model drew an empty shape (no voxel filled); nothing written]")
        return False
    import trimesh

    from ..codecs.mesh import write_mesh

    path.parent.mkdir(parents=True, exist_ok=True)
    write_mesh(mesh.voxels, path)
    loaded = trimesh.load(path, force="mesh")
    print(f"[3D shape ({int(mesh.voxels.sum())} of {mesh.voxels.size} voxels, {len(loaded.faces)} faces, "
          f"{'watertight' if loaded.is_watertight else 'NOT watertight'}) written to {path}]")
    return True


def _check_mesh_support(omni, args: argparse.Namespace) -> None:
    """A clear error before any work when a 3D answer or input is asked of a model without a 3D codec."""
    from ..codecs.mesh import MESH_SUFFIXES

    if args.mesh and Path(args.mesh).suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"--mesh {args.mesh}: the file must end in {', '.join(MESH_SUFFIXES)}")
    if not (args.mesh or args.mesh_in):
        return
    missing = [what for what, ok in (("a mesh range in its vocab.json", omni.vocab.mesh_tokens > 0),
                                     ("a \"mesh\" codec in its codecs.json", "mesh" in omni.codecs)) if not ok]
    if missing:
        raise ValueError(f"this model has no 3D codec: {args.model} lacks {' and '.join(missing)} "
                         f"(--mesh and --mesh-in need a model trained with a mesh codec)")


def run(args: argparse.Namespace) -> int:
    from .generate import OmniModel

    if args.best_of < 1:
        raise ValueError(f"--best-of must be >= 1, got {args.best_of}")
    if args.best_of > 1 and args.mesh:
        raise ValueError("--best-of does not apply to 3D answers (--mesh): the verifier judges text, images and speech")
    omni = OmniModel.load(args.model, int8=args.int8)
    _check_mesh_support(omni, args)
    args.verifier_loaded = None
    if args.best_of > 1:
        from ..utils.model_dir import resolve_model_dir
        from .best_of import Verifier

        model_dir = resolve_model_dir(args.model)
        where = args.verifier or model_dir
        if args.verifier is None and not (model_dir / "verifier.json").is_file():
            raise ValueError("--best-of needs a verifier: give --verifier DIR (made by `omniloom verifier train`)")
        args.verifier_loaded = Verifier.load(where, model_dir)
    elif args.verifier:
        raise ValueError("--verifier is used by --best-of N (N > 1)")
    if args.backend == "llama.cpp":
        from .llamacpp_backend import use_llama_cpp

        use_llama_cpp(omni, gguf=args.gguf, gguf_type=args.gguf_type)
    out_dir = Path(args.out_dir)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None or args.image or args.audio or args.video or args.mesh_in:
        messages.append(_user_message(args.prompt, args.image, args.audio, args.video, args.mesh_in))
        _answer(omni, _tagged(messages, args), args, out_dir, 0)
        return 0
    print("omniloom chat: type a message (/exit to leave, /reset to start over, "
          "/image PATH, /audio PATH or /mesh PATH to attach to the next message)")
    pending_images, pending_audio, pending_meshes, turn = [], [], [], 0
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if line.startswith(("/image ", "/audio ", "/mesh ")):
            kind, path = line.split(" ", 1)
            if not Path(path).is_file():
                print(f"no such file: {path}")
                continue
            {"/image": pending_images, "/audio": pending_audio, "/mesh": pending_meshes}[kind].append(path)
            continue
        if not line and not pending_images and not pending_audio and not pending_meshes:
            continue
        try:
            messages.append(_user_message(line or None, pending_images, pending_audio, None, pending_meshes))
        except ValueError as e:
            print(f"error: {e}")
            continue
        pending_images, pending_audio, pending_meshes = [], [], []
        messages.append(_answer(omni, _tagged(messages, args), args, out_dir, turn))
        turn += 1
