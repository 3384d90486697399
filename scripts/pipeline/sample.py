"""A small sample laid out exactly like allenai/dolmino-mix-1124, with the real layout's traps.

Text is generated here (deterministic pseudo-random English, Japanese, math and code), so the demo
and the tests need no download. Traps reproduced (as in the real layout): every extension the real repo
mixes (.json.zst, .json.gz, .jsonl.gz, .jsonl.zst, plain .jsonl); files whose last line has no
trailing newline (codesearchnet, dolmino_math_synth); a gsm8k test split that must never reach
training; blank lines in gsm8k; the misspelled `probem-solving` style folder.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

WORDS = ("the model data training token mixture source weight average seed curve loss rate step "
         "batch sequence document index shard merge extract corpus science paper answer question "
         "network layer attention gradient optimizer schedule checkpoint evaluation benchmark").split()
JAPANESE = ["今日は良い天気です。", "機械学習のモデルを訓練します。", "東京は日本の首都です。",
            "データセットを作成しました。", "数学の問題を解いてください。"]
ACCENTED = ["café", "naïve", "résumé", "Zürich", "São Paulo", "Ελληνικά", "emoji 🚀"]
CODE = ["def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; i++) {\n  sum += i;\n}\n",
        "SELECT id, text FROM docs WHERE id > 10;\n", "fn main() {\n    println!(\"hi\");\n}\n"]

DCLM_DIRS = 12  # 0000..0011: two merge groups, 0000-0009 and 0010-0011
GSM_MIND_STYLES = ["2students", "debate", "interview", "layman-knowall", "probem-solving",
                   "teacher-student", "two-professors"]


@dataclass
class SampleFile:
    path: str            # relative to the sample root
    documents: int       # JSON documents in the file
    blank_lines: int = 0
    test_split: bool = False


@dataclass
class Sample:
    root: Path
    files: list[SampleFile] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return sum(f.documents for f in self.files)

    @property
    def training_documents(self) -> int:
        return sum(f.documents for f in self.files if not f.test_split)


class _Writer:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.sample = Sample(root)
        self.counter = 0

    def text(self, kind: str) -> str:
        rng = self.rng
        sentences = []
        for _ in range(rng.randint(1, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
            sentences.append(" ".join(words).capitalize() + ".")
        if kind == "math":
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            sentences.append(f"Question: what is {a} + {b}? Answer: {a + b}. So $x^2 = {a * a}$.")
        if kind == "code" or rng.random() < 0.1:
            sentences.append(rng.choice(CODE))
        if rng.random() < 0.3:
            sentences.append(rng.choice(JAPANESE))
        if rng.random() < 0.2:
            sentences.append(rng.choice(ACCENTED))
        if rng.random() < 0.1:
            sentences.append("\n\n  indented line\twith a tab and trailing spaces   ")
        return (" " if rng.random() < 0.7 else "\n").join(sentences)

    def record(self, source: str, kind: str, extra: dict | None = None) -> dict:
        self.counter += 1
        doc = {"id": f"{source}-{self.counter:07d}", "text": self.text(kind), "source": source,
               "added": "2024-11-24T00:00:00.000Z", "created": "2024-01-01T00:00:00.000Z",
               "metadata": {"length": 0}}
        doc["metadata"]["length"] = len(doc["text"])
        if extra:
            doc.update(extra)
        return doc

    def write(self, rel: str, source: str, docs: int, kind: str = "web", *, trailing_newline: bool = True,
              blank_lines: int = 0, test_split: bool = False, extra: dict | None = None) -> None:
        lines = [json.dumps(self.record(source, kind, extra), ensure_ascii=self.rng.random() < 0.5)
                 for _ in range(docs)]
        for _ in range(blank_lines):
            lines.insert(self.rng.randint(0, len(lines)), "")
        payload = "\n".join(lines) + ("\n" if trailing_newline else "")
        data = payload.encode("utf-8")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".zst"):
            data = zstandard.ZstdCompressor(level=3).compress(data)
        elif rel.endswith(".gz"):
            data = gzip.compress(data, compresslevel=6, mtime=0)
        path.write_bytes(data)
        self.sample.files.append(SampleFile(rel, docs, blank_lines, test_split))


def texts(count: int, seed: int) -> list[str]:
    """`count` documents of the sample's kinds (web, code, math in turn) from `seed`: with another seed than the
    sample's, held-out text of the same kind (make gpu-check scores the trained models on it)."""
    writer = _Writer(Path("."), random.Random(seed))
    return [writer.text(("web", "code", "math")[i % 3]) for i in range(count)]


def generate(root: str | Path, seed: int = 0, docs: int = 20) -> Sample:
    """Write the sample under `root` (its `data/` tree, as on the hub); returns what was written.

    `docs` scales every file; the same seed and size always give byte-identical files.
    """
    root = Path(root)
    w = _Writer(root, random.Random(seed))
    d = "data"
    for directory in range(DCLM_DIRS):
        for part in range(2):
            w.write(f"{d}/dclm/{directory:04d}/dclm-{part:04d}.json.zst", "dclm", docs)
    for part in range(2):
        w.write(f"{d}/flan/tulu_flan-{part:04d}.json.gz", "flan", docs)
    w.write(f"{d}/pes2o/pes2o-0000.json.gz", "pes2o", docs)
    w.write(f"{d}/stackexchange/stackexchange-0000.json.gz", "stackexchange", docs, "code")
    w.write(f"{d}/wiki/wiki-0000.json.gz", "wiki", docs)
    m = f"{d}/math"
    for lang in ("go", "java", "javascript", "php", "python", "ruby"):
        w.write(f"{m}/codesearchnet-owmfilter/{lang}/0000.jsonl.gz", "codesearchnet", max(2, docs // 4), "code",
                trailing_newline=False)
    w.write(f"{m}/dolmino_math_synth/basic_math/mult.jsonl", "math_synth", max(2, docs // 2), "math",
            trailing_newline=False)
    w.write(f"{m}/dolmino_math_synth/gsm8k-synth/resample_v1_6x/train.jsonl", "math_synth", max(2, docs // 2),
            "math", trailing_newline=False)
    for style in GSM_MIND_STYLES:
        w.write(f"{m}/dolmino_math_synth/gsm_mind/{style}/0000.jsonl", "gsm_mind", max(2, docs // 4), "math",
                trailing_newline=False)
    for variant in ("main", "socratic"):
        w.write(f"{m}/gsm8k/{variant}/train/0.jsonl.zst", "gsm8k", docs, "math", blank_lines=3)
        w.write(f"{m}/gsm8k/{variant}/test/0.jsonl.zst", "gsm8k-test", max(2, docs // 4), "math",
                blank_lines=1, test_split=True)
    w.write(f"{m}/mathcoder2-synthmath/ajibawa-2023/0000.jsonl", "mathcoder2", docs, "math")
    w.write(f"{m}/mathcoder2-synthmath/m-a-p_Matrix/filtered-math/0000.jsonl", "mathcoder2", docs, "math")
    w.write(f"{m}/metamath-owmfilter/0000.jsonl.gz", "metamath", docs, "math",
            extra={"query": "q", "response": "r", "type": "GSM_Rephrased"})
    for style in ("2students", "problem-solving"):
        w.write(f"{m}/tinyGSM-MIND/{style}/0000.jsonl.gz", "tinygsm", docs, "math")
    for subset in ("personahub_interm_alg", "personahub_math_grade", "personahub_math_v5"):
        w.write(f"{m}/tulu_math/{subset}/0000.jsonl", "tulu_math", max(2, docs // 2), "math",
                extra={"messages": [{"role": "user", "content": "x"}]})
    return w.sample


def generate_parquet(root: str | Path, seed: int = 0, files: int = 3, rows: int = 20,
                     text_column: str = "text") -> Sample:
    """A MegaMath-Web-Pro-Max-like raw tree: `data/train-NNNNN.parquet` with text, url and score columns.

    `text_column` renames the text column (to test a schema without `text`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    w = _Writer(root, random.Random(seed))
    for part in range(files):
        texts = [w.text("math") for _ in range(rows)]
        table = pa.table({text_column: texts,
                          "url": [f"https://example.org/{part}/{i}" for i in range(rows)],
                          "score": [round(w.rng.random(), 4) for _ in range(rows)]})
        rel = f"data/train-{part:05d}.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / rel, row_group_size=max(1, rows // 2))
        w.sample.files.append(SampleFile(rel, rows))
    return w.sample
