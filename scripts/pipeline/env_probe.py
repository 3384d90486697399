"""Run BY THE ENVIRONMENT'S PYTHON to report what it has; standard library only, Python >= 3.8.

    <env python> env_probe.py '{"megatron": "/env/src/Megatron-LM", "helper": "megatron/core/datasets/helpers",
                                "tokenizers": ["/env/src/llm-jp-tokenizer/models/.../x.model"]}'

Prints one line per finding, `ENVCHECK {"key": ..., ...}`, flushed as it goes, so that a crash in
one import (a C++ extension built against another torch) still leaves everything found before it.
scripts/env_check.py judges the findings against the pins; this file judges nothing.
"""
import json
import os
import sys
import traceback

PREFIX = "ENVCHECK "


def emit(key, **fields):
    fields["key"] = key
    sys.stdout.write(PREFIX + json.dumps(fields, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def error_text(exc):
    text = "%s: %s" % (type(exc).__name__, exc)
    return " ".join(text.split())[:300]


def dist_version(*names):
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    for name in names:
        try:
            return metadata.version(name)
        except Exception:
            continue
    return None


def probe_python():
    import sysconfig
    emit("python", version="%d.%d.%d" % sys.version_info[:3], executable=sys.executable,
         prefix=sys.prefix, ext_suffix=sysconfig.get_config_var("EXT_SUFFIX"),
         venv=sys.prefix != getattr(sys, "base_prefix", sys.prefix))
    emit("env", **{name: os.environ.get(name) for name in (
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "CUDA_DEVICE_MAX_CONNECTIONS",
        "NVTE_FUSED_ATTN", "MEGATRON_PATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")})


def probe_torch():
    try:
        import torch
    except Exception as exc:
        emit("torch", ok=False, error=error_text(exc))
        return None
    emit("torch", ok=True, version=torch.__version__, cuda_build=getattr(torch.version, "cuda", None),
         file=getattr(torch, "__file__", None))
    try:
        available = bool(torch.cuda.is_available())
        count = int(torch.cuda.device_count()) if available else 0
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        emit("cuda", ok=True, available=available, device_count=count, names=names)
    except Exception as exc:
        emit("cuda", ok=False, error=error_text(exc))
    # What Megatron does with a checkpoint's common state: an argparse.Namespace inside a pickle,
    # loaded with torch.load's default weights_only (True from torch 2.6 unless the setting says no).
    try:
        import argparse
        import io
        import warnings
        buffer = io.BytesIO()
        torch.save({"args": argparse.Namespace(num_layers=2), "iteration": 1}, buffer)
        buffer.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(buffer, map_location="cpu")
        emit("weights_only", ok=True, loaded=state["args"].num_layers == 2)
    except Exception as exc:
        emit("weights_only", ok=False, error=error_text(exc))
    return torch


def probe_module(key, module, dist_names, extra=None):
    try:
        imported = __import__(module, fromlist=["_"])
    except Exception as exc:
        emit(key, ok=False, error=error_text(exc))
        return
    version = getattr(imported, "__version__", None) or dist_version(*dist_names)
    fields = {"ok": True, "version": version, "file": getattr(imported, "__file__", None)}
    if extra is not None:
        try:
            fields.update(extra())
        except Exception as exc:
            fields["extra_error"] = error_text(exc)
    emit(key, **fields)


def apex_extensions():
    found = {}
    for name in ("amp_C", "fused_layer_norm_cuda"):
        try:
            __import__(name)
            found[name] = True
        except Exception:
            found[name] = False
    return {"cuda_ext": found}


def probe_megatron(megatron, helper):
    if not megatron:
        return
    sys.path.insert(0, megatron)
    try:
        import megatron.core as core
        version = None
        try:
            from megatron.core import package_info
            version = getattr(package_info, "__version__", None)
        except Exception:
            pass
        emit("megatron_import", ok=True, version=version, file=getattr(core, "__file__", None))
    except Exception as exc:
        emit("megatron_import", ok=False, error=error_text(exc))
    if helper:
        import importlib.util
        import sysconfig
        path = os.path.join(megatron, helper) + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        if not os.path.isfile(path):
            emit("megatron_helper_load", ok=False, path=path, error="not built")
            return
        try:
            name = os.path.basename(path).split(".")[0]
            spec = importlib.util.spec_from_file_location(name, path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            emit("megatron_helper_load", ok=True, path=path)
        except Exception as exc:
            emit("megatron_helper_load", ok=False, path=path, error=error_text(exc))


def probe_tokenizers(paths):
    for path in paths:
        if not os.path.isfile(path):
            emit("tokenizer_load", path=path, ok=False, error="missing")
            continue
        try:
            import sentencepiece
        except Exception as exc:
            emit("tokenizer_load", path=path, ok=None, error="sentencepiece not importable: " + error_text(exc))
            continue
        try:
            processor = sentencepiece.SentencePieceProcessor(model_file=path)
            emit("tokenizer_load", path=path, ok=True, pieces=processor.get_piece_size(),
                 bos=processor.bos_id(), eos=processor.eos_id())
        except Exception as exc:
            emit("tokenizer_load", path=path, ok=False, error=error_text(exc))


def main(argv):
    request = json.loads(argv[1]) if len(argv) > 1 else {}
    probe_python()
    probe_torch()
    probe_module("torchvision", "torchvision", ["torchvision"])
    probe_module("apex", "apex", ["apex"], extra=apex_extensions)
    probe_module("flash_attn", "flash_attn", ["flash_attn", "flash-attn"])
    probe_module("transformer_engine", "transformer_engine.pytorch",
                 ["transformer_engine", "transformer-engine", "transformer_engine_torch"],
                 extra=lambda: {"version": getattr(sys.modules.get("transformer_engine"), "__version__", None)
                                or dist_version("transformer_engine", "transformer-engine")})
    probe_module("lm_eval", "lm_eval", ["lm_eval", "lm-eval"])
    probe_megatron(request.get("megatron"), request.get("helper"))
    probe_tokenizers(request.get("tokenizers") or [])
    emit("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception:
        traceback.print_exc()
        emit("probe_error", error=traceback.format_exc().splitlines()[-1])
        sys.exit(1)
