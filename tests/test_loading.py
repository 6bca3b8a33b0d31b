import shutil
from pathlib import Path

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
    assert check_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "cpu:1"):
        with pytest.raises(KronyptError, match="unknown device"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(KronyptError, match="no CUDA device"):
            check_device("cuda")


@requires_shared
def test_saved_tokenizers_load_in_plain_transformers(tmp_path):
    # A bare OpenAI BPE pair (what data prepare records) next to compressed, exported and checkpointed weights
    # becomes Hugging Face's layout: AutoTokenizer alone (no kronypt reader) gives GPT-2's ids.
    import json
    import subprocess
    import sys

    import torch

    from kronypt.cli.main import main
    from kronypt.train.checkpoint import save_checkpoint
    from tests.conftest import tiny_model

    source = tmp_path / "source"
    tiny_model().save_pretrained(source)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(TOKENIZER_DIR / name, source / name)
    main(["compress", str(source), "--a-shape", "64x16", "--out", str(tmp_path / "small"), "--json"])
    main(["export", str(tmp_path / "small"), "--dense", "--out", str(tmp_path / "dense")])
    checkpoint = save_checkpoint(tmp_path / "run", 1, tiny_model(), {"tokens": 0}, None, keep_last=1,
                                 tokenizer_dir=TOKENIZER_DIR) / "model"
    check = ("import json, sys\nfrom transformers import AutoTokenizer\n"
             "print(json.dumps([AutoTokenizer.from_pretrained(p)('Hello world').input_ids for p in sys.argv[1:]]))")
    folders = [str(tmp_path / "small"), str(tmp_path / "dense"), str(checkpoint)]
    done = subprocess.run([sys.executable, "-c", check, *folders], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [[15496, 995]] * 3
    for folder in folders:  # the BPE pair under the names other BPE tools read, for `data prepare --tokenizer`
        assert (Path(folder) / "vocab.json").is_file() and (Path(folder) / "merges.txt").is_file()
    assert torch.equal(torch.tensor(load_tokenizer(folders[0])("Hello world").input_ids), torch.tensor([15496, 995]))


def test_mistyped_local_paths_fail_at_once_instead_of_asking_the_hub(tmp_path, monkeypatch):
    from kronypt.models import loading

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("asked the hub for a local path")

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", no_hub)
    for name in ("runs/typo", "runs/x/best/model", "my model", "./model", "C:\\\\models\\\\gpt2"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_config(name)
    for name in ("gpt2-typo", "someone/gpt2-typo"):  # hub ids: the hub is asked (and refused here)
        with pytest.raises(AssertionError, match="asked the hub"):
            load_config(name)


def test_truncated_weights_are_a_one_line_error(tmp_path):
    from tests.conftest import tiny_model

    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(KronyptError, match="truncated or corrupt"):
        load_model(str(tmp_path))
