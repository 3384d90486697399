"""Helpers for the conversion tests: a tiny Hugging Face Llama, its inverse mapping to Megatron's
`torch_dist` layout, and a writer that saves several such checkpoints in one subprocess.

The inverse mapping is the test's own (independent of scripts/pipeline/convert_native.py): per layer,
q/k/v are regrouped per query group ([q heads of group g; k_g; v_g]) into `linear_qkv`, gate and up
are stacked into `linear_fc1`, the two norms become the `layer_norm_weight` of the fused linears,
and every per-layer tensor is stacked on a leading layer dimension; the vocabulary is padded with
junk rows (so that a converter which forgets to remove them fails).

`write_checkpoints([...])` saves with megatron-core's own `dist_checkpointing.save` (world size 1,
gloo) and can split each tensor the way a TP x PP run stores it (several chunks per tensor), or, with
`common_in_shards`, writes the common state inside the shards as newer Megatron does (like
tests/megatron_fixture.py, whose format it follows).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

TRACKER = "latest_checkpointed_iteration.txt"


def tiny_llama_config(vocab_size: int = 250, tied: bool = False, **overrides):
    from transformers import LlamaConfig
    values = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=tied, attention_bias=False,
                  mlp_bias=False, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **config_overrides):
    """A randomly initialised fp32 LlamaForCausalLM; norms are random too (not all ones)."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**config_overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    return model


def megatron_args(config, padded_vocab: int, **overrides) -> argparse.Namespace:
    """The arguments Megatron would save for this architecture (a representative subset)."""
    values = dict(num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                  ffn_hidden_size=config.intermediate_size, num_attention_heads=config.num_attention_heads,
                  group_query_attention=config.num_key_value_heads != config.num_attention_heads,
                  num_query_groups=config.num_key_value_heads, kv_channels=config.head_dim,
                  seq_length=config.max_position_embeddings, max_position_embeddings=config.max_position_embeddings,
                  position_embedding_type="rope", rotary_base=int(config.rope_parameters["rope_theta"]),
                  rotary_percent=1.0, rotary_interleaved=False, use_rope_scaling=False,
                  normalization="RMSNorm", norm_epsilon=config.rms_norm_eps, swiglu=True,
                  add_bias_linear=False, add_qkv_bias=False, qk_layernorm=False, apply_layernorm_1p=False,
                  untie_embeddings_and_output_weights=not config.tie_word_embeddings,
                  padded_vocab_size=padded_vocab, make_vocab_size_divisible_by=128, vocab_size=None,
                  tokenizer_type="Llama2Tokenizer", num_experts=None, bf16=False, fp16=False,
                  params_dtype=torch.float32, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                  iteration=0, consumed_train_samples=0, world_size=1)
    values.update(overrides)
    return argparse.Namespace(**values)


def common_state(args: argparse.Namespace, iteration: int) -> dict:
    return {"args": args, "iteration": iteration, "checkpoint_version": 3.0,
            "opt_param_scheduler": {"num_steps": iteration * 8}, "num_floating_point_operations_so_far": 0.0}


def hf_to_megatron(model, padded_vocab: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """The test's inverse mapping: HF LlamaForCausalLM weights -> Megatron torch_dist tensors."""
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    L, H, d = cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim
    n, g = cfg.num_attention_heads, cfg.num_key_value_heads
    junk = torch.Generator().manual_seed(seed)

    def pad(weight: torch.Tensor) -> torch.Tensor:
        extra = torch.randn(padded_vocab - weight.shape[0], H, generator=junk) * 100.0
        return torch.cat([weight, extra])

    def qkv(i: int) -> torch.Tensor:
        q = sd[f"model.layers.{i}.self_attn.q_proj.weight"].view(g, n // g, d, H)
        k = sd[f"model.layers.{i}.self_attn.k_proj.weight"].view(g, 1, d, H)
        v = sd[f"model.layers.{i}.self_attn.v_proj.weight"].view(g, 1, d, H)
        return torch.cat([q, k, v], dim=1).reshape((n + 2 * g) * d, H)

    def stack(fn) -> torch.Tensor:
        return torch.stack([fn(i) for i in range(L)])

    tensors = {
        "embedding.word_embeddings.weight": pad(sd["model.embed_tokens.weight"]),
        "decoder.layers.self_attention.linear_qkv.weight": stack(qkv),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight":
            stack(lambda i: sd[f"model.layers.{i}.input_layernorm.weight"]),
        "decoder.layers.self_attention.linear_proj.weight":
            stack(lambda i: sd[f"model.layers.{i}.self_attn.o_proj.weight"]),
        "decoder.layers.mlp.linear_fc1.weight": stack(lambda i: torch.cat(
            [sd[f"model.layers.{i}.mlp.gate_proj.weight"], sd[f"model.layers.{i}.mlp.up_proj.weight"]])),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight":
            stack(lambda i: sd[f"model.layers.{i}.post_attention_layernorm.weight"]),
        "decoder.layers.mlp.linear_fc2.weight": stack(lambda i: sd[f"model.layers.{i}.mlp.down_proj.weight"]),
        "decoder.final_layernorm.weight": sd["model.norm.weight"],
    }
    if not cfg.tie_word_embeddings:
        tensors["output_layer.weight"] = pad(sd["lm_head.weight"])
    return tensors


def with_optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adds Adam moments the way Megatron names them (they must be ignored by the converter)."""
    extra = {}
    for name in ("decoder.layers.mlp.linear_fc2.weight", "embedding.word_embeddings.weight"):
        extra[f"optimizer.state.exp_avg.{name}"] = torch.full_like(tensors[name], 0.5)
        extra[f"optimizer.state.exp_avg_sq.{name}"] = torch.full_like(tensors[name], 0.25)
    return {**tensors, **extra}


# How a TP x PP run splits each tensor: name -> (axis split by TP, fragments per TP rank); per-layer
# tensors are also split by PP along the stacked layer axis.
_TP_AXIS = {
    "embedding.word_embeddings.weight": (0, 1),
    "output_layer.weight": (0, 1),
    "decoder.layers.self_attention.linear_qkv.weight": (1, 1),
    "decoder.layers.self_attention.linear_proj.weight": (2, 1),
    "decoder.layers.mlp.linear_fc1.weight": (1, 2),   # [gate; up]: each rank holds a piece of both
    "decoder.layers.mlp.linear_fc2.weight": (2, 1),
}


def write_checkpoints(jobs: list[dict]) -> None:
    """Write several checkpoints in one subprocess. Each job: root, iteration, tensors, common, and
    optionally tp/pp (chunking, megatron-core saver) or common_in_shards=True (plain DCP, as newer Megatron)."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "payload.pt"
        torch.save({"jobs": [{**job, "root": str(job["root"])} for job in jobs], "pg_file": str(Path(tmp) / "pg")},
                   payload)
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(payload)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"checkpoint writer failed:\n{result.stdout}\n{result.stderr}")
    for job in jobs:
        (Path(job["root"]) / TRACKER).write_text(str(job["iteration"]))


def _split(name: str, tensor: torch.Tensor, tp: int, pp: int) -> list[tuple[torch.Tensor, list[tuple[int, int, int]]]]:
    """(piece, rank offsets) for every chunk a TP x PP run would store of `name`."""
    layered = name.startswith("decoder.layers.")
    pieces = [(tensor, [])]
    if layered and pp > 1:
        pieces = [(chunk, [(0, r, pp)]) for r, chunk in enumerate(tensor.chunk(pp, dim=0))]
    if name in _TP_AXIS and tp > 1:
        axis, per_rank = _TP_AXIS[name]
        out = []
        for piece, offsets in pieces:
            for r, chunk in enumerate(piece.chunk(tp * per_rank, dim=axis)):
                out.append((chunk, offsets + [(axis, r, tp * per_rank)]))
        pieces = out
    return pieces


def _save(payload_path: str) -> None:
    import io

    import torch.distributed as dist

    payload = torch.load(payload_path, weights_only=False)
    torch.cuda.synchronize = lambda *a, **k: None  # see tests/megatron_fixture.py
    torch.cuda.current_device = lambda: "cpu"
    dist.init_process_group("gloo", init_method=f"file://{payload['pg_file']}", rank=0, world_size=1)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    import torch.distributed.checkpoint as dcp
    for job in payload["jobs"]:
        iter_dir = Path(job["root"]) / f"iter_{job['iteration']:07d}"
        iter_dir.mkdir(parents=True, exist_ok=True)
        if job.get("common_in_shards"):
            buffer = io.BytesIO()
            torch.save(job["common"], buffer)
            buffer.seek(0)
            dcp.save({**job["tensors"], "common_state": buffer}, checkpoint_id=str(iter_dir))
            continue
        sharded = {}
        for name, tensor in job["tensors"].items():
            for k, (piece, offsets) in enumerate(_split(name, tensor, job.get("tp", 1), job.get("pp", 1))):
                sharded[f"{name}/{k}"] = ShardedTensor.from_rank_offsets(name, piece.contiguous(), *offsets,
                                                                         replica_id=0)
        dist_checkpointing.save({**job["common"], "sharded": sharded}, str(iter_dir))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _save(sys.argv[1])


# ---------------------------------------------------------------------------------------------
# Checkpoints shared by the conversion tests: written once per pytest process (one subprocess)
# ---------------------------------------------------------------------------------------------
PADDED_VOCAB = 256
ITERATION = 7
EXTRA_TENSORS = {"decoder.layers.self_attention.q_layernorm.weight": torch.ones(4, 16),
                 "decoder.layers.mlp.router.weight": torch.zeros(4, 8, 64)}
_CACHE: dict[str, dict] = {}


def fixture_checkpoints(factory) -> dict:
    """{'model', 'tied_model', and checkpoints folders 'split' (TP2 x PP2 chunks, Adam moments, common.pt),
    'shards' (common state inside the shards), 'tied', 'unknown' (two extra tensors)}; read-only."""
    if "all" not in _CACHE:
        base = factory.mktemp("megatron")
        model = tiny_llama(0)
        tied = tiny_llama(1, tied=True)
        tensors = hf_to_megatron(model, PADDED_VOCAB)
        args = megatron_args(model.config, PADDED_VOCAB)
        common = common_state(args, ITERATION)
        jobs = {
            "split": dict(tensors=with_optimizer_state(tensors), common=common, tp=2, pp=2),
            "shards": dict(tensors=tensors, common=common, common_in_shards=True),
            "tied": dict(tensors=hf_to_megatron(tied, PADDED_VOCAB),
                         common=common_state(megatron_args(tied.config, PADDED_VOCAB), ITERATION)),
            "unknown": dict(tensors={**tensors, **EXTRA_TENSORS}, common=common),
        }
        write_checkpoints([{**job, "root": base / name / "checkpoints", "iteration": ITERATION}
                           for name, job in jobs.items()])
        _CACHE["all"] = {"model": model, "tied_model": tied, "args": args,
                         **{name: base / name / "checkpoints" for name in jobs}}
    return _CACHE["all"]


def token_ids(vocab: int = 250, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(seed))


def load_hf(folder):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(str(folder)).eval()


# ---------------------------------------------------------------------------------------------
# A run folder to convert, and a stand-in Megatron-LM for pbs/convert.pbs
# ---------------------------------------------------------------------------------------------
REPO_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def tiny_params(folder: Path, name: str = "convtiny") -> Path:
    """params/tiny.yaml with the architecture of tiny_llama() (4 layers, ffn 96)."""
    import yaml
    params = yaml.safe_load((REPO_SCRIPTS.parent / "params" / "tiny.yaml").read_text())
    params["model"].update(num_layers=4, ffn_hidden_size=96)
    path = folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params))
    return path


SMALL_TOKENIZER_PIECES = 200      # fits the fixtures' 250-row vocabulary


def small_tokenizer(folder: Path) -> tuple[Path, Path]:
    """(a SentencePiece model of at most SMALL_TOKENIZER_PIECES pieces trained by the sentencepiece library on
    the sample's words, without byte fallback so that it fits the fixtures' vocabulary; its Hugging Face folder
    built by make hf-tokenizer's code) under `folder`, made once."""
    import io

    import sentencepiece as spm
    from pipeline.hf_tokenizer import write_hf_tokenizer
    from pipeline.sample import ACCENTED, CODE, JAPANESE, WORDS
    model, hf_dir = folder / "small.model", folder / "small-hf"
    if not model.is_file():
        sentences = [" ".join(WORDS[i:i + 7]) for i in range(len(WORDS))] + JAPANESE + ACCENTED + CODE
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buffer, model_type="unigram",
                                       vocab_size=SMALL_TOKENIZER_PIECES, hard_vocab_limit=False,
                                       character_coverage=1.0, num_threads=1, minloglevel=2)
        folder.mkdir(parents=True, exist_ok=True)
        model.write_bytes(buffer.getvalue())
    write_hf_tokenizer(model, hf_dir)
    return model, hf_dir


def make_run(exp: Path, checkpoints: Path, params: Path, task: str = "convtask", size: str = "1B",
             seed: int = 42) -> dict:
    """A run folder holding a copy of `checkpoints`, plus the inputs its Megatron arguments need (the training
    tokenizer, a small SentencePiece model, and its Hugging Face folder)."""
    import shutil
    from pipeline.datalist import Entry, write_list
    run = exp / "runs" / task / params.stem / size / f"seed{seed}"
    shutil.copytree(checkpoints, run / "checkpoints")
    data_list = exp / "lists" / "train_data.sh"
    data_list.parent.mkdir(parents=True, exist_ok=True)
    write_list(data_list, [Entry(4096, "data/part_text_document")], "conversion test")
    tokenizer_model, hf_tokenizer = small_tokenizer(exp / "tokenizer")
    return {"run": run, "TASK": task, "PARAM": str(params), "SIZE": size, "SEED": str(seed),
            "DATA_LIST": str(data_list), "TOKENIZER_MODEL": str(tokenizer_model), "HF_TOKENIZER_DIR": str(hf_tokenizer)}


FAKE_PRETRAIN = '''\
"""Stand-in pretrain_gpt.py: records its arguments and environment, writes a 'torch' checkpoint
(one rank file naming the source iteration folder) where --ckpt-convert-save says."""
import json, os, sys
argv = sys.argv[1:]
value = lambda flag: argv[argv.index(flag) + 1]
with open(os.environ["FAKE_MEGATRON_RECORD"] + ".step1.json", "w") as handle:
    json.dump({"argv": argv, "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in
               ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "MASTER_ADDR", "MASTER_PORT", "CUDA_DEVICE_MAX_CONNECTIONS")}},
              handle)
load = value("--load")
iteration = int(open(os.path.join(load, "latest_checkpointed_iteration.txt")).read())
name = f"iter_{iteration:07d}"
save = os.path.join(value("--ckpt-convert-save"), value("--ckpt-convert-format"))
os.makedirs(os.path.join(save, name, "mp_rank_00"))
with open(os.path.join(save, name, "mp_rank_00", "model_optim_rng.json"), "w") as handle:
    json.dump({"source": os.path.realpath(os.path.join(load, name))}, handle)
with open(os.path.join(save, "latest_checkpointed_iteration.txt"), "w") as handle:
    handle.write(str(iteration))
'''

FAKE_CONVERT = '''\
"""Stand-in tools/checkpoint/convert.py (mcore loader, llmjp4_hf saver): records its arguments, then writes
the Hugging Face folder with the native converter, keeping the padded vocabulary as the real saver does.
FAKE_STEP2=silent-failure: print an error and exit 0 like convert.py does when its saver process dies."""
import json, os, sys
argv = sys.argv[1:]
value = lambda flag: argv[argv.index(flag) + 1]
with open(os.environ["FAKE_MEGATRON_RECORD"] + ".step2.json", "w") as handle:
    json.dump({"argv": argv,
               "env": {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}},
              handle)
if os.environ.get("FAKE_STEP2") == "silent-failure":
    print("saver: something went wrong", file=sys.stderr)
    sys.exit(0)
load = value("--load-dir")
iteration = int(open(os.path.join(load, "latest_checkpointed_iteration.txt")).read())
rank = os.path.join(load, f"iter_{iteration:07d}", "mp_rank_00", "model_optim_rng.json")
source = json.load(open(rank))["source"]
sys.path.insert(0, @SCRIPTS@)
from pipeline.convert_native import convert_checkpoint
convert_checkpoint(source, value("--save-dir"), vocab_size=@PADDED@, show_progress=False,
                   dtype={"float32": "fp32", "bfloat16": "bf16"}[value("--save-dtype")])
'''

FAKE_MPIRUN = '''#!/bin/bash
# Stand-in mpirun: records its arguments, then runs the program after the options (one rank).
printf '%s\\n' "$@" > "${FAKE_MEGATRON_RECORD}.mpirun"
while [[ $# -gt 0 && "$1" != bash ]]; do shift; done   # bash pbs/rank_env.sh TRAIN_PYTHON pretrain_gpt.py ...
export OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=1 OMPI_COMM_WORLD_LOCAL_RANK=0
exec "$@"
'''


def fake_megatron(folder: Path) -> dict[str, str]:
    """A MEGATRON_PATH with stand-in pretrain_gpt.py and tools/checkpoint/ (convert.py, the mcore loader and
    llmjp4_hf saver files), and a bin folder with `python` and `mpirun`; returns the environment to add."""
    megatron = folder / "Megatron-LM"
    tools = megatron / "tools" / "checkpoint"
    tools.mkdir(parents=True)
    (megatron / "pretrain_gpt.py").write_text(FAKE_PRETRAIN)
    (tools / "convert.py").write_text(FAKE_CONVERT.replace("@SCRIPTS@", repr(str(REPO_SCRIPTS)))
                                      .replace("@PADDED@", str(PADDED_VOCAB)))
    (tools / "loader_mcore.py").write_text("# stand-in\n")
    (tools / "saver_llmjp4_hf.py").write_text("# stand-in\n")
    from train_helpers import write_fake_parser   # not at the top: this file also runs as a plain script
    write_fake_parser(megatron)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "mpirun").write_text(FAKE_MPIRUN)
    for exe in ("python", "mpirun"):
        (bin_dir / exe).chmod(0o755)
    return {"MEGATRON_PATH": str(megatron), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_MEGATRON_RECORD": str(folder / "record"), "TRAIN_PYTHON": str(bin_dir / "python")}
