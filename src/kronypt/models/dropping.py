"""Drop whole blocks: which ones (ShortGPT's block influence on calibration text, or spread evenly as DistilGPT2
kept every other block), and removing them so the model stays a plain model of its architecture."""

from __future__ import annotations

from torch import nn

from kronypt.models.calibration import Calibration, block_influence
from kronypt.models.families import MlpLayout


def choose_blocks(model: nn.Module, layout: MlpLayout, count: int, how: str, candidates: list[int] | None = None,
                  calibration: Calibration | None = None) -> list[int]:
    """The `count` blocks to drop among `candidates` (every block by default): the least influential on the
    calibration windows ("importance"), or spread evenly over them ("every-other": every second block when half
    go)."""
    pool = list(range(layout.blocks)) if candidates is None else list(candidates)
    if how == "every-other":
        step = len(pool) / count
        return sorted(pool[min(len(pool) - 1, int((i + 0.5) * step))] for i in range(count))
    influence = block_influence(model, layout.family, calibration)
    ranked = sorted(pool, key=lambda i: (influence[i], i))
    return sorted(ranked[:count])


def drop_blocks_(model: nn.Module, layout: MlpLayout, blocks: list[int]) -> None:
    """Remove `blocks` from the model in place: the block list, the config's depth (and per-layer lists such as
    `layer_types`), each remaining block's cache index (so generation with a KV cache still works) and, in a
    compressed model, the paths of its compressed matrices."""
    holder = model.get_submodule(layout.family.blocks)
    keep = [i for i in range(len(holder)) if i not in set(blocks)]
    modules = getattr(model.config, "compressed_modules", None)
    if modules:
        moved = {renumbered(path, layout.family.blocks, keep): spec for path, spec in modules.items()}
        model.config.compression = {"modules": {path: spec for path, spec in moved.items() if path is not None}}
    kept = nn.ModuleList(holder[i] for i in keep)
    model.set_submodule(layout.family.blocks, kept)
    for index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    config = model.config
    config.num_hidden_layers = len(keep)
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == layout.blocks and key.startswith("layer"):
            setattr(config, key, [value[i] for i in keep])


def renumbered(path: str, blocks: str, keep: list[int]) -> str | None:
    """A module path after dropping blocks: its block's new index, None inside a dropped block, as it was outside
    the blocks. `blocks` is the family's block list ("model.layers"), `keep` the old indices that remain."""
    prefix = f"{blocks}."
    if not path.startswith(prefix):
        return path
    index, _, rest = path.removeprefix(prefix).partition(".")
    if int(index) not in keep:
        return None
    return f"{prefix}{keep.index(int(index))}.{rest}"
