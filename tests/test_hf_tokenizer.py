"""make hf-tokenizer and the one tokenizer check (pipeline/hf_tokenizer.py, pipeline/tokenizer_check.py) with models
written by the sentencepiece library: the real LLM-jp v3.1 model (where ../shared has it), the demo's, a BPE model
trained here. The folders a run could wrongly carry (a `.model`-only one, another tokenizer's) are refused with the
message, by the check, the converter and the soup; outputs are loaded with transformers' Auto classes and fed text."""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED
from pipeline.errors import PipelineError
from pipeline.hf_tokenizer import BUILD_RECORD, write_hf_tokenizer
from pipeline.tokenizer_check import PROBES, verify_hf_tokenizer

V31 = SHARED / "tokenizers" / "llm-jp-tokenizer-100k.ver3.1.model"
SAMPLES = SHARED / "samples"
UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream_ckpt"
needs_v31 = pytest.mark.skipif(not V31.is_file(), reason=f"the real v3.1 tokenizer is not at {V31}")
MODEL_ONLY_MESSAGE = "has no tokenizer.json, so transformers builds the tokenizer from tokenizer.model itself"


def sample_texts(limit: int = 400) -> list[str]:
    """Generated sample text (English, Japanese, math, code), plus real English web documents and Japanese
    sentences where ../shared has them."""
    from pipeline.sample import texts
    documents = texts(limit // 2, 7)
    for web in sorted((SAMPLES / "dolma-cc").glob("cc_en_*.jsonl.gz")):
        with gzip.open(web, "rt", encoding="utf-8") as handle:
            documents += [json.loads(line)["text"] for line in handle if line.strip()]
    for path in sorted((SAMPLES / "ja").glob("*.txt"))[:1]:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        documents += ["\n".join(lines[i:i + 8]) for i in range(0, 8 * (limit // 4), 8)]
    return documents


def model_only_folder(model: Path, folder: Path) -> Path:
    """What the GPU check used to build (and what the issue tried): tokenizer.model with a LlamaTokenizer config,
    which transformers converts itself."""
    folder.mkdir(parents=True)
    shutil.copyfile(model, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False}))
    return folder


def sp_document(model: Path, text: str) -> list[int]:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.bos_id(), *sp.encode(text)]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    """The demo's tokenizer, trained as make demo trains it (demo/train_tokenizer.py on the generated sample)."""
    from pipeline.sample import generate
    work = tmp_path_factory.mktemp("demo-tokenizer")
    generate(work / "sample", docs=8)
    model = work / "demo.model"
    subprocess.run([sys.executable, str(REPO / "demo" / "train_tokenizer.py"), "--input", str(work / "sample"),
                    "--output", str(model)], check=True, capture_output=True)
    return model


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory) -> Path:
    """A BPE model trained here with SentencePiece's defaults (nmt_nfkc, extra whitespace removed, whitespace
    split), byte fallback and two user-defined symbols."""
    import sentencepiece as spm
    sentences = [line for text in sample_texts() for line in text.split("\n") if line.strip()]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buffer, model_type="bpe",
                                   vocab_size=1200, byte_fallback=True, user_defined_symbols=["<USER>", "[SEP2]"],
                                   num_threads=1, minloglevel=2)
    model = tmp_path_factory.mktemp("bpe") / "bpe.model"
    model.write_bytes(buffer.getvalue())
    return model


def write_documents(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_demo_tokenizer_folder_through_make(make, demo_model, tmp_path):
    out = tmp_path / "hf"
    docs = write_documents(tmp_path / "docs.jsonl", sample_texts())
    built = make("hf-tokenizer", f"TOKENIZER_MODEL={demo_model}", f"HF_TOKENIZER_DIR={out}",
                 f"TOKENIZER_CHECK_DOCS={docs}")
    assert f"{out} built from {demo_model} (unigram" in built.stderr
    assert "40 probes + " in built.stderr and "documents" in built.stderr and "encode as trained" in built.stderr
    assert {p.name for p in out.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                               BUILD_RECORD}
    assert not list(tmp_path.glob(".hf.tmp.*")), "no temporary folder left"
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for _, text in PROBES:
        assert tokenizer(text).input_ids == sp_document(demo_model, text), repr(text)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(demo_model))
    for text in ("  two  spaces\tand a tab\n", "東京は日本の首都です。 café 🚀"):
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == sp.decode(sp.encode(text))

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "up to date" in make("hf-tokenizer", f"TOKENIZER_MODEL={demo_model}", f"HF_TOKENIZER_DIR={out}").stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert "built" in make("hf-tokenizer", f"TOKENIZER_MODEL={demo_model}", f"HF_TOKENIZER_DIR={out}",
                           "FORCE=1").stderr
    missing = make("hf-tokenizer", f"HF_TOKENIZER_DIR={out}", check=False)
    assert missing.returncode == 2 and "TOKENIZER_MODEL is not set" in missing.stderr


def test_bpe_model_with_user_defined_symbols(bpe_model, tmp_path):
    record, status = write_hf_tokenizer(bpe_model, tmp_path / "hf", sample_texts() + ["a<USER>b <USER> [SEP2]x"])
    assert status == "built" and record["settings"]["model_type"] == "bpe"
    assert record["settings"]["remove_extra_whitespaces"] and record["settings"]["normalizer"] == "nmt_nfkc"
    check = record["tokenizer_check"]
    assert check["passed"] and check["documents"] > 300 and check["equal"] == check["probes"] + check["documents"]


@needs_v31
def test_real_v31_folder_encodes_as_trained(make, tmp_path):
    out = tmp_path / "v3.1"
    texts = sample_texts()
    docs = write_documents(tmp_path / "docs.jsonl", texts)
    make("hf-tokenizer", f"TOKENIZER_MODEL={V31}", f"HF_TOKENIZER_DIR={out}", f"TOKENIZER_CHECK_DOCS={docs}")
    check = json.loads((out / BUILD_RECORD).read_text())["tokenizer_check"]
    assert check["passed"] and check["vocab_size"] == 98452 and (check["bos_token_id"], check["eos_token_id"]) == (1, 2)
    assert check["documents"] == len(texts) and check["probes"] == len(PROBES)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for text in ("ゲレンデ", "    def f(x):\n\treturn x  ", " leading", "<s> </s> <EOD>"):
        assert tokenizer(text).input_ids == sp_document(V31, text), repr(text)
    assert tokenizer.convert_ids_to_tokens(tokenizer("ゲレンデ").input_ids) == ["<s>", "▁", "ゲレンデ"]


@needs_v31
def test_float32_ties_of_sentencepiece_are_counted_not_failed(tmp_path):
    """In a long text SentencePiece's float32 path scores can pick the lower-scoring of two near-equal
    segmentations (here `Op tim` over `Opt im`, 0.0045 apart at a path score of about -64,000)."""
    write_hf_tokenizer(V31, tmp_path / "hf")
    text = "x = 1\n" * 500 + "\n    'Optimize a pick"
    verdict = verify_hf_tokenizer(tmp_path / "hf", V31, [text])
    assert verdict["passed"] and verdict["float32_ties"] == 1 and verdict["equal"] == len(PROBES)
    tie = verdict["first_float32_tie"]
    assert tie["text"] == "document 1" and 0 < tie["score_gain"] <= 16 * tie["float32_step"]


@needs_v31
def test_model_only_folder_is_refused_with_the_message(make, tmp_path):
    folder = model_only_folder(V31, tmp_path / "model-only")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = make("hf-tokenizer", f"TOKENIZER_MODEL={V31}", f"HF_TOKENIZER_DIR={folder}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"error: {folder}: its Hugging Face tokenizer does not encode as the training tokenizer {V31}" \
        in result.stderr
    assert "texts encode differently; the first, probe" in result.stderr
    assert "Hugging Face:  [1, " in result.stderr and "SentencePiece: [1, " in result.stderr
    assert MODEL_ONLY_MESSAGE in result.stderr and f"make hf-tokenizer TOKENIZER_MODEL={V31}" in result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "a folder it did not build is not touched"


def test_model_only_and_other_folders_are_refused(demo_model, bpe_model, tmp_path):
    folder = model_only_folder(demo_model, tmp_path / "model-only")
    with pytest.raises(PipelineError, match=MODEL_ONLY_MESSAGE):
        verify_hf_tokenizer(folder, demo_model)
    other = tmp_path / "bpe-hf"
    write_hf_tokenizer(bpe_model, other)
    with pytest.raises(PipelineError) as caught:
        verify_hf_tokenizer(other, demo_model)
    message = str(caught.value)
    assert f"{other}: its Hugging Face tokenizer does not encode as the training tokenizer {demo_model}" in message
    assert "tokens, the training tokenizer" in message and "texts encode differently" in message
    with pytest.raises(PipelineError, match="transformers' AutoTokenizer cannot load a tokenizer"):
        verify_hf_tokenizer(tmp_path, demo_model)


def test_converter_refuses_a_model_only_folder_before_reading_a_tensor(tmp_path):
    """The native converter on a checkpoint upstream Megatron-LM wrote: the run's tokenizer comes from Megatron's
    own copy in the checkpoint; a `.model`-only folder is refused and nothing is written."""
    from pipeline.convert_native import convert_checkpoint
    folder = model_only_folder(UPSTREAM / "tokenizer.model", tmp_path / "model-only")
    out = tmp_path / "checkpoints_hf" / "iter_0000050"
    with pytest.raises(PipelineError, match=MODEL_ONLY_MESSAGE):
        convert_checkpoint(UPSTREAM / "mid-seed1", out, tokenizer=folder, dtype="fp32", show_progress=False,
                           log=lambda _: None)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    good = tmp_path / "hf"
    write_hf_tokenizer(UPSTREAM / "tokenizer.model", good)
    with pytest.raises(PipelineError, match="a different SentencePiece model"):
        convert_checkpoint(UPSTREAM / "mid-seed1", out, tokenizer=good, tokenizer_model=demo_model_path(tmp_path),
                           dtype="fp32", show_progress=False, log=lambda _: None)
    convert_checkpoint(UPSTREAM / "mid-seed1", out, tokenizer=good, dtype="fp32", show_progress=False,
                       log=lambda _: None)
    record = json.loads((out / "megatron_conversion.json").read_text())["tokenizer_check"]
    assert record["passed"] and record["tokenizer_model"].endswith("iter_0000050/tokenizer/tokenizer.model")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch
    tokenizer, model = AutoTokenizer.from_pretrained(str(out)), AutoModelForCausalLM.from_pretrained(str(out))
    text = "The model data training token mixture source weight average seed curve loss rate step."
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == sp_document(UPSTREAM / "tokenizer.model", text)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 4.0, "the trained model reads its own tokenizer's ids as text it knows"


def demo_model_path(tmp_path: Path) -> Path:
    """Another SentencePiece model than the run's (the small one of the conversion tests)."""
    from convert_helpers import small_tokenizer
    return small_tokenizer(tmp_path / "other")[0]


def test_soup_refuses_ingredients_whose_tokenizer_differs(make, exp_dir, tmp_path):
    """Two runs converted from upstream Megatron-LM's checkpoints: their conversion records name the training
    tokenizer; ingredients carrying a `.model`-only folder instead, or a TOKENIZER_MODEL other than the runs',
    are refused before any merge."""
    from pipeline.convert_native import convert_checkpoint
    from pipeline.paths import run_dir
    good = tmp_path / "hf"
    write_hf_tokenizer(UPSTREAM / "tokenizer.model", good)
    paths = []
    for seed in (1, 2):
        out = run_dir(exp_dir, "t", "tiny", "mid", seed) / "checkpoints_hf" / "iter_0000050"
        convert_checkpoint(UPSTREAM / f"mid-seed{seed}", out, tokenizer=good, dtype="fp32", show_progress=False,
                           log=lambda _: None)
        paths.append(out)
    knobs = ("TASK=t", "PARAM=tiny", "SIZE=mid", "SEEDS=1 2", "SOUP_NAME=s", f"SOUP_CONFIG_DIR={tmp_path / 'merge'}",
             "SOUP_DTYPE=float32")
    make("soup-config", *knobs)
    config = f"SOUP_CONFIG={tmp_path / 'merge' / 's.yaml'}"
    other = demo_model_path(tmp_path)
    refused = make("soup", config, f"TOKENIZER_MODEL={other}", check=False)
    assert refused.returncode != 0 and "a different SentencePiece model" in refused.stdout + refused.stderr
    model_only = model_only_folder(UPSTREAM / "tokenizer.model", tmp_path / "model-only")
    for path in paths:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (path / name).unlink()
        for source in model_only.iterdir():
            shutil.copyfile(source, path / source.name)
    refused = make("soup", config, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and f"error: {paths[0]}: its Hugging Face tokenizer does not encode" in output
    assert MODEL_ONLY_MESSAGE in output
    assert not (exp_dir / "soups").exists(), "nothing merged"
