import pytest

from kronypt.errors import KronyptError
from kronypt.models.family import family_config
from kronypt.plan import SCHEMES, canonical_scheme, dense_params, pick_for_target, plan_row, plan_rows, resolve_scheme

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
    assert dense_params(family_config("gpt2")) == 124_439_808
    assert dense_params(family_config("openai-community/gpt2-medium")) == 354_823_168
    assert dense_params(family_config("distilgpt2")) == 81_912_576


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_every_spec_row_is_reproduced(name):
    a, b, k, per_matrix, model = SPEC_TABLE[name]
    assert resolve_scheme(name) == (a, k)
    row = plan_row(family_config("gpt2"), a, k)
    assert (row.a_shape, row.b_shape, row.factors) == (a, b, k)
    assert row.params_per_matrix == per_matrix
    assert row.model_params == model
    assert row.name == name


def test_scalars_add_one_parameter_per_factor_and_matrix():
    row = plan_row(family_config("gpt2"), (1024, 256), 4, scalars=True)
    assert row.model_params == 92_983_392 + 96


def test_plan_rows_hold_all_named_schemes_and_the_enumeration():
    rows = plan_rows(family_config("gpt2"))
    assert {r.name for r in rows if r.name} == set(SCHEMES)
    assert len([r for r in rows if r.factors == 1]) == 22 * 18


def test_target_params_never_picks_a_non_compressing_scheme():
    config = family_config("gpt2")
    for target in (70_000_000, 82_000_000, 100_000_000, 124_439_808, 200_000_000):
        for k in (1, 4):
            row = pick_for_target(config, target, k)
            assert row.compresses and row.model_params <= target and row.factors == k
    assert pick_for_target(config, 81_972_576).model_params == 81_972_576


def test_target_ties_go_to_the_named_scheme():
    # A 4x1 with B 768x768 has 81M's counts, rank and FLOPs too; the paper's 81M is the larger A.
    row = pick_for_target(family_config("gpt2"), 85_000_000)
    assert (row.name, row.a_shape, row.b_shape) == ("81M", (768, 768), (4, 1))


def test_target_below_the_smallest_scheme_is_refused():
    with pytest.raises(KronyptError, match="smallest"):
        pick_for_target(family_config("gpt2"), 1_000)


def test_unknown_scheme_lists_the_names():
    with pytest.raises(KronyptError, match="81M.*96M-prune"):
        resolve_scheme("80M")
    assert resolve_scheme("67m alt") == ((128, 64), 1)
    assert canonical_scheme(" 96m prune") == "96M-prune"


def test_names_belong_to_gpt2_124m_widths_only():
    from tests.conftest import tiny_config

    assert all(r.name is None for r in plan_rows(tiny_config()))
    assert {r.name for r in plan_rows(family_config("distilgpt2")) if r.name} == set(SCHEMES)
    assert all(r.name is None for r in plan_rows(family_config("gpt2-medium")))
