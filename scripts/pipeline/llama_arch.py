"""The architecture of a Hugging Face Llama folder, read from its config.json: one definition for the
converter that writes it and the soup that checks its ingredients and result against each other.

transformers 5 moved `rope_theta` into `rope_parameters` and drops keys it does not use when it saves a
config (as mergekit does), so configs are compared through `architecture()`, never key by key.
"""
from __future__ import annotations

from typing import Any

# what makes two checkpoints the same network (tokens ids, dtype, cache flags, versions are not)
ARCH_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps",
             "rope_theta", "rope_type", "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias")
DEFAULTS = {"rope_type": "default", "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "hidden_act": "silu"}


def architecture(config: dict) -> dict[str, Any]:
    """ARCH_KEYS of `config`, with transformers 4 and 5 spellings and defaults made one."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    found: dict[str, Any] = {}
    for key in ARCH_KEYS:
        if key in ("rope_theta", "rope_type"):
            value = rope.get(key, config.get(key))
        else:
            value = config.get(key)
        if value is None and key == "head_dim" and config.get("hidden_size") and config.get("num_attention_heads"):
            value = config["hidden_size"] // config["num_attention_heads"]
        if value is None and key == "num_key_value_heads":
            value = config.get("num_attention_heads")
        found[key] = DEFAULTS.get(key) if value is None else value
    if isinstance(found["rope_theta"], int):
        found["rope_theta"] = float(found["rope_theta"])
    return found


def architecture_differences(a: dict, b: dict) -> list[str]:
    """'key: a vs b' for every architecture key where the configs `a` and `b` disagree."""
    arch_a, arch_b = architecture(a), architecture(b)
    return [f"{k}: {arch_a[k]!r} vs {arch_b[k]!r}" for k in ARCH_KEYS if arch_a[k] != arch_b[k]]
