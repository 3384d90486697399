"""`make hf-tokenizer`: a Hugging Face tokenizer folder that encodes exactly as a SentencePiece model.

The folder holds `tokenizer.json` (a `tokenizers` Unigram or BPE model, as the SentencePiece model is),
`tokenizer_config.json`, `special_tokens_map.json` and BUILD_RECORD (what it was built from, and the
check's verdict). Everything is read from the model's own proto (sentencepiece_model_pb2), not guessed:

- normalizer, in SentencePiece's order: the precompiled charsmap (nmt_nfkc models) with two repairs of
  `tokenizers`' Precompiled, which maps whole grapheme clusters (it turns CRLF into one space where
  SentencePiece gives two, and leaves a 6-byte cluster such as half-width ﾃﾞ uncomposed, so NFC follows it);
  `remove_extra_whitespaces` only when the spec says so; spaces to U+2581 (`escape_whitespaces`); the
  dummy U+2581 before every non-empty text (`add_dummy_prefix`), also before one that starts with a space.
- no pre-tokenizer: SentencePiece encodes the whole normalized text at once (a model trained with
  `split_by_whitespace: false`, as LLM-jp's, has pieces that run across U+2581, and runs of them).
- unigram: the piece scores; pieces SentencePiece never matches in text (control, unknown, byte, unused)
  get the lowest normal score, so the unknown-character score (lowest - 10) is SentencePiece's. Where one
  of them could still win over the normal pieces spelling it (`</s>` when `/` is no piece), its first
  character is escaped: a space (which no normalized text holds) is put after it in the text and in every
  normal piece, so the special piece never matches and every normal one matches as before; the decoder
  takes it out again. User-defined pieces keep SentencePiece's lattice score for them (length x the best
  normal score - 0.1), raised to the lowest normal score where it would fall below it.
- BPE: merges of every two normal pieces that make a normal piece, ranked by its score (SentencePiece
  merges the best-scoring pair first).
- byte fallback as the model has it; BOS added by `tokenizer(text)`, EOS not (see pipeline.tokenization:
  Megatron's Llama2Tokenizer documents are [BOS] + pieces + [EOD]); special token strings in text are
  encoded as text (`split_special_tokens`), as SentencePiece does.

The folder is built beside its final name and checked with pipeline.tokenizer_check on its probe set and
the given documents before it is renamed into place. A folder at the output that this did not build (LLM-jp's
published hf/ver3.1/... folder) is checked as it is, and used as given when it passes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from pipeline.atomic import atomic_dir, read_json, write_json
from pipeline.errors import fail
from pipeline.provenance import provenance, sha256_file

BUILD_RECORD = "hf_tokenizer_build.json"
BUILDER_VERSION = 1          # bump when a change here changes the files written
METASPACE = "\u2581"
UNK_PENALTY = 10.0           # SentencePiece and tokenizers: an unknown character scores the lowest score - 10
# pieces SentencePiece never matches in text (sentencepiece_model.proto: UNKNOWN=2, CONTROL=3, UNUSED=5, BYTE=6)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
NOT_IN_TEXT = (UNKNOWN, CONTROL, UNUSED, BYTE)
UNIGRAM, BPE = 1, 2


def load_proto(sp_model: Path):
    from sentencepiece import sentencepiece_model_pb2
    sp_model = Path(sp_model)
    if not sp_model.is_file():
        fail(f"{sp_model}: tokenizer model not found (a SentencePiece .model file)")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(sp_model.read_bytes())
    except Exception as exc:  # protobuf's DecodeError
        fail(f"{sp_model}: not a SentencePiece model ({exc})")
    if not proto.pieces:
        fail(f"{sp_model}: not a SentencePiece model (no pieces)")
    return proto


def _unsupported(sp_model: Path, why: str):
    fail(f"{sp_model}: cannot be expressed as a Hugging Face tokenizer that encodes exactly like it: {why}")


def _best_path(text: str, scores: dict[str, float], unk: float) -> float:
    """The best unigram path score of `text` over `scores` (unknown characters score `unk`), as SentencePiece's
    Viterbi finds it (a character without a one-character piece gets an unknown node)."""
    best: list[float | None] = [0.0] + [None] * len(text)
    for i in range(len(text)):
        if best[i] is None:
            continue
        single = False
        for j in range(i + 1, len(text) + 1):
            score = scores.get(text[i:j])
            if score is not None:
                single = single or j == i + 1
                if best[j] is None or best[i] + score > best[j]:
                    best[j] = best[i] + score
        if not single and (best[i + 1] is None or best[i] + unk > best[i + 1]):
            best[i + 1] = best[i] + unk
    return best[-1]


def _pure_normalizer(proto):
    """A SentencePieceProcessor that applies only the charsmap (no dummy prefix, no whitespace handling)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    copy = sentencepiece_model_pb2.ModelProto()
    copy.CopyFrom(proto)
    copy.normalizer_spec.add_dummy_prefix = False
    copy.normalizer_spec.remove_extra_whitespaces = False
    copy.normalizer_spec.escape_whitespaces = False
    return spm.SentencePieceProcessor(model_proto=copy.SerializeToString())


class _Plan:
    """Everything derived from the proto, checked; build() turns it into a tokenizers.Tokenizer."""

    def __init__(self, proto, sp_model: Path) -> None:
        self.proto, self.sp_model = proto, sp_model
        trainer, spec = proto.trainer_spec, proto.normalizer_spec
        self.kind = trainer.model_type
        if self.kind not in (UNIGRAM, BPE):
            _unsupported(sp_model, f"model_type {trainer.model_type} (only unigram and BPE models are handled)")
        if trainer.treat_whitespace_as_suffix:
            _unsupported(sp_model, "treat_whitespace_as_suffix is set")
        self.pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
        normal = [score for _, score, kind in self.pieces if kind == NORMAL]
        if not normal:
            _unsupported(sp_model, "it has no normal pieces")
        self.min_score, self.max_score = min(normal), max(normal)
        for piece, _, kind in self.pieces:
            if kind in NOT_IN_TEXT + (USER_DEFINED,) and len(piece) == 1:
                _unsupported(sp_model, f"the one-character special piece {piece!r}")
        self.escaped = self._escapes() if self.kind == UNIGRAM else []
        if self.escaped and not spec.escape_whitespaces:
            _unsupported(sp_model, "special pieces would match text and escape_whitespaces is off")
        if any(" " in piece for piece, _, kind in self.pieces if kind in (NORMAL, USER_DEFINED)) and self.escaped:
            _unsupported(sp_model, "a piece holds a space")
        self.crlf = self._crlf() if spec.precompiled_charsmap else None

    def _escapes(self) -> list[str]:
        """First characters of the special pieces that the unigram lattice could choose over normal pieces."""
        scores = {piece: score for piece, score, kind in self.pieces if kind == NORMAL}
        unk = self.min_score - UNK_PENALTY
        reachable = [piece for piece, _, kind in self.pieces
                     if kind in NOT_IN_TEXT and _best_path(piece, scores, unk) <= self.min_score]
        chars = sorted({piece[0] for piece in reachable})
        for char in chars:
            if char not in scores or char == METASPACE:
                _unsupported(self.sp_model, f"special pieces starting with {char!r} could match text, and {char!r} "
                                            "is not a normal piece")
        return chars

    def _crlf(self) -> str | None:
        """What SentencePiece's charsmap makes of CRLF, when tokenizers' Precompiled would differ from it."""
        pure = _pure_normalizer(self.proto)
        target = pure.normalize("\r\n")
        return target if pure.normalize(target) == target else None

    def escape(self, text: str) -> str:
        for char in self.escaped:
            text = text.replace(char, char + " ")
        return text

    def build(self):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
        trainer, spec = self.proto.trainer_spec, self.proto.normalizer_spec
        if self.kind == UNIGRAM:
            vocab = []
            for piece, score, kind in self.pieces:
                if kind == NORMAL:
                    vocab.append((self.escape(piece), score))
                elif kind == USER_DEFINED:
                    # SentencePiece's lattice score for them, kept at or above the lowest normal score so that the
                    # unknown-character score stays SentencePiece's (they are meant to win wherever they match)
                    vocab.append((self.escape(piece), max(len(piece) * self.max_score - 0.1, self.min_score)))
                else:
                    vocab.append((piece, self.min_score))
            model = models.Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
        else:
            vocab = {piece: i for i, (piece, _, _) in enumerate(self.pieces)}
            normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(self.pieces) if kind == NORMAL}
            ranked = []
            for piece, (score, i) in normal.items():
                for cut in range(1, len(piece)):
                    left, right = piece[:cut], piece[cut:]
                    if left in normal and right in normal:
                        ranked.append((-score, i, normal[left][1], left, right))
            merges = [(left, right) for *_, left, right in sorted(ranked)]
            user_defined = any(kind == USER_DEFINED for _, _, kind in self.pieces)
            model = models.BPE(vocab=vocab, merges=merges, unk_token=trainer.unk_piece, fuse_unk=True,
                               byte_fallback=trainer.byte_fallback, ignore_merges=user_defined)
        tokenizer = Tokenizer(model)

        steps = []
        if spec.precompiled_charsmap:
            if self.crlf is not None:
                steps.append(normalizers.Replace("\r\n", self.crlf))
            steps += [normalizers.Precompiled(spec.precompiled_charsmap), normalizers.NFC()]
        if spec.remove_extra_whitespaces:
            steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
        if spec.escape_whitespaces:
            steps.append(normalizers.Replace(" ", METASPACE))
        if spec.add_dummy_prefix:
            steps.append(normalizers.Prepend(METASPACE))
        steps += [normalizers.Replace(char, char + " ") for char in self.escaped]
        tokenizer.normalizer = normalizers.Sequence(steps)
        user_defined = [self.escape(piece) for piece, _, kind in self.pieces if kind == USER_DEFINED]
        if user_defined and self.kind == BPE:    # SentencePiece's BPE never merges them with their neighbours
            from tokenizers import pre_tokenizers
            pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
            tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")

        steps = [decoders.Replace(char + " ", char) for char in self.escaped]
        steps.append(decoders.Replace(METASPACE, " "))
        if trainer.byte_fallback:
            steps.append(decoders.ByteFallback())
        steps.append(decoders.Fuse())
        if spec.add_dummy_prefix:
            steps.append(decoders.Strip(" ", 1, 0))
        tokenizer.decoder = decoders.Sequence(steps)

        specials = self.special_tokens()
        tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False)
                                      for text in dict.fromkeys(specials.values())])
        if "bos_token" in specials:
            bos = specials["bos_token"]
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, trainer.bos_id)])
        return tokenizer

    def special_tokens(self) -> dict[str, str]:
        trainer = self.proto.trainer_spec
        names = {}
        for key, piece_id in (("bos_token", trainer.bos_id), ("eos_token", trainer.eos_id),
                              ("unk_token", trainer.unk_id), ("pad_token", trainer.pad_id)):
            if 0 <= piece_id < len(self.pieces):
                names[key] = self.pieces[piece_id][0]
        return names

    def config(self) -> dict:
        """tokenizer_config.json: the generic class that loads tokenizer.json as it is (a model class such as
        LlamaTokenizer would rebuild its own normalizer and model), BOS added, special strings kept as text."""
        return {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens(),
                "add_bos_token": "bos_token" in self.special_tokens(), "add_eos_token": False,
                "split_special_tokens": True, "clean_up_tokenization_spaces": False}

    def describe(self) -> dict:
        spec, trainer = self.proto.normalizer_spec, self.proto.trainer_spec
        return {"model_type": "unigram" if self.kind == UNIGRAM else "bpe", "pieces": len(self.pieces),
                "byte_fallback": trainer.byte_fallback, "normalizer": spec.name,
                "add_dummy_prefix": spec.add_dummy_prefix, "remove_extra_whitespaces": spec.remove_extra_whitespaces,
                "split_by_whitespace": trainer.split_by_whitespace,
                "escaped_characters": self.escaped, "crlf": self.crlf}


BUILT, UP_TO_DATE, GIVEN = "built", "up to date", "used as given"


def write_hf_tokenizer(sp_model: str | Path, output: str | Path, documents: Sequence[str] = (), *,
                       force: bool = False) -> tuple[dict, str]:
    """Build the folder for `sp_model` at `output`, checked on the probe set and `documents` before it is
    renamed into place; (its build record, BUILT | UP_TO_DATE | GIVEN). A folder this built from the same model
    is left as it is (force: built again); a folder it did not build (a published one) is checked as it is and
    never written to."""
    from pipeline.tokenizer_check import verify_hf_tokenizer
    sp_model, output = Path(sp_model).absolute(), Path(output).absolute()
    proto = load_proto(sp_model)
    digest = sha256_file(sp_model)
    if output.exists():
        record = read_json(output / BUILD_RECORD, bad="none")
        if record is None:
            return {"tokenizer_check": verify_hf_tokenizer(output, sp_model, documents)}, GIVEN
        same = record.get("tokenizer_model_sha256") == digest and record.get("builder_version") == BUILDER_VERSION
        if same and not force:
            if documents:   # checked again with these documents; the files stay as they are
                record["tokenizer_check"] = {**verify_hf_tokenizer(output, sp_model, documents), "hf_dir": str(output)}
                write_json(output / BUILD_RECORD, record)
            return record, UP_TO_DATE
        if not force:
            fail(f"{output}: holds a tokenizer built from another model ({record.get('tokenizer_model')}); "
                 "FORCE=1 builds it again from this one, or choose another HF_TOKENIZER_DIR")
    plan = _Plan(proto, sp_model)
    tokenizer = plan.build()
    with atomic_dir(output) as tmp:
        tokenizer.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "tokenizer_config.json", plan.config())
        write_json(tmp / "special_tokens_map.json", plan.special_tokens())
        verdict = verify_hf_tokenizer(tmp, sp_model, documents)
        verdict["hf_dir"] = str(output)
        record = provenance(tokenizer_model=str(sp_model), tokenizer_model_sha256=digest,
                            builder_version=BUILDER_VERSION, settings=plan.describe(), tokenizer_check=verdict)
        write_json(tmp / BUILD_RECORD, record)
    return record, BUILT
