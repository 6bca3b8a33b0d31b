"""Block-size candidates of the vector-B kernels that `benchmarks/sweep.py` times on a GPU, defaults first.

Each list starts with the built-in default, so the sweep can say by how much a candidate beats it. The
comments give the sm_90 builds (Triton 3.9, bf16, 81M shapes; `python benchmarks/sweep.py --sass` prints
them): registers per thread without / with GELU in training, shared memory. None spills unless noted.
"""

from __future__ import annotations

from kronypt.kernels.vector_b_backward import REDUCE_DEFAULT, reduce_config
from kronypt.kernels.vector_b_forward import DEFAULTS, tile_config

# `vector_b_forward` per orientation: (BLOCK_T, BLOCK_A, BLOCK_C, EPI, warps, stages[, SPLIT]).
FORWARD = {
    "column": [  # B one column (81M's c_fc)
        DEFAULTS["column"],                         # 60 / 64 registers, 96 KB
        tile_config(128, 128, 64, 4, 8, 4),         # 136 / 153, 128 KB
        tile_config(128, 128, 64, 4, 16, 4),        # 70 / 77, 128 KB
        tile_config(128, 128, 128, 4, 16, 2),       # 90 / 88, 128 KB
        tile_config(128, 128, 64, 2, 16, 3),        # two 256-column epilogue slices
        tile_config(64, 128, 64, 4, 8, 3),          # 72 KB: 3 blocks per SM
        tile_config(64, 128, 64, 4, 8, 3, split=2),  # x loaded once for 256 rows of A: 121 / 153, 120 KB
    ],
    "row": [  # B one row (81M's c_proj)
        DEFAULTS["row"],                            # 114 / 167 registers, 84 KB
        tile_config(64, 256, 32, 1, 4, 3),          # 206, 84 KB
        tile_config(64, 256, 64, 1, 8, 3),          # 170, 164 KB
        tile_config(64, 512, 32, 1, 16, 3),         # 117, 132 KB: x re-read 2x from L2 instead of 3x
        # all 768 outputs of a token tile in one program: x loaded once, never re-read from L2
        tile_config(64, 256, 32, 1, 8, 3, split=3),  # 255, 180 KB
        tile_config(64, 256, 32, 1, 8, 2, split=3),  # 255, 116 KB
        tile_config(64, 128, 32, 1, 8, 3, split=3),  # 207, 108 KB (384 rows: x read 2x)
    ],
    "column3": [  # B one column of 3 (86M's c_fc, gathered epilogue)
        DEFAULTS["column3"],                        # 98 / 120 registers, 72 KB
        tile_config(128, 128, 64, 4, 16, 3),        # 103 / 128 (32 B spilled with GELU), 96 KB
        tile_config(128, 64, 64, 4, 8, 3),          # 89 / 106, 72 KB
        tile_config(64, 64, 64, 4, 4, 3),           # 96 / 118, 48 KB
    ],
}

# `vector_b_backward.reduce`: tiles without spills (sm_90: (64, 64) and (32, 128) spill), G read as 3-D rows
# of m2 (8-byte loads) or, LOAD_2D, as 2-D rows (16-byte loads) reshaped in registers; SUM_EACH (both sums
# reduced per tile: fewer registers, more programs per SM), PER_SM (programs per SM in the grid) and
# STAGES (the token loop's loads as pipelined asynchronous copies). Registers for c_fc / c_proj.
REDUCE = [
    REDUCE_DEFAULT,
    reduce_config(32, 64, 8, load_2d=0), reduce_config(16, 64, 4, load_2d=0), reduce_config(16, 128, 8, load_2d=0),
    reduce_config(32, 64, 8), reduce_config(16, 128, 8),
    reduce_config(16, 32, 4), reduce_config(16, 32, 2), reduce_config(8, 128, 4), reduce_config(32, 32, 4),
    reduce_config(16, 64, 4, sum_each=1, per_sm=4),            # 96 / 72
    reduce_config(16, 64, 4, sum_each=1, per_sm=8),            # 96 / 72
    reduce_config(16, 64, 4, stages=3),                        # 174 / 116, 26 KB shared
    reduce_config(16, 64, 4, sum_each=1, stages=3, per_sm=3),  # 149 / 77
    reduce_config(16, 64, 4, sum_each=1, stages=2, per_sm=3),  # 144 / -
    reduce_config(32, 64, 4, sum_each=1, per_sm=3),            # 141 / 127
    reduce_config(16, 128, 4, sum_each=1, per_sm=3),           # 139 / 127
    reduce_config(32, 64, 8, sum_each=1, stages=3, per_sm=2),  # 127 / 79, 53 KB shared
]
