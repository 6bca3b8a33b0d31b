import shutil

import pytest

from kronypt.data.tokenizer import load_encoding
from kronypt.errors import KronyptError
from kronypt.models.loading import load_config, load_model, load_tokenizer, parse_dtype
from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared


@requires_shared
def test_openai_and_hf_file_layouts_give_the_same_ids_as_tiktoken(tmp_path):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    shutil.copy(TOKENIZER_DIR / "encoder.json", hf_dir / "vocab.json")
    shutil.copy(TOKENIZER_DIR / "vocab.bpe", hf_dir / "merges.txt")
    text = (SHARED_DATA / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")[:20_000]
    enc = load_encoding(str(TOKENIZER_DIR))  # tiktoken's GPT-2 encoding, built offline from the same files
    expected = enc.encode_ordinary(text)
    for folder in (TOKENIZER_DIR, hf_dir):
        tok = load_tokenizer(str(folder))
        assert len(tok) == 50257 and tok.eos_token_id == 50256
        assert tok(text).input_ids == expected
        assert tok.decode(expected) == text


def test_bad_paths_and_names(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "nothing"))
    with pytest.raises(KronyptError, match="no tokenizer"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(KronyptError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(KronyptError, match="unknown dtype"):
        parse_dtype("fp8")


def test_known_family_configs_need_no_download():
    config = load_config("openai-community/gpt2-large")
    assert (config.n_layer, config.n_embd, config.n_head) == (36, 1280, 20)


def test_local_model_in_bfloat16(tiny_dir):
    model = load_model(str(tiny_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == parse_dtype("bfloat16") and not model.training


def test_check_device():
    import torch

    from kronypt.models.loading import check_device

    assert check_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "cpu:1"):
        with pytest.raises(KronyptError, match="unknown device"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(KronyptError, match="no CUDA device"):
            check_device("cuda")
