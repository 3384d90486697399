"""The one check that a Hugging Face tokenizer folder encodes exactly as the model was trained.

`verify_hf_tokenizer(folder, sp_model, documents)` loads the folder with `AutoTokenizer`, as a user does,
and encodes a fixed probe set (PROBES) plus the given documents; every id sequence must equal what the
training data holds for that text: Megatron's Llama2Tokenizer document (pipeline.tokenization's
Llama2Engine, the one home of that policy) without its end marker, i.e.

    tokenizer(text).input_ids == [BOS] + SentencePiece(text)       (Megatron's document: ... + [EOD])

so `tokenizer(text)` gives what the model saw before the document's end (add_special_tokens=True adds
BOS and nothing else), and `tokenizer.eos_token_id` is Megatron's EOD. The vocabulary size and the
BOS/EOS ids must be the model's too (the converter sizes the model's vocabulary from the folder).

One difference is not the folder's: SentencePiece's unigram Viterbi adds scores in float32 from the
start of the text, so in a long document two segmentations whose scores differ by less than float32
resolves there can come out the other way round (one in ~6,000 documents of the benchmark corpus with
the LLM-jp v3.1 model). Such a document is counted as a float32 tie, not failed, when the two id
windows spell the same text and the Hugging Face one scores at least as high by SentencePiece's own
piece scores, within a few float32 steps of the path score there. Any other difference fails.

Also here: which SentencePiece model a run or a converted folder was trained with (`training_tokenizer`)
and documents of a run's own data to check with (`run_documents`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import fail
from pipeline.provenance import now_iso, sha256_file

POLICY = ("Megatron Llama2Tokenizer: tokenizer(text).input_ids = [BOS] + SentencePiece(text); "
          "EOD (= EOS) ends a document")
TIE_STEPS = 16           # float32 steps of the path score within which a better Hugging Face path is a tie
SHOWN_IDS = 24           # ids shown around the first difference

# (what it covers, text): every kind of text the training data has, and the ones converters get wrong
PROBES: tuple[tuple[str, str], ...] = (
    ("English", "The quick brown fox jumps over the lazy dog."),
    ("English punctuation", "It's 5 o'clock -- isn't it? \"Yes,\" she said; (maybe) [not] {sure}!"),
    ("Japanese", "東京は日本の首都です。今日は良い天気ですね。"),
    ("Japanese mixed", "機械学習(machine learning)のモデルを訓練します。GPUは8枚。"),
    ("katakana", "ゲレンデでスノーボードをしました"),
    ("rare kanji", "久夛良木さんの刺繍と真鍮の石鹸置き"),
    ("full-width forms", "ＡＢＣ１２３！？　全角スペース　と（括弧）"),
    ("half-width katakana", "ｶﾀｶﾅとﾃﾞｰﾀﾍﾞｰｽ"),
    ("decomposed kana", "テ\u3099ータとカ\u3099ス"),
    ("combining accent", "cafe\u0301 and café, naïve Zürich"),
    ("code", "def add(a, b):\n    if a > b:\n        return a + b  # sum\n    return None\n"),
    ("code with tabs", "int main() {\n\tfor (int i = 0; i < n; i++) {\n\t\tsum += i;\n\t}\n}\n"),
    ("tabs", "a\tb\t\tc"),
    ("newlines", "line one\nline two\n\nline four"),
    ("CRLF", "windows\r\nline\r\n"),
    ("runs of spaces", "a  b   c    d"),
    ("long run of spaces", "x" + " " * 40 + "y"),
    ("leading space", " leading space"),
    ("leading spaces", "   three leading spaces"),
    ("leading newline", "\nstarts with a newline"),
    ("leading tab", "\tstarts with a tab"),
    ("trailing space", "trailing space "),
    ("trailing spaces", "trailing spaces   "),
    ("trailing newline", "trailing newline\n"),
    ("trailing tab", "trailing tab\t"),
    ("only spaces", "   "),
    ("only a newline", "\n"),
    ("only whitespace", " \n\t \r\n "),
    ("empty", ""),
    ("digits", "1234567890 3.14159 1,000,000 2024-12-08 ２０２４年"),
    ("emoji", "🚀🎉 👍🏽 ❤️ 👨‍👩‍👧 🧪"),
    ("outside the vocabulary", "𠮷野家 ᚠᛇᚻ 𝄞 \ue000 \u0378 \u2028 ꙮ"),
    ("other scripts", "Привет мир — مرحبا — สวัสดี — नमस्ते — 안녕하세요"),
    ("special token strings", "<s> </s> <unk> <pad> <PAD> <EOD> <CLS> <SEP> <MASK> <0x41> <0x0A>"),
    ("metaspace character", "a▁b ▁▁ c▁"),
    ("math", "$x^2 + y_1 = \\frac{a}{b}$ and ∑_{i=1}^{n} i = n(n+1)/2"),
    ("markup", '<div class="x">&amp; <a href="https://example.com/a?b=c#d">link</a></div>'),
    ("repeated characters", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ===== ------ ............"),
    ("Japanese with whitespace", "今日は\n  良い天気 です。\n\n\t次の行"),
    ("control characters", "bell\x07 null\x00 escape\x1b[0m delete\x7f"),
)


@dataclass
class _Text:
    label: str
    text: str


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _ids_around(ids: Sequence[int], at: int) -> str:
    start = max(0, at - 4)
    shown = ", ".join(map(str, ids[start:start + SHOWN_IDS]))
    return f"[{'..., ' if start else ''}{shown}{', ...' if start + SHOWN_IDS < len(ids) else ''}] ({len(ids)} ids)"


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


class _Training:
    """The training tokenizer: SentencePiece under Megatron's Llama2Tokenizer policy (pipeline.tokenization)."""

    def __init__(self, sp_model: Path) -> None:
        from pipeline.tokenization import Llama2Engine, TokenizerSpec
        self.engine = Llama2Engine(TokenizerSpec("Llama2Tokenizer", str(sp_model), bos=True, append_eod=True))
        self.sp = self.engine.sp
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        self.unigram = proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM
        self.scores = np.array([self.sp.get_score(i) for i in range(self.sp.get_piece_size())], np.float64)

    def documents(self, texts: list[str]) -> list[list[int]]:
        """What the model saw for each text before the document's end: Megatron's document minus its EOD."""
        flat, lengths = self.engine.encode(texts)
        out, at = [], 0
        for length in lengths.tolist():
            doc = flat[at:at + length].tolist()
            at += length
            out.append(doc[:-1] if doc and doc[-1] == self.engine.eod else doc)
        return out

    def float32_tie(self, want: list[int], got: list[int]) -> dict | None:
        """Where `got` differs from SentencePiece's `want` only by its float32 rounding (see the module
        docstring): the figures of the differing window, or None."""
        if not self.unigram:
            return None
        start = _first_difference(want, got)
        end = 0
        while end < min(len(want), len(got)) - start and want[-1 - end] == got[-1 - end]:
            end += 1
        window_want, window_got = want[start:len(want) - end], got[start:len(got) - end]
        sp = self.sp
        for piece in (*window_want, *window_got):
            if not 0 <= piece < len(self.scores) or sp.is_byte(piece) or sp.is_unknown(piece) or sp.is_control(piece):
                return None
        if "".join(map(sp.id_to_piece, window_want)) != "".join(map(sp.id_to_piece, window_got)):
            return None
        gain = float(self.scores[window_got].sum() - self.scores[window_want].sum())
        pieces = want[1:len(want) - end]          # want[0] is BOS, not a piece of the path
        path_score = float(np.float32(self.scores[pieces].sum()))
        step = float(np.spacing(np.float32(abs(path_score))))
        if not 0 <= gain <= TIE_STEPS * step:
            return None
        return {"at_token": start, "score_gain": gain, "path_score": path_score, "float32_step": step}


def _load_hf(folder: Path):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds for a folder it cannot read
        fail(f"{folder}: transformers' AutoTokenizer cannot load a tokenizer from it ({type(exc).__name__}: {exc})")


def _hint(folder: Path, sp_model: Path, tokenizer) -> str:
    if not (folder / "tokenizer.json").is_file():
        return (f"\n{folder} has no tokenizer.json, so transformers builds the tokenizer from tokenizer.model "
                f"itself ({type(tokenizer).__name__}), and that does not reproduce SentencePiece; build the folder "
                f"with `make hf-tokenizer TOKENIZER_MODEL={sp_model}` (HF_TOKENIZER_DIR=<where>) and use it instead")
    return (f"\nUse the folder built for this model: `make hf-tokenizer TOKENIZER_MODEL={sp_model}` "
            "(HF_TOKENIZER_DIR=<where>)")


def verify_hf_tokenizer(hf_dir: Path, sp_model: Path, documents: Sequence[str] = ()) -> dict:
    """Check that `hf_dir`, loaded with AutoTokenizer, encodes PROBES and `documents` id for id as the
    SentencePiece model `sp_model` under Megatron's Llama2Tokenizer policy; returns the verdict to record,
    fails (PipelineError) on a difference naming the first differing text and both id sequences."""
    started = time.monotonic()
    hf_dir, sp_model = Path(hf_dir), Path(sp_model)
    if not hf_dir.is_dir():
        fail(f"{hf_dir}: tokenizer folder not found")
    training = _Training(sp_model)
    tokenizer = _load_hf(hf_dir)
    texts = [_Text(f"probe {label!r}", text) for label, text in PROBES]
    texts += [_Text(f"document {i + 1}", text) for i, text in enumerate(documents)]

    problems = []
    engine = training.engine
    if len(tokenizer) != engine.vocab_size:
        problems.append(f"it has {len(tokenizer):,} tokens, the training tokenizer {engine.vocab_size:,} pieces "
                        "(the converted model's vocabulary is sized from the folder)")
    for what, got, want in (("bos_token_id", tokenizer.bos_token_id, engine.prefix),
                            ("eos_token_id (Megatron's EOD)", tokenizer.eos_token_id, engine.eod)):
        if got != want:
            problems.append(f"its {what} is {got}, the training tokenizer's is {want}")

    want_all = training.documents([t.text for t in texts])
    got_all = tokenizer([t.text for t in texts])["input_ids"] if texts else []
    differing, ties = [], []
    for item, want, got in zip(texts, want_all, got_all):
        got = list(got)
        if got == want:
            continue
        tie = training.float32_tie(want, got)
        if tie is not None:
            ties.append({"text": item.label, **tie})
        else:
            differing.append((item, want, got))
    if differing or problems:
        lines = [f"{hf_dir}: its Hugging Face tokenizer does not encode as the training tokenizer {sp_model} "
                 f"({POLICY})"]
        lines += [f"  {problem}" for problem in problems]
        if differing:
            item, want, got = differing[0]
            at = _first_difference(want, got)
            lines += [f"  {len(differing)} of {len(texts)} texts encode differently; the first, {item.label} "
                      f"{_short(item.text)}, at token {at}:",
                      f"    Hugging Face:  {_ids_around(got, at)}",
                      f"    SentencePiece: {_ids_around(want, at)}"]
        fail("\n".join(lines) + _hint(hf_dir, sp_model, tokenizer))

    import sentencepiece
    import tokenizers
    import transformers
    from pipeline.hf_folder import tokenizer_files
    return {
        "passed": True,
        "policy": POLICY,
        "tokenizer_model": str(sp_model.resolve()),
        "tokenizer_model_sha256": sha256_file(sp_model),
        "hf_dir": str(hf_dir.resolve()),
        "tokenizer_files_sha256": {p.name: sha256_file(p) for p in tokenizer_files(hf_dir)},
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "probes": len(PROBES), "documents": len(documents), "characters": sum(len(d) for d in documents),
        "equal": len(texts) - len(ties), "float32_ties": len(ties), "first_float32_tie": ties[0] if ties else None,
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "sentencepiece": sentencepiece.__version__},
        "seconds": round(time.monotonic() - started, 3),
        "time": now_iso(),
    }


def describe_verdict(verdict: dict | None) -> str:
    """One line for logs and `make status`."""
    if not verdict:
        return "not checked"
    text = f"{verdict['probes']} probes"
    if verdict.get("documents"):
        text += f" + {verdict['documents']:,} documents ({verdict.get('characters', 0):,} characters)"
    text += " encode as trained"
    if verdict.get("float32_ties"):
        text += f" ({verdict['float32_ties']} float32 tie(s) of SentencePiece)"
    return text


# ---------------------------------------------------------------------------------------------
# Which SentencePiece model a run was trained with
# ---------------------------------------------------------------------------------------------
def recorded_tokenizers(run_dir: Path | None = None, checkpoint: Path | None = None,
                        converted: Path | None = None) -> list[tuple[str, Path]]:
    """(where it is recorded, path) of the training tokenizer: the run's train_args.json, the copy newer
    Megatron saves inside a checkpoint (iter_NNNNNNN/tokenizer/tokenizer.model), the check recorded in a
    converted folder. Paths that are not on this machine are kept (the caller says so)."""
    from pipeline.atomic import read_json
    from pipeline.hf_folder import RECORD_FILE
    found = []
    if run_dir is not None:
        record = read_json(run_dir / "train_args.json", bad="none") or {}
        if record.get("tokenizer_model"):
            found.append((str(run_dir / "train_args.json"), Path(record["tokenizer_model"])))
    if checkpoint is not None and (checkpoint / "tokenizer" / "tokenizer.model").is_file():
        found.append((f"{checkpoint} (Megatron's copy)", checkpoint / "tokenizer" / "tokenizer.model"))
    if converted is not None:
        record = read_json(converted / RECORD_FILE, bad="none") or {}
        check = record.get("tokenizer_check") or {}
        if check.get("tokenizer_model"):
            found.append((str(converted / RECORD_FILE), Path(check["tokenizer_model"])))
    return found


def training_tokenizer(given: str | os.PathLike | None, recorded: list[tuple[str, Path]], what: str) -> Path:
    """The SentencePiece model `what` was trained with: TOKENIZER_MODEL when given, else the first recorded one
    present here. Every one present must be the same model (sha256), else `what` is refused."""
    present = [(where, path) for where, path in recorded if path.is_file()]
    if given:
        given_path = Path(given)
        if not given_path.is_file():
            fail(f"TOKENIZER_MODEL={given}: not found (the SentencePiece model {what} was trained with)")
        present.insert(0, ("TOKENIZER_MODEL", given_path))
    if not present:
        missing = "; ".join(f"{where} names {path}, not found here" for where, path in recorded)
        fail(f"{what}: cannot tell which SentencePiece model it was trained with"
             f"{f' ({missing})' if missing else ''}; give TOKENIZER_MODEL=<the .model file>")
    first_where, first = present[0]
    digest = sha256_file(first)
    for where, path in present[1:]:
        if path.resolve() != first.resolve() and sha256_file(path) != digest:
            fail(f"{what}: {first_where} is {first}, but {where} says it was trained with {path}, a different "
                 "SentencePiece model; give the model it was trained with")
    return first


def converted_run_dir(folder: Path) -> Path | None:
    """The run folder of a converted checkpoint `<run>/checkpoints_hf/iter_NNNNNNN/`, else None."""
    folder = Path(folder)
    return folder.parent.parent if folder.parent.name == "checkpoints_hf" else None


def models_training_tokenizer(folders: Sequence[Path], given: str | os.PathLike | None) -> Path:
    """The SentencePiece model the converted `folders` (a soup's ingredients) were trained with: TOKENIZER_MODEL,
    or what their runs and conversion records name; they must all name the same one."""
    recorded = []
    for folder in folders:
        recorded += recorded_tokenizers(run_dir=converted_run_dir(folder), converted=Path(folder))
    return training_tokenizer(given, recorded, f"the models {', '.join(map(str, folders))}")


# ---------------------------------------------------------------------------------------------
# Documents of a run's own training data, where they are at hand
# ---------------------------------------------------------------------------------------------
def data_prefixes(arguments: Iterable[str]) -> list[str]:
    """The dataset prefixes of Megatron's --data-path (weight prefix pairs, or prefixes alone)."""
    args = list(arguments)
    prefixes: list[str] = []
    if "--data-path" in args:
        for value in args[args.index("--data-path") + 1:]:
            if value.startswith("--"):
                break
            try:
                float(value)
            except ValueError:
                prefixes.append(value)
    return prefixes


def run_documents(run_dir: Path, per_file: int = 4, limit: int = 200) -> list[str]:
    """Up to `limit` documents of the run's data (the first `per_file` of each input file that tokenize's
    provenance record names and that is still here); none when the inputs are gone (clean-intermediate)."""
    from pipeline.atomic import read_json
    from pipeline.tokenizer_training import iter_texts
    record = read_json(Path(run_dir) / "train_args.json", bad="none") or {}
    documents: list[str] = []
    for prefix in data_prefixes(record.get("arguments") or []):
        provenance = read_json(f"{prefix}.provenance.json", bad="none") or {}
        source = Path(provenance.get("input") or "/nonexistent")
        if not source.is_file() or source.suffix == ".parquet":
            continue
        try:
            documents += list(iter_texts([source], provenance.get("json_key") or "text", per_file))
        except Exception:  # noqa: BLE001  an unreadable input only means fewer documents to check with
            continue
        if len(documents) >= limit:
            break
    return documents[:limit]
