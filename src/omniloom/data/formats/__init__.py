"""The readers of ``omniloom tokenize --format NAME`` beyond message JSONL, one module per format.

``omniloom.data.readers`` registers them (``FORMATS``) and detects them (``detect_format``); every
reader follows its contract: ``reader(path, **options)`` yields ``(where, messages)``.
"""
