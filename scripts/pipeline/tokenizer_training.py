"""Train a small SentencePiece model from JSONL or text files (for the demo, tests and benchmarks).

The model has the LLM-jp layout: unigram, <unk>=0, <s>=1 (BOS), </s>=2 (EOS), no pad, byte
fallback (any text encodes without <unk>). Training is single-threaded with a fixed seed, so the
same texts give the same model bytes; the model is written atomically.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.atomic import atomic_output
from pipeline.errors import fail

MAX_SENTENCE_BYTES = 4096   # longer lines are cut (SentencePiece drops lines over its own limit)


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import zstandard
        raw = open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_texts(paths: Iterable[Path], key: str = "text", max_documents: int = 0) -> Iterator[str]:
    """The `key` of every JSON line of .jsonl(.gz/.zst) files, and every line of other files."""
    count = 0
    for path in paths:
        is_json = ".json" in path.name
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if is_json:
                    try:
                        text = json.loads(line)[key]
                    except (ValueError, KeyError, TypeError) as exc:
                        fail(f"{path}:{lineno}: cannot read {key!r} ({type(exc).__name__}: {exc})")
                    if not isinstance(text, str):
                        fail(f"{path}:{lineno}: {key!r} is not a string")
                else:
                    text = line.rstrip("\n")
                yield text
                count += 1
                if max_documents and count >= max_documents:
                    return


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            line = line.strip()
            if line:
                yield line.encode("utf-8")[:MAX_SENTENCE_BYTES].decode("utf-8", "ignore")


def train_sentencepiece(inputs: Iterable[Path] | None, output: Path, vocab_size: int = 1000, *,
                        texts: Iterable[str] | None = None, key: str = "text", max_documents: int = 0,
                        seed: int = 0) -> Path:
    """Train on `inputs` (files) or `texts`; writes `output` (a .model file) and returns its path."""
    import sentencepiece as spm
    output = Path(output)
    if output.suffix != ".model":
        output = output.with_name(output.name + ".model")
    source = texts if texts is not None else iter_texts([Path(p) for p in inputs or []], key, max_documents)
    sentences = list(_sentences(source))
    if not sentences:
        fail(f"{output}: no text to train a tokenizer on")
    # every character is kept (character_coverage 1.0) and needs a piece, beside <unk> <s> </s> and
    # the 256 byte pieces: a small text with many scripts needs more than a tiny vocabulary
    characters = set().union(*map(set, sentences))
    vocab_size = max(vocab_size, len(characters) + 3 + 256 + 1)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type="unigram",
            vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
            split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
            input_sentence_size=0, shuffle_input_sentence=False)
    except RuntimeError as exc:
        fail(f"{output}: SentencePiece training failed: {exc}")
    with atomic_output(output) as handle:
        handle.write(model.getvalue())
    return output


def grow_vocabulary(model: Path, output: Path, size: int) -> Path:
    """Copy of `model` with unused pieces appended up to `size` entries (an int32-sized vocabulary
    for tests, without training on enough text for one): their score is so low they never win."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(Path(model).read_bytes())
    existing = {p.piece for p in proto.pieces}
    low = min(p.score for p in proto.pieces) - 1000.0
    n = 0
    while len(proto.pieces) < size:
        piece = f"\u2581unused{n:06d}"
        n += 1
        if piece in existing:
            continue
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, low, pb.ModelProto.SentencePiece.NORMAL
    proto.trainer_spec.vocab_size = len(proto.pieces)
    with atomic_output(output) as handle:
        handle.write(proto.SerializeToString())
    return Path(output)


def model_vocab_size(model: str | os.PathLike) -> int:
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
