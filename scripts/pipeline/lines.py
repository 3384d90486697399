"""What a valid JSONL document line is: the one verdict merge (VALIDATE=1) and tokenize share.

A line is valid when it is strict UTF-8, parses with json.loads (what Megatron's preprocess_data.py
does) to an object, and holds a string under every key, each encodable as UTF-8 (JSON may spell a
lone surrogate, "\\ud800", that no tokenizer can take). So a merged file that passed VALIDATE=1 is
never refused by tokenize, and the reasons both print are the same.
"""
from __future__ import annotations

import json
from typing import Any

BAD_KINDS = ("invalid_json", "missing_key", "non_string", "invalid_utf8")


class BadLine(Exception):
    """Why a line is not a document; `kind` is one of BAD_KINDS (how skipped lines are counted)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadLine("invalid_utf8", f"text holds an unpaired surrogate at character {exc.start} "
                                      "(valid JSON, not encodable as UTF-8)") from None


def texts_of(record: Any, keys: tuple[str, ...], check_utf8: bool = True) -> list[str]:
    """The strings under `keys` of a parsed line (check_utf8=False only where a later step checks)."""
    if not isinstance(record, dict):
        raise BadLine("invalid_json", f"expected a JSON object, got {type(record).__name__}")
    texts = []
    for key in keys:
        if key not in record:
            raise BadLine("missing_key", f"no key {key!r}")
        value = record[key]
        if not isinstance(value, str):
            raise BadLine("non_string", f"key {key!r} holds {type(value).__name__}, not a string")
        if check_utf8:
            check_encodable(value)
        texts.append(value)
    return texts


def std_loads(raw: bytes) -> Any:
    """Megatron's parse: the line decoded as UTF-8 (strict), then json.loads."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(line)
    except ValueError as exc:
        raise BadLine("invalid_json", f"invalid JSON: {exc}") from None


try:
    # orjson parses twice as fast; it accepts a subset of what json.loads accepts (strict UTF-8, no
    # NaN, no lone surrogates), with the same strings, so anything it refuses goes to std_loads and
    # the accepted lines, their texts and every error stay exactly those of the standard library
    from orjson import loads as fast_loads
except ImportError:  # pragma: no cover - orjson is optional
    fast_loads = std_loads


def parse_line(raw: bytes, keys: tuple[str, ...] = ("text",), check_utf8: bool = True) -> list[str]:
    """The texts of one line (without its newline); raises BadLine."""
    try:
        record = fast_loads(raw)
    except Exception:  # noqa: BLE001  any refusal: the standard library decides
        record = std_loads(raw)
    return texts_of(record, keys, check_utf8)


def line_problem(raw: bytes, keys: tuple[str, ...] = ("text",)) -> BadLine | None:
    """None when the line is a valid document, else why not."""
    try:
        parse_line(raw, keys)
    except BadLine as exc:
        return exc
    return None
