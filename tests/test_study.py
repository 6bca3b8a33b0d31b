"""kronypt study end to end on a tiny Llama: every method at a budget, healed, evaluated, resumable."""

import json
import shutil
from pathlib import Path

import pytest
from test_train_support import make_token_folder

from kronypt.errors import KronyptError
from kronypt.study import StudyConfig, run_study
from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared, tiny_llama, tiny_model

pytestmark = requires_shared


@pytest.fixture
def setup(tmp_path):
    model = tmp_path / "tiny"
    tiny_llama(num_hidden_layers=4, max_position_embeddings=64).save_pretrained(model)
    for source, name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        shutil.copy(TOKENIZER_DIR / source, model / name)
    data = make_token_folder(tmp_path / "tokens", vocab_size=50257)
    return StudyConfig(model=str(model), data=str(data), out=str(tmp_path / "study"), budgets=[0.5],
                       methods=["dense", "kronecker", "kronecker-aware", "low-rank", "drop-blocks"],
                       calibration_tokens=128, heal_tokens=128, seq_len=32, micro_batch_size=2, tokens_per_step=64,
                       eval_data=str(SHARED_DATA), eval_windows=2, eval_stride=32, eval_max_tokens=96)


def test_a_study_compresses_heals_and_evaluates_every_run_and_resumes(setup):
    lines = []
    rows = run_study(setup, progress=False, log=lines.append)
    assert [r["run"] for r in rows] == ["dense", "kronecker-0.5", "kronecker-aware-0.5", "low-rank-0.5",
                                        "drop-blocks-0.5"]
    for row in rows:
        for stage in ("zero_shot", "healed"):
            assert row[stage]["wikitext2_ppl"] > 1 and 0 <= row[stage]["lambada_acc"] <= 1
            assert row[stage]["val_loss"] > 0 and row[stage]["kl"] >= 0
        assert row["heal"]["step"] == 2 and row["heal"]["tokens"] == 128 and row["heal"]["tokens_per_s"] > 0
    dense = rows[0]
    assert dense["zero_shot"]["kl"] == 0 and dense["healed"]["kl"] > 0  # healing moves the dense model too
    assert all(r["params"] < dense["params"] for r in rows[1:])
    assert rows[2]["compression"]["fit"] == "activations" and rows[2]["compression"]["calibration_loss_before"]
    assert rows[4]["compression"]["dropped_blocks"]
    out = Path(setup.out)
    table = (out / "results.md").read_text()
    assert "| kronecker-aware-0.5 | healed |" in table and "hf-strided" in table
    assert json.loads((out / "results.json").read_text()) == rows
    # resumed: nothing is done again, except a step whose result is gone
    (out / "runs" / "low-rank-0.5" / "healed.json").unlink()
    lines.clear()
    again = run_study(setup, progress=False, log=lines.append)
    assert lines == ["low-rank-0.5: evaluation after healing"]
    for row in (again, rows):  # the same numbers, measured again in another time
        row[3]["healed"].pop("seconds")
    assert again == rows


def test_a_study_folder_made_otherwise_is_refused(setup):
    setup.heal_tokens = 0
    run_study(setup, progress=False, log=lambda line: None)
    setup.lr = 1e-3
    with pytest.raises(KronyptError, match=r"holds a study made with other settings \(lr\)"):
        run_study(setup, progress=False, log=lambda line: None)
    with pytest.raises(KronyptError, match="unknown study methods"):
        StudyConfig(model="m", data="d", out="o", methods=["kronecker", "magic"])


def test_a_gpt2_study_calibrates_on_windows_its_position_table_holds(tmp_path):
    model = tmp_path / "tiny-gpt2"
    tiny_model(n_positions=64).save_pretrained(model)
    for source, name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        shutil.copy(TOKENIZER_DIR / source, model / name)
    config = StudyConfig(model=str(model), data=str(make_token_folder(tmp_path / "tokens", vocab_size=50257)),
                         out=str(tmp_path / "study"), budgets=[0.5], methods=["kronecker-aware"],
                         calibration_tokens=128, heal_tokens=0, seq_len=32, eval_data=str(SHARED_DATA),
                         eval_windows=2, eval_stride=32, eval_max_tokens=96)
    (row,) = run_study(config, progress=False, log=lambda line: None)
    assert row["compression"]["fit"] == "activations" and row["zero_shot"]["wikitext2_ppl"] > 1


def test_training_only_compressed_layers_needs_every_run_to_have_them():
    with pytest.raises(KronyptError, match="trainable compressed leaves nothing to train in dense, drop-blocks"):
        StudyConfig(model="m", data="d", out="o", methods=["dense", "kronecker", "drop-blocks"],
                    trainable="compressed")
    assert StudyConfig(model="m", data="d", out="o", methods=["kronecker"], trainable="compressed").methods
