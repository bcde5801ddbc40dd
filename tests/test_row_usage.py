"""python -m omniloom.data.row_usage: the ids new data uses that old data never did."""

from __future__ import annotations

import json

from omniloom.data.row_usage import ids_only_in, main
from omniloom.data.shards import ShardSet, ShardWriter
from omniloom.tokens.vocab import Vocab


def _shards(path, docs, vocab):
    with ShardWriter(path, vocab, shard_tokens=1000) as w:
        for ids in docs:
            w.add(ids, [1] * len(ids))
    return ShardSet.open(path)


def test_ids_only_in_names_what_the_old_data_never_used(tmp_path, capsys):
    v = Vocab.build(text_size=50)
    old = _shards(tmp_path / "en", [[1, 2, 3], [3, 4, v.special("bos")]], v)
    new = _shards(tmp_path / "es", [[1, 7, 9], [9, 40, 4, v.special("eos")]], v)
    assert ids_only_in(new, old, below=50) == [7, 9, 40]
    assert ids_only_in(new, old) == [7, 9, 40, v.special("eos")]
    assert main([str(tmp_path / "es"), "--not-in", str(tmp_path / "en"), "--below", "50",
                 "--out", str(tmp_path / "rows.json")]) == 0
    assert json.loads((tmp_path / "rows.json").read_text()) == [7, 9, 40]
    assert "3 ids used by" in capsys.readouterr().out
    other = _shards(tmp_path / "x", [[1, 2]], Vocab.build(text_size=60))
    assert main([str(tmp_path / "x"), "--not-in", str(tmp_path / "en")]) == 2
    assert "different vocabularies" in capsys.readouterr().err
    del other
