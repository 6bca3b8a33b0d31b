import pytest

from kronypt.errors import KronyptError
from kronypt.models.schemes import (
    SCHEMES,
    canonical_scheme,
    config_size,
    pick_for_ratio,
    pick_for_target,
    plan_row,
    plan_rows,
    resolve_scheme,
)
from kronypt.models.sources import offline_config
from tests.conftest import smollm2_config, tiny_config, tiny_llama_config


def size_of(name):
    return config_size(offline_config(name))

# SPEC §2, verbatim: name -> (A of c_fc, B, k, per-matrix params, model params)
SPEC_TABLE = {
    "67M": ((64, 32), (48, 24), 1, 3_200, 67_893_504),
    "67M-alt": ((128, 64), (24, 12), 1, 8_480, 68_020_224),
    "MF1": ((256, 64), (12, 12), 1, 16_528, 68_213_376),
    "MF2": ((1024, 256), (3, 3), 1, 262_153, 74_108_376),
    "80M-2": ((1024, 256), (3, 3), 2, 524_306, 80_400_048),
    "81M": ((768, 768), (4, 1), 1, 589_828, 81_972_576),
    "81M-alt": ((1536, 384), (2, 2), 1, 589_828, 81_972_576),
    "86M": ((1024, 768), (3, 1), 1, 786_435, 86_691_144),
    "86M-3": ((1024, 256), (3, 3), 3, 786_459, 86_691_720),
    "92M-4": ((1024, 256), (3, 3), 4, 1_048_612, 92_983_392),
    "96M": ((1536, 768), (2, 1), 1, 1_179_650, 96_128_304),
    "96M-prune": ((3072, 384), (1, 2), 1, 1_179_650, 96_128_304),
}


def test_dense_gpt2_family_sizes():
    assert size_of("gpt2").dense_params == 124_439_808
    assert size_of("openai-community/gpt2-medium").dense_params == 354_823_168
    assert size_of("distilgpt2").dense_params == 81_912_576
    assert size_of("gpt2").base_params == 67_816_704  # SPEC §2: GPT-2 without its 24 MLP weight matrices


def test_smollm2_size_and_its_mlp():
    size = config_size(smollm2_config())
    layout = size.layout
    assert size.dense_params == 134_515_008  # tied embeddings counted once
    assert (layout.family.name, layout.blocks, layout.hidden, layout.inner) == ("llama", 30, 576, 1536)
    assert size.matrices * layout.matrix_params == 79_626_240  # SPEC §3b
    assert not size.named


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_every_spec_row_is_reproduced(name):
    a, b, k, per_matrix, model = SPEC_TABLE[name]
    assert resolve_scheme(name) == (a, k)
    row = plan_row(size_of("gpt2"), a, k)
    assert (row.a_shape, row.b_shape, row.factors) == (a, b, k)
    assert row.params_per_matrix == per_matrix
    assert row.model_params == model
    assert row.name == name


def test_scalars_add_one_parameter_per_factor_and_matrix():
    row = plan_row(size_of("gpt2"), (1024, 256), 4, scalars=True)
    assert row.model_params == 92_983_392 + 96


def test_plan_rows_hold_all_named_schemes_and_the_enumeration():
    rows = plan_rows(size_of("gpt2"))
    assert {r.name for r in rows if r.name} == set(SCHEMES)
    assert len([r for r in rows if r.factors == 1]) == 22 * 18


def test_target_params_never_picks_a_non_compressing_scheme():
    config = size_of("gpt2")
    for target in (70_000_000, 82_000_000, 100_000_000, 124_439_808, 200_000_000):
        for k in (1, 4):
            row = pick_for_target(config, target, k)
            assert row.compresses and row.model_params <= target and row.factors == k
    assert pick_for_target(config, 81_972_576).model_params == 81_972_576


def test_target_ties_go_to_the_named_scheme():
    # A 4x1 with B 768x768 has 81M's counts, rank and FLOPs too; the paper's 81M is the larger A.
    row = pick_for_target(size_of("gpt2"), 85_000_000)
    assert (row.name, row.a_shape, row.b_shape) == ("81M", (768, 768), (4, 1))


def test_target_below_the_smallest_scheme_is_refused():
    with pytest.raises(KronyptError, match="smallest"):
        pick_for_target(size_of("gpt2"), 1_000)


def test_unknown_scheme_lists_the_names():
    with pytest.raises(KronyptError, match="81M.*96M-prune"):
        resolve_scheme("80M")
    assert resolve_scheme("67m alt") == ((128, 64), 1)
    assert canonical_scheme(" 96m prune") == "96M-prune"


def test_names_belong_to_gpt2_124m_widths_only():
    assert all(r.name is None for r in plan_rows(config_size(tiny_config())))
    assert {r.name for r in plan_rows(size_of("distilgpt2")) if r.name} == set(SCHEMES)
    assert all(r.name is None for r in plan_rows(size_of("gpt2-medium")))
    # a Llama MLP of GPT-2 124M's shape is not what the paper's names describe
    llama = config_size(tiny_llama_config(hidden_size=768, intermediate_size=3072, num_attention_heads=12))
    assert all(r.name is None for r in plan_rows(llama))


def test_llama_rows_count_three_matrices_per_block():
    size = config_size(tiny_llama_config())  # 2 blocks, 64 -> 192
    row = plan_row(size, (96, 32), 2)  # gate/up: A 96x32, B 2x2; down: A 32x96, B 2x2
    assert row.b_shape == (2, 2) and row.params_per_matrix == 2 * (96 * 32 + 4)
    assert row.model_params == size.dense_params - 6 * 64 * 192 + 6 * row.params_per_matrix


@pytest.mark.parametrize(("ratio", "a_shape", "b_shape"), [(0.5, (768, 576), (2, 1)), (0.25, (768, 288), (2, 2))])
def test_ratio_picks_the_nearest_fraction_of_the_mlp(ratio, a_shape, b_shape):
    row = pick_for_ratio(config_size(smollm2_config()), ratio)
    assert (row.a_shape, row.b_shape, row.factors) == (a_shape, b_shape, 1)
    assert abs(row.mlp_ratio - ratio) < 1e-5  # B's few entries put it a hair above the exact fraction
    with pytest.raises(KronyptError, match="between 0 and 1"):
        pick_for_ratio(config_size(smollm2_config()), 1.5)


def test_a_shape_that_does_not_divide_points_to_plan():
    with pytest.raises(KronyptError, match="does not divide.*kronypt plan MODEL"):
        plan_row(config_size(smollm2_config()), (768, 768))
