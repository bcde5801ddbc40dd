"""The readers of `omniloom tokenize --format X` on small fixtures of real media (scikit-image photos,
pocketsphinx test speech), end to end into shards through the shipped codecs."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest

from omniloom.cli import main
from omniloom.data.readers import FORMATS, detect_format, read_documents
from omniloom.utils.model_dir import MODELS_DIR

TOK = MODELS_DIR / "world" / "tokenizer.json"
CARDS = Path("/usr/share/pocketsphinx/test/data/cards")


# -- fixtures: real photos and real speech --------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Three scikit-image photos, shrunk to at most 96 px, as png / jpg."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    out = {}
    for name, ext in (("astronaut", "png"), ("coffee", "jpg"), ("chelsea", "png")):
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        im.thumbnail((96, 96))
        im.save(d / f"{name}.{ext}")
        out[name] = d / f"{name}.{ext}"
    return out


@pytest.fixture(scope="module")
def speech() -> list[tuple[Path, str]]:
    """(wav, transcript) of Debian's pocketsphinx-testdata card-game recordings (16 kHz speech)."""
    listing = CARDS / "cards.transcription"
    if not listing.is_file():
        pytest.skip("needs Debian's pocketsphinx-testdata (apt-get install -y pocketsphinx-testdata)")
    out = []
    for line in listing.read_text().splitlines():
        m = re.fullmatch(r"<s>\s*(.*?)\s*</s>\s*\((\w+)\)", line.strip())
        if m and (CARDS / f"{m[2]}.wav").is_file():
            out.append((CARDS / f"{m[2]}.wav", m[1]))
    if len(out) < 3:
        pytest.skip(f"{listing} lists fewer than 3 recordings")
    return out


@pytest.fixture(scope="module")
def codecs():
    from omniloom.codecs import load_codec

    return {"image": load_codec("image-world"), "audio": load_codec("audio-world")}


def _flac(wav: Path, dest: Path) -> Path:
    import soundfile as sf

    x, sr = sf.read(wav)
    sf.write(dest, x, sr, format="FLAC")
    return dest


def _docs(path, fmt, **options) -> list[tuple[int, list]]:
    return list(read_documents(path, fmt, **options))


def _tokenize(tmp: Path, inputs: list[Path], *flags: str, mode: str = "sft"):
    """Run `omniloom tokenize` with the shipped codecs; (shard set, processor) for checking."""
    from omniloom.codecs.text import TextTokenizer
    from omniloom.data.shards import ShardSet
    from omniloom.tokens.vocab import Vocab

    out = tmp / "shards"
    args = ["tokenize", "--tokenizer", str(TOK), "--out", str(out), "--codec", "image-world", "--codec",
            "audio-world", "--mode", mode, "--cfg-drop", "0", "--workers", "1", "--no-progress", *flags]
    for p in inputs:
        args += ["--input", str(p)]
    assert main(args) == 0
    shards = ShardSet.open(out / "train")
    return shards, Vocab.load(out / "train" / "vocab.json"), TextTokenizer.load(TOK)


def _check_shards(shards, vocab, tok, codecs, documents: list[list], mode: str = "sft") -> None:
    """The shards hold exactly the reader's documents, encoded by the processor, in order."""
    from omniloom.processor import Processor

    proc = Processor(vocab, tok, codecs)
    assert shards.num_docs == len(documents)
    for d, messages in enumerate(documents):
        enc = proc.encode_messages(messages, mode=mode)
        ids, mask = shards.doc(d)
        assert ids.tolist() == enc.ids
        assert mask.tolist() == enc.loss_mask


def _segments(shards, vocab, tok, d: int):
    from omniloom.tokens.template import decode_ids

    return decode_ids(shards.doc(d)[0].tolist(), vocab, tok, strict=True)


# -- llava ----------------------------------------------------------------------------------------
def _llava(tmp: Path, photos: dict[str, Path], records: list | None = None) -> Path:
    records = records or [
        {"id": "a", "image": photos["astronaut"].name, "conversations": [
            {"from": "human", "value": "<image>\nWho is in the picture?"},
            {"from": "gpt", "value": "An astronaut in a white suit."},
            {"from": "human", "value": "Is there a flag?"}, {"from": "gpt", "value": "Yes, behind her."}]},
        {"id": "b", "image": photos["coffee"].name, "conversations": [
            {"from": "human", "value": "Look at this: <image> what drink is it?"},
            {"from": "gpt", "value": "A cup of coffee."}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Name a warm drink."},
                                      {"from": "gpt", "value": "Tea."}]},
        {"id": "d", "image": photos["chelsea"].name, "conversations": [
            {"from": "human", "value": "What animal is this?"}, {"from": "gpt", "value": "A cat."}]},
    ]
    path = tmp / "llava_instruct.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def test_llava_images_go_where_the_placeholders_are(tmp_path, photos):
    path = _llava(tmp_path, photos)
    docs = _docs(path, "llava", media_root=str(photos["astronaut"].parent))
    assert [w for w, _ in docs] == [1, 2, 3, 4]
    first = docs[0][1]
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant"]
    assert first[0]["content"] == [{"type": "image", "image": str(photos["astronaut"].resolve())},
                                   {"type": "text", "text": "Who is in the picture?"}]
    assert first[1]["content"] == [{"type": "text", "text": "An astronaut in a white suit."}]
    middle = docs[1][1][0]["content"]
    assert [p["type"] for p in middle] == ["text", "image", "text"]
    assert middle[1]["image"] == str(photos["coffee"].resolve()) and middle[2]["text"] == "what drink is it?"
    assert all(p["type"] == "text" for m in docs[2][1] for p in m["content"])  # no image: text only
    assert docs[3][1][0]["content"][0] == {"type": "image", "image": str(photos["chelsea"].resolve())}
    assert detect_format(path) == "llava"


def test_llava_errors_name_the_record_and_the_file(tmp_path, photos):
    path = _llava(tmp_path, photos, [
        {"id": "ok", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "gone", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image> what?"},
                                                                 {"from": "gpt", "value": "?"}]}])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: record 2 \(id 'gone'\).*missing\.jpg does not exist"):
        _docs(path, "llava", media_root=str(photos["astronaut"].parent))
    path.write_text(json.dumps([{"id": "x", "conversations": [{"from": "robot", "value": "beep"}]}]))
    with pytest.raises(ValueError, match=r"record 1 \(id 'x'\): turn 1 must be"):
        _docs(path, "llava")
    path.write_text(json.dumps([{"image": photos["coffee"].name, "conversations": [
        {"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "two"}]}]))
    with pytest.raises(ValueError, match=r"record 1: 2 <image> placeholder\(s\) but 1 image"):
        _docs(path, "llava", media_root=str(photos["coffee"].parent))
    path.write_text('[{"id": 1,\n "conversations": [}]')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        _docs(path, "llava")


def test_llava_end_to_end_into_shards(tmp_path, photos, codecs):
    path = _llava(tmp_path, photos)
    shards, vocab, tok = _tokenize(tmp_path, [path], "--image-root", str(photos["astronaut"].parent))  # detected
    _check_shards(shards, vocab, tok, codecs, [m for _, m in _docs(path, "llava", media_root=str(
        photos["astronaut"].parent))])
    segs = _segments(shards, vocab, tok, 0)
    assert [(s.role, s.modality) for s in segs[:3]] == [("user", "image"), ("user", "text"), ("assistant", "text")]
    assert segs[2].text == "An astronaut in a white suit."
    assert shards.manifest["input_format"] == "llava"


# -- librispeech ----------------------------------------------------------------------------------
def _librispeech(root: Path, speech: list[tuple[Path, str]]) -> list[tuple[Path, Path, str]]:
    """A LibriSpeech-shaped tree (two speakers) of the test speech as flac: (transcript file, flac, text)."""
    out = []
    for (speaker, chapter), items in (((19, 198), speech[:2]), ((26, 495), speech[2:3])):
        folder = root / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        trans = folder / f"{speaker}-{chapter}.trans.txt"
        lines = []
        for k, (wav, text) in enumerate(items):
            utt = f"{speaker}-{chapter}-{k:04d}"
            out.append((trans, _flac(wav, folder / f"{utt}.flac"), text.upper()))
            lines.append(f"{utt} {text.upper()}")
        trans.write_text("\n".join(lines) + "\n")
    return out


def test_librispeech_asr_tts_and_both(tmp_path, speech):
    utts = _librispeech(tmp_path / "LibriSpeech", speech)
    root = tmp_path / "LibriSpeech"
    asr = _docs(root, "librispeech")
    assert [w for w, _ in asr] == [1, 2, 3]
    for (where, messages), (_, flac, text) in zip(asr, utts):
        assert messages == [
            {"role": "user", "content": [{"type": "audio", "audio": str(flac.resolve())},
                                         {"type": "text", "text": "transcribe the audio"}]},
            {"role": "assistant", "content": [{"type": "text", "text": text}]}]
    tts = _docs(root, "librispeech", audio_task="tts", prompts={"speak": "read this aloud: {text}"}, tts_voice="reader")
    user, answer = tts[0][1]
    assert user["content"] == [{"type": "text", "text": f"read this aloud: {utts[0][2]}"}]
    assert answer["content"] == [{"type": "audio", "audio": str(utts[0][1].resolve()), "transcript": utts[0][2],
                                  "voice": "reader"}]
    both = _docs(root, "librispeech", audio_task="both")
    assert [w for w, _ in both] == [1, 1, 2, 2, 3, 3]
    assert detect_format(root) == "librispeech" and detect_format(utts[0][0]) == "librispeech"
    for text in ("read it", "{text} please"):  # speak needs {text}; transcribe must not hold it (its answer)
        with pytest.raises(ValueError, match="--prompt"):
            _docs(root, "librispeech", prompts={"speak" if "{" not in text else "transcribe": text})


def test_librispeech_errors_name_file_and_line(tmp_path, speech):
    utts = _librispeech(tmp_path / "ls", speech)
    trans = utts[0][0]
    trans.write_text(trans.read_text() + "19-198-0009 A LINE WITH NO AUDIO\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(trans))}:3: no audio file for utterance 19-198-0009"):
        _docs(tmp_path / "ls", "librispeech")
    trans.write_text(trans.read_text().replace("19-198-0009 A LINE WITH NO AUDIO", "19-198-0001"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(trans))}:3: expected \"UTTERANCE-ID TRANSCRIPT\""):
        _docs(tmp_path / "ls", "librispeech")


def test_librispeech_end_to_end_both_directions(tmp_path, speech, codecs):
    utts = _librispeech(tmp_path / "ls", speech)
    shards, vocab, tok = _tokenize(tmp_path, [tmp_path / "ls"], "--audio-task", "both")
    _check_shards(shards, vocab, tok, codecs, [m for _, m in _docs(tmp_path / "ls", "librispeech", audio_task="both")])
    asr, tts = _segments(shards, vocab, tok, 0), _segments(shards, vocab, tok, 1)
    assert [(s.role, s.modality) for s in asr] == [("user", "audio"), ("user", "text"), ("assistant", "text")]
    assert asr[2].text == utts[0][2]
    assert [(s.role, s.modality) for s in tts] == [("user", "text"), ("assistant", "audio")]
    assert tts[1].transcript == utts[0][2] and len(tts[1].codes) > 10  # about 25 frames a second of speech


# -- webdataset -----------------------------------------------------------------------------------
def _tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _wds(tmp: Path, photos, speech) -> tuple[Path, dict]:
    flac = _flac(speech[0][0], tmp / "s0.flac").read_bytes()
    png, jpg = photos["astronaut"].read_bytes(), photos["coffee"].read_bytes()
    chat = {"messages": [{"role": "user", "content": [{"type": "image", "image": "jpg"},
                                                      {"type": "text", "text": "what is in the cup?"}]},
                         {"role": "assistant", "content": "coffee"}]}
    shards = tmp / "wds"
    shards.mkdir()
    _tar(shards / "shard-000000.tar", [
        ("000000", {"png": png, "txt": b"an astronaut with a flag\n"}),
        ("000001", {"flac": flac, "txt": speech[0][1].encode()}),
    ])
    _tar(shards / "shard-000001.tar", [
        ("000002", {"jpg": jpg, "json": json.dumps(chat).encode()}),
        ("000003", {"jpg": jpg, "txt": b"a cup of coffee", "json": b'{"url": "http://x/y.jpg", "width": 96}'}),
    ])
    return shards, {"png": png, "jpg": jpg, "flac": flac}


def test_webdataset_groups_samples_by_key_with_media_bytes(tmp_path, photos, speech):
    shards, raw = _wds(tmp_path, photos, speech)
    docs = _docs(shards, "webdataset")
    assert [w for w, _ in docs] == [1, 2, 3, 4]
    caption, asr, chat, laion = (m for _, m in docs)
    assert caption[0]["content"][0] == {"type": "image", "image": raw["png"]}
    assert caption[1]["content"] == [{"type": "text", "text": "an astronaut with a flag"}]
    assert asr[0]["content"][0] == {"type": "audio", "audio": raw["flac"]}
    assert asr[1]["content"] == [{"type": "text", "text": speech[0][1]}]
    assert chat[0]["content"][0] == {"type": "image", "image": raw["jpg"]}  # the json's "jpg" got the bytes
    assert chat[1] == {"role": "assistant", "content": "coffee"}
    assert laion[1]["content"][0]["text"] == "a cup of coffee"  # a metadata json is ignored
    one = _docs(shards / "shard-000001.tar", "webdataset", image_task="draw")  # a single shard; draw
    assert one[0][1] == chat and one[1][1][1]["content"] == [{"type": "image", "image": raw["jpg"]}]
    assert _docs(str(shards / "shard-*.tar"), "webdataset") == docs  # a glob
    assert detect_format(shards) == detect_format(shards / "shard-000000.tar") == "webdataset"
    assert detect_format(str(shards / "*.tar")) == "webdataset"


def test_webdataset_bad_samples_name_the_shard_and_key(tmp_path, photos):
    tar = _tar(tmp_path / "bad.tar", [("a", {"png": photos["astronaut"].read_bytes(), "txt": b"ok"}),
                                      ("b", {"png": photos["astronaut"].read_bytes()})])
    with pytest.raises(ValueError, match=rf"{re.escape(str(tar))}: sample 2 \(key 'b'\): needs one \.txt"):
        _docs(tar, "webdataset")
    tar = _tar(tmp_path / "bad2.tar", [("c", {"json": b'{"messages": [{"role": "user", "content": '
                                                     b'[{"type": "image", "image": "png"}]}]}'})])
    with pytest.raises(ValueError, match=r"sample 1 \(key 'c'\) \.json: message 0 part 0: image 'png' is not a file"):
        _docs(tar, "webdataset")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match="junk.tar"):
        _docs(tmp_path / "junk.tar", "webdataset")


def test_webdataset_end_to_end_bytes_encode_like_the_files(tmp_path, photos, speech, codecs):
    shards_dir, _ = _wds(tmp_path, photos, speech)
    shards, vocab, tok = _tokenize(tmp_path, [shards_dir / "shard-*.tar"], "--format", "webdataset")
    docs = [m for _, m in _docs(shards_dir, "webdataset")]
    _check_shards(shards, vocab, tok, codecs, docs)
    # the processor reads in-memory bytes as it reads the file they came from
    by_path = [{"role": "user", "content": [{"type": "image", "image": str(photos["astronaut"])},
                                            {"type": "text", "text": "describe the image"}]},
               {"role": "assistant", "content": "an astronaut with a flag"}]
    from omniloom.processor import Processor

    assert shards.doc(0)[0].tolist() == Processor(vocab, tok, codecs).encode_messages(by_path).ids


# -- hf -------------------------------------------------------------------------------------------
def _hf(tmp: Path, photos, speech):
    """A save_to_disk folder of captioned photos, a parquet file of speech, a TRL-style chat set."""
    datasets = pytest.importorskip("datasets")
    pics = datasets.Dataset.from_dict({
        "img": [{"bytes": photos[n].read_bytes(), "path": None} for n in ("astronaut", "coffee")],
        "caption": ["an astronaut", "a cup of coffee"], "url": ["http://a", "http://b"]})
    pics = pics.cast_column("img", datasets.Image())
    pics.save_to_disk(str(tmp / "pics"))
    talk = datasets.Dataset.from_dict({
        "audio": [{"bytes": _flac(w, tmp / f"{k}.flac").read_bytes(), "path": None} for k, (w, _) in
                  enumerate(speech[:2])],
        "sentence": [t for _, t in speech[:2]], "id": [1, 2]})
    talk = talk.cast_column("audio", datasets.Audio(sampling_rate=16000))
    talk.to_parquet(str(tmp / "talk.parquet"))
    chat = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what animal?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}]],
        "images": [[{"bytes": photos["chelsea"].read_bytes(), "path": None}]]})
    chat.cast_column("images", datasets.List(datasets.Image())).save_to_disk(str(tmp / "chat"))
    datasets.DatasetDict({"train": pics, "test": pics}).save_to_disk(str(tmp / "dict"))
    return tmp / "pics", tmp / "talk.parquet", tmp / "chat"


def test_hf_reads_features_and_columns(tmp_path, photos, speech):
    pics, talk, chat = _hf(tmp_path, photos, speech)
    docs = _docs(pics, "hf")
    assert [w for w, _ in docs] == [1, 2]
    assert docs[1][1][0]["content"][0] == {"type": "image", "image": photos["coffee"].read_bytes()}
    assert docs[1][1][1]["content"] == [{"type": "text", "text": "a cup of coffee"}]
    mapped = _docs(pics, "hf", columns={"image": "img", "text": "url"}, image_task="draw")
    assert mapped[0][1][0]["content"] == [{"type": "text", "text": "draw http://a"}]
    spoken = _docs(talk, "hf")
    assert spoken[1][1][0]["content"][0]["audio"][:4] == b"fLaC"
    assert spoken[1][1][1]["content"] == [{"type": "text", "text": speech[1][1]}]
    (cat,) = [m for _, m in _docs(chat, "hf")]
    assert cat[0]["content"] == [{"type": "image", "image": photos["chelsea"].read_bytes()},
                                 {"type": "text", "text": "what animal?"}]
    assert detect_format(pics) == detect_format(talk) == detect_format(chat) == "hf"
    with pytest.raises(ValueError, match=r"is a DatasetDict \(splits: test, train\); pass one split's folder"):
        _docs(tmp_path / "dict", "hf")
    with pytest.raises(ValueError, match=r"--column text=nope: no such column \(columns: img \(Image\), caption"):
        _docs(pics, "hf", columns={"image": "img", "text": "nope"})


def test_hf_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"--format hf needs pyarrow: pip install 'omniloom\[data\]'"):
        _docs(tmp_path / "x.parquet", "hf")


def test_hf_end_to_end(tmp_path, photos, speech, codecs):
    pics, talk, _ = _hf(tmp_path, photos, speech)
    shards, vocab, tok = _tokenize(tmp_path, [talk], "--audio-task", "tts")
    _check_shards(shards, vocab, tok, codecs, [m for _, m in _docs(talk, "hf", audio_task="tts")])
    segs = _segments(shards, vocab, tok, 1)
    assert segs[1].modality == "audio" and segs[1].transcript == speech[1][1]


# -- interleaved ----------------------------------------------------------------------------------
def _interleaved(tmp: Path, photos) -> Path:
    obelics = {"texts": ["Our trip to space.", None, "The suit is heavy.", "It is white."],
               "images": [None, photos["astronaut"].name, None, None], "metadata": "{}"}
    mmc4 = {"text_list": ["Morning starts here.", "Fresh coffee.", "Then work."],
            "image_info": [{"image_name": photos["coffee"].name, "matched_text_index": 1, "matched_sim": 0.3}]}
    url = {"texts": [None, "A cat by the window."],
           "images": [f"https://example.com/pics/{photos['chelsea'].name}?w=640", None]}
    path = tmp / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in (obelics, mmc4, url)) + "\n")
    return path


def test_interleaved_obelics_and_mmc4_documents(tmp_path, photos):
    path = _interleaved(tmp_path, photos)
    docs = _docs(path, "interleaved", media_root=str(photos["astronaut"].parent))
    assert [w for w, _ in docs] == [1, 2, 3]
    assert all(len(m) == 1 and m[0]["role"] == "assistant" for _, m in docs)
    assert docs[0][1][0]["content"] == [
        {"type": "text", "text": "Our trip to space."},
        {"type": "image", "image": str(photos["astronaut"].resolve())},
        {"type": "text", "text": "The suit is heavy.\n\nIt is white."}]
    assert docs[1][1][0]["content"] == [
        {"type": "text", "text": "Morning starts here."},
        {"type": "image", "image": str(photos["coffee"].resolve())},
        {"type": "text", "text": "Fresh coffee. Then work."}]
    assert docs[2][1][0]["content"][0] == {"type": "image", "image": str(photos["chelsea"].resolve())}  # by URL name
    assert detect_format(path) == "interleaved"
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:1: position 1: image file .*astronaut\.png "
                                         "does not exist"):
        _docs(path, "interleaved")  # the images are not beside the JSONL file


def test_interleaved_end_to_end_learns_the_whole_document(tmp_path, photos, codecs):
    path = _interleaved(tmp_path, photos)
    root = str(photos["astronaut"].parent)
    shards, vocab, tok = _tokenize(tmp_path, [path], "--image-root", root, mode="pretrain")
    _check_shards(shards, vocab, tok, codecs, [m for _, m in _docs(path, "interleaved", media_root=root)],
                  mode="pretrain")
    assert all(shards.doc(d)[1].all() for d in range(shards.num_docs))
    segs = _segments(shards, vocab, tok, 0)
    assert [s.modality for s in segs] == ["text", "image", "text"] and segs[2].text.endswith("It is white.")


# -- detection and the command line ---------------------------------------------------------------
def test_detection_and_its_refusals(tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert detect_format(chats) == "messages"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{oops\n")
    assert detect_format(broken) == "messages"  # the reader then names line 1
    lines = tmp_path / "chats.txt"
    lines.write_text(chats.read_text())
    assert detect_format(lines) == "messages"
    for name, text in (("table.csv", "a,b\n1,2\n"), ("list.json", '[{"text": "no conversations"}]')):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match="cannot tell the format of .*; pass --format"):
            detect_format(tmp_path / name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="pass --format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        detect_format(tmp_path / "nowhere")


def test_cli_refuses_options_a_format_does_not_use_and_mixed_formats(tmp_path, capsys, photos):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    base = ["tokenize", "--tokenizer", str(TOK), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--input", str(chats), "--column", "image=img"]) == 2
    assert "--format messages does not use --column" in capsys.readouterr().err
    assert main([*base, "--input", str(chats), "--input", str(_llava(tmp_path, photos))]) == 2
    assert "different formats" in capsys.readouterr().err
    assert main([*base, "--input", str(chats), "--format", "llava", "--prompt", "caption"]) == 2
    assert "--prompt takes TASK=TEXT" in capsys.readouterr().err
    assert main([*base, "--input", str(tmp_path / "*.tar")]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert not (tmp_path / "o" / "train" / "manifest.json").exists()


def test_help_names_every_format(capsys):
    with pytest.raises(SystemExit):
        main(["tokenize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in FORMATS)



def test_messages_shards_are_the_same_detected_named_or_through_the_api(tmp_path):
    """`--format messages`, no --format, and tokenize_files' defaults write identical shards."""
    from omniloom.data.tokenize import tokenize_files

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"what is {i} and {i}?"},
                                                      {"role": "assistant", "content": f"{2 * i}"}]}) + "\n"
                             for i in range(12)))
    tokenize_files([chats], TOK, tmp_path / "api", val_fraction=0.25, progress=False)
    for name, flags in (("named", ["--format", "messages"]), ("detected", [])):
        assert main(["tokenize", "--input", str(chats), "--tokenizer", str(TOK), "--out", str(tmp_path / name),
                     "--val-fraction", "0.25", "--cfg-drop", "0", "--workers", "1", "--no-progress", *flags]) == 0
    for split in ("train", "val"):
        api, named, detected = (json.loads((tmp_path / d / split / "manifest.json").read_text())
                                for d in ("api", "named", "detected"))
        assert api["shards"] == named["shards"] == detected["shards"] and api["total_docs"] > 0
        assert api["input_format"] == named["input_format"] == detected["input_format"] == "messages"
