"""Shared pieces of the tokenize tests: tiny tokenizers trained here, corpora, and the Megatron oracle.

The oracle never goes through our code: ids come from plain sentencepiece / transformers calls per
document, following Megatron's tokenizer classes, and the expected files are written by
megatron-core's own IndexedDatasetBuilder.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from conftest import SCRIPTS  # noqa: F401  (puts scripts/ on sys.path)

WORDS = ("the model data training token mixture source weight average seed curve loss rate step batch "
         "sequence document index shard merge extract corpus science paper answer question").split()
NON_ASCII = ["今日は良い天気です。", "機械学習のモデルを訓練します。", "café naïve résumé Zürich", "Ελληνικά κείμενα",
             "emoji 🚀🎉 and ZWJ 👩‍👩‍👧", "e\u0301 combining", "tab\tand\r\ncrlf", "Ünïcödé ß ẞ"]


def training_texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
        texts.append(f"{words} {rng.choice(NON_ASCII)} {rng.randint(0, 99999)}")
    return texts


def tiny_sp_model(root: Path) -> Path:
    """A small unigram model (BOS 1, EOS 2, byte fallback), trained once per test session."""
    from pipeline.tokenizer_training import train_sentencepiece
    path = root / "tiny-sp.model"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        train_sentencepiece(None, path, vocab_size=400, texts=training_texts())
    return path


def big_sp_model(root: Path) -> Path:
    """The tiny model grown past 65,500 pieces: Megatron then writes int32."""
    from pipeline.tokenizer_training import grow_vocabulary
    path = root / "big-sp.model"
    if not path.is_file():
        grow_vocabulary(tiny_sp_model(root), path, 66_000)
    return path


def tiny_hf_tokenizer(root: Path) -> Path:
    """A byte-level BPE tokenizer trained with `tokenizers`, saved as a transformers folder, whose
    post-processor adds <s> before every text (Megatron keeps such special tokens)."""
    folder = root / "tiny-hf"
    if (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return folder


def corpus_texts(seed: int = 1) -> list[str]:
    """Documents with the edge cases: empty, whitespace only, very long, non-ASCII, literal specials."""
    rng = random.Random(seed)
    texts = ["", " ", "\n\n", "a", "<s> literal </s> and <EOD> <CLS><SEP> <MASK> <PAD>", "x<EOD>y<EOD>"]
    texts += NON_ASCII
    texts += [" ".join(rng.choice(WORDS + NON_ASCII) for _ in range(rng.randint(1, 80))) for _ in range(150)]
    texts.append(" ".join(rng.choice(WORDS) for _ in range(60_000)))  # a very long document (~400 kB)
    texts += ["", "trailing spaces   ", "\u3000全角スペース\u3000"]
    return texts


def write_jsonl(path: Path, texts: list[str], blank_every: int = 0, key: str = "text", extra: bool = True) -> Path:
    """One JSON object per text (with Dolma-like extra fields); a blank line every `blank_every` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for i, text in enumerate(texts):
            record = {"id": f"doc-{i}", key: text}
            if extra:
                record["metadata"] = {"n": i, "tags": ["a", "b"]}
            out.write(json.dumps(record, ensure_ascii=i % 2 == 0) + "\n")
            if blank_every and i % blank_every == blank_every - 1:
                out.write("\n" if i % 2 else "   \n")
    return path


# ---------------------------------------------------------------------------------------------
# The oracle: Megatron's tokenizer classes, reimplemented in plain calls, and megatron-core's builder
# ---------------------------------------------------------------------------------------------
def llama2_ids(model: Path, texts: list[str], bos: bool = True, append_eod: bool = True) -> list[list[int]]:
    """_Llama2Tokenizer.tokenize = [bos] + sp.encode(text); preprocess_data appends eod if ids."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))
    docs = []
    for text in texts:
        ids = ([sp.bos_id()] if bos else []) + list(sp.encode(text))
        if ids and append_eod:
            ids.append(sp.eos_id())
        docs.append(ids)
    return docs


def megatron_sentencepiece_ids(model: Path, texts: list[str], append_eod: bool = True) -> tuple[list[list[int]], int]:
    """_SentencePieceTokenizer: special strings split out (str.index loop, as in Megatron); (docs, vocab size)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))
    vocab = {sp.id_to_piece(i): i for i in range(len(sp))}
    specials = {}

    def add(token):
        if token not in vocab:
            vocab[token] = len(vocab)
        specials[token] = vocab[token]

    for token in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
        add(token)
    for piece_id, fallback in ((sp.pad_id(), "<PAD>"), (sp.bos_id(), "<BOS>"), (sp.eos_id(), "<EOS>")):
        try:
            add(sp.id_to_piece(piece_id))
        except IndexError:
            add(fallback)
    docs = []
    for text in texts:
        ids, idx = [], 0
        while True:
            indices = {}
            for token in specials:
                try:
                    indices[token] = text[idx:].index(token)
                except ValueError:
                    continue
            if not indices:
                break
            nxt = min(indices, key=indices.get)
            at = idx + indices[nxt]
            ids.extend(sp.encode_as_ids(text[idx:at]))
            ids.append(specials[nxt])
            idx = at + len(nxt)
        ids.extend(sp.encode_as_ids(text[idx:]))
        if ids and append_eod:
            ids.append(specials["<EOD>"])
        docs.append(ids)
    return docs, len(vocab)


def hf_ids(folder: Path, texts: list[str], append_eod: bool = True) -> tuple[list[list[int]], int]:
    """_HuggingFaceTokenizer: AutoTokenizer(text).input_ids, eod = eos_token_id; (docs, len(tokenizer))."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    docs = []
    for text in texts:
        ids = list(tok(text).input_ids)
        if ids and append_eod:
            ids.append(tok.eos_token_id)
        docs.append(ids)
    return docs, len(tok)


def _megatron(*names: str) -> list:
    """Names from megatron-core's indexed_dataset, imported without its TE/Apex fallback warnings."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return [getattr(indexed_dataset, name) for name in names]


def megatron_build(prefix: Path, docs: list[list[int]], vocab_size: int) -> Path:
    """The expected files, written by megatron-core's IndexedDatasetBuilder (as preprocess_data does)."""
    DType, IndexedDatasetBuilder = _megatron("DType", "IndexedDatasetBuilder")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(vocab_size))
    for ids in docs:
        builder.add_document(np.array(ids, dtype=np.int64), [len(ids)] if ids else [])
    builder.finalize(f"{prefix}.idx")
    return prefix


def assert_same_files(ours: Path, expected: Path) -> None:
    for suffix in (".bin", ".idx"):
        a, b = Path(f"{ours}{suffix}").read_bytes(), Path(f"{expected}{suffix}").read_bytes()
        assert a == b, f"{ours}{suffix} differs from megatron-core's ({len(a)} vs {len(b)} bytes)"


def assert_megatron_reads(prefix: Path, docs: list[list[int]]) -> None:
    """megatron-core's IndexedDataset reads our files back as the expected documents."""
    IndexedDataset, = _megatron("IndexedDataset")
    dataset = IndexedDataset(str(prefix), mmap=True)
    nonempty = [d for d in docs if d]
    assert len(dataset) == len(nonempty)
    assert len(dataset.document_indices) == len(docs) + 1
    for i, ids in enumerate(nonempty):
        assert dataset[i].tolist() == ids, f"sequence {i}"
