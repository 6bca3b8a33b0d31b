"""The GPT-2 family's configurations, known offline so planning needs no download."""

from __future__ import annotations

from transformers import GPT2Config

# n_layer, n_embd, n_head of the published checkpoints (all: vocab 50257, context 1024, tied head).
GPT2_FAMILY: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
    "distilgpt2": (6, 768, 12),
}

HUB_ALIASES = {"openai-community/" + name: name for name in GPT2_FAMILY if name != "distilgpt2"}
HUB_ALIASES["distilbert/distilgpt2"] = "distilgpt2"


def family_config(name: str) -> GPT2Config | None:
    """The GPT2Config of a known family member (by short or hub name), or None."""
    key = HUB_ALIASES.get(name, name)
    if key not in GPT2_FAMILY:
        return None
    n_layer, n_embd, n_head = GPT2_FAMILY[key]
    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=50257, n_positions=1024)
