"""The CLI end to end, in process: outputs, files written, and one-line errors with exit code 2."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from kronypt import load_tokenizer
from kronypt.cli.main import main
from kronypt.cli.options import parse_layers
from tests.conftest import SHARED_DATA, requires_shared
from tests.test_schemes import SPEC_TABLE


def run(capsys, *args):
    """Run `kronypt ARGS`; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kronypt: error: ") and pattern in lines[0], err
    assert "Traceback" not in err


def test_plan_json_reproduces_the_spec_table(capsys):
    code, out, _ = run(capsys, "plan", "gpt2", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    for name, (a, b, k, per_matrix, model) in SPEC_TABLE.items():
        r = rows[name]
        assert (tuple(r["a_shape"]), tuple(r["b_shape"]), r["factors"]) == (a, b, k)
        assert (r["params_per_matrix"], r["model_params"]) == (per_matrix, model)
        assert {"max_rank", "compresses", "flops_ratio"} <= set(r)


def test_plan_table_and_enumeration(capsys):
    code, out, _ = run(capsys, "plan", "gpt2")
    assert code == 0 and "81,972,576" in out and "96M-prune" in out
    code, out, _ = run(capsys, "plan", "distilgpt2", "--factors", "4", "--json")
    rows = json.loads(out)
    assert code == 0 and any(r["factors"] == 4 and not r["compresses"] for r in rows)


def test_compress_info_generate_export_round_trip(capsys, tiny_dir, tmp_path, monkeypatch):
    out_dir = tmp_path / "k"
    code, out, _ = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--factors", "2", "--scalars",
                       "--out", str(out_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert len(report["matrices"]) == 4 and report["params_after"] < report["params_before"]
    assert json.loads((out_dir / "compression_report.json").read_text()) == report
    assert (out_dir / "vocab.json").is_file()

    code, out, _ = run(capsys, "info", str(out_dir), "--json")
    info = json.loads(out)
    assert code == 0 and (info["model_type"], info["family"], info["compressed"]) == ("gpt2", "gpt2", True)
    assert info["params"] == report["params_after"] and info["tied_embeddings"] and info["blocks"] == 2
    fc = info["compressed_modules"]["transformer.h.0.mlp.c_fc"]  # tiny c_fc is 256 x 64: B 16 x 8
    assert (fc["a_shape"], fc["b_shape"], fc["factors"], fc["scalars"]) == ([16, 8], [16, 8], 2, True)

    code, out, _ = run(capsys, "generate", str(out_dir), "--prompt", "The", "--max-new-tokens", "3")
    assert code == 0 and out.startswith("The")
    # static KV cache + compiled forward (the decode path a GPU replays from CUDA graphs): the same tokens
    compiles = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiles.append(kw) or real_compile(fn, **kw))
    code, compiled, _ = run(capsys, "generate", str(out_dir), "--prompt", "The", "--max-new-tokens", "3",
                            "--compile", "--device", "cpu", "--dtype", "float32")
    assert code == 0 and compiled == out
    assert compiles == [{"mode": None, "fullgraph": True, "dynamic": False}]

    dense_dir = tmp_path / "d"
    code, _, _ = run(capsys, "export", str(out_dir), "--dense", "--out", str(dense_dir))
    assert code == 0
    ids = torch.randint(0, 50257, (1, 12))
    plain = GPT2LMHeadModel.from_pretrained(dense_dir).eval()
    kron = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    torch.testing.assert_close(plain(ids).logits, kron(ids).logits, rtol=1e-4, atol=1e-4)


def test_saved_folders_are_as_readable_as_the_umask_allows(capsys, tiny_dir, tmp_path):
    """save_pretrained writes model.safetensors with mode 0600: colleagues on a shared machine could not read
    a compressed model or an export."""
    previous = os.umask(0o022)
    try:
        assert run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(tmp_path / "k"))[0] == 0
        assert run(capsys, "export", str(tmp_path / "k"), "--out", str(tmp_path / "d"))[0] == 0
    finally:
        os.umask(previous)
    for folder in (tmp_path / "k", tmp_path / "d"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize(("spec", "expected"), [
    ("all", None), ("0-2,5", [0, 1, 2, 5]), ("1-1", [1]), ("3,1-2,3", [3, 1, 2]), (" 0 , 2-3 ", [0, 2, 3]),
])
def test_layer_ranges_and_lists(spec, expected):
    assert parse_layers(spec) == expected


def test_compress_only_the_layers_asked_for(capsys, tiny_dir, tmp_path):
    for spec, blocks in (("1", {1}), ("0-1", {0, 1})):
        code, out, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--layers", spec, "--out",
                             str(tmp_path / spec), "--json")
        assert code == 0, err
        names = [m["name"] for m in json.loads(out)["matrices"]]
        assert sorted(names) == sorted(f"transformer.h.{b}.mlp.{m}" for b in blocks for m in ("c_fc", "c_proj"))


def test_generate_is_greedy_by_default_and_samples_reproducibly_with_a_temperature(capsys, tiny_dir):
    model = GPT2LMHeadModel.from_pretrained(tiny_dir).eval()
    tok = load_tokenizer(str(tiny_dir))
    ids = tok("The", return_tensors="pt").input_ids
    greedy = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    args = ("generate", str(tiny_dir), "--prompt", "The", "--max-new-tokens", "12")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert out.rstrip("\n") == tok.decode(greedy[0])
    sampled = {seed: run(capsys, *args, "--temperature", "1.5", "--seed", seed)[1] for seed in ("1", "2")}
    assert run(capsys, *args, "--temperature", "1.5", "--seed", "1")[1] == sampled["1"]  # the seed fixes it
    assert sampled["1"] != sampled["2"] and out not in sampled.values()


def test_compress_by_target_params(capsys, tiny_dir, tmp_path):
    code, out, _ = run(capsys, "compress", str(tiny_dir), "--target-params", "3300000", "--out",
                       str(tmp_path / "t"), "--json")
    assert code == 0 and json.loads(out)["params_after"] <= 3_300_000
    code, out, err = run(capsys, "compress", str(tiny_dir), "--target-params", "3300000", "--layers", "0",
                         "--out", str(tmp_path / "t0"), "--json")  # two matrices must save what four did
    assert code == 0, err
    report = json.loads(out)
    assert report["params_after"] <= 3_300_000 and len(report["matrices"]) == 2


def test_existing_output_is_left_untouched_without_force(capsys, tiny_dir, tmp_path):
    out_dir = tmp_path / "busy"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "compress", str(tiny_dir), "--scheme", "81M", "--out", str(out_dir))
    assert_one_line_error(code, err, "not empty")
    assert [p.name for p in out_dir.iterdir()] == ["keep.txt"]
    code, _, _ = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x64", "--out", str(out_dir), "--force")
    assert code == 0 and (out_dir / "keep.txt").read_text() == "mine" and (out_dir / "config.json").is_file()


@pytest.mark.parametrize("args,pattern", [
    (["compress", "{tiny}", "--scheme", "nope", "--out", "{tmp}/x"], "unknown scheme"),
    (["compress", "{tiny}", "--scheme", "81M", "--out", "{tmp}/x"], "does not divide"),
    (["compress", "{tiny}", "--a-shape", "16by8", "--out", "{tmp}/x"], "MxN"),
    (["compress", "{tiny}", "--out", "{tmp}/x"], "exactly one of"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--init", "svd", "--out", "{tmp}/x"], "unknown init"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--layers", "a-b", "--out", "{tmp}/x"], "cannot read layers"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--layers", "7", "--out", "{tmp}/x"], "out of range"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--modules", "attn", "--out", "{tmp}/x"], "unknown MLP modules"),
    (["compress", "{tmp}/missing", "--scheme", "81M", "--out", "{tmp}/x"], "does not exist"),
    (["compress", "{tmp}", "--scheme", "81M", "--out", "{tmp}/x"], "no config.json"),
    (["compress", "{tiny}", "--target-params", "3270000", "--layers", "0", "--out", "{tmp}/x"], "the smallest has"),
    (["plan", "./missing-model"], "does not exist"),
    (["generate", "{tiny}", "--prompt", "x", "--tokenizer", "{tmp}/none"], "does not exist"),
    (["generate", "{tiny}", "--prompt", "x", "--device", "tpu"], "unknown device"),
    (["generate", "{tmp}/typo", "--prompt", "x"], "model folder"),
    (["generate", "{tiny}", "--prompt", "x", "--dtype", "float8"], "unknown dtype"),
    (["generate", "{tiny}", "--prompt", "x", "--max-new-tokens", "5000"], "exceed the model's context"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--layers", "1-0", "--out", "{tmp}/x"], "LO <= HI"),
    (["compress", "{tiny}", "--a-shape", "64x32", "--factors", "9", "--out", "{tmp}/x"], "exceed the 8"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--init", "prune", "--rescale", "--out", "{tmp}/x"],
     "rescale applies"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--prune-fill", "0.1", "--out", "{tmp}/x"], "prune_fill applies"),
    (["export", "{tiny}", "--dense", "--out", "{tmp}/x"], "no compressed layers"),
    (["eval", "{tiny}", "--protocol", "krony-pt", "--stride", "100"], "--stride applies"),
    (["eval", "{tiny}", "--json", "{tmp}"], "it is a folder"),
    (["eval", "{tiny}", "--json", "--max-tokens", "500"], "--json takes a file name, or '-' to print JSON"),
    (["info", "~no-such-user-kronypt/model"], "cannot expand a '~user' path"),
    # places that cannot be written: refused before any work, naming the option (not a temporary file)
    (["compress", "{tiny}", "--a-shape", "16x8", "--out", "/proc/kronypt-out"],
     "cannot write --out /proc/kronypt-out: No such file or directory in /proc"),
    (["compress", "{tiny}", "--a-shape", "16x8", "--out", "{tiny}/config.json/x"], "config.json is a file, not a"),
    (["eval", "{tiny}", "--json", "/proc/kronypt.json"], "cannot write --json /proc/kronypt.json"),
    (["train", "--init-from", "dense", "--model", "{tiny}", "--a-shape", "16x8", "--data", "{tmp}",
      "--out", "/proc/kronypt-run"], "cannot write --out /proc/kronypt-run"),
    (["data", "prepare", "--input", "{tiny}/config.json", "--out", "/proc/kronypt-data"],
     "cannot write --out /proc/kronypt-data"),
    (["plot", "curves", "{tmp}", "--out", "/proc/kronypt.png"], "cannot write --out /proc/kronypt.png"),
])
def test_bad_input_gives_one_line_errors(capsys, tiny_dir, tmp_path, args, pattern):
    args = [a.format(tiny=tiny_dir, tmp=tmp_path) for a in args]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "x").exists()


def test_help_explains(capsys):
    code, out, _ = run(capsys, "compress", "--help")
    assert code == 0 and "--scheme" in out and "van-loan" in out


@pytest.mark.parametrize("args,pattern", [
    (["plan", "gpt2", "--factors", "0"], "--factors"),
    (["plan", "gpt2", "--no-such-option"], "No such option"),
    (["compress", "{tiny}"], "Missing option"),
    (["nonsense-command"], "No such command 'nonsense-command'. (see 'kronypt --help')"),
    # an option without its value: the help to see is the subcommand's
    (["compress", "{tiny}", "--a-shape"], "Option '--a-shape' requires an argument. (see 'kronypt compress --help')"),
    (["data", "prepare", "--out"], "(see 'kronypt data prepare --help')"),
    (["plan", "gpt2", "--no-such-option"], "(see 'kronypt plan --help')"),
])
def test_usage_errors_are_one_line_too(capsys, tiny_dir, args, pattern):
    code, _, err = run(capsys, *[a.format(tiny=tiny_dir) for a in args])
    assert_one_line_error(code, err, pattern)


def test_bare_command_shows_help(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "compress" in out and "plan" in out


def test_eval_json_into_a_missing_folder_is_refused_before_loading(capsys, tiny_dir, tmp_path):
    code, _, err = run(capsys, "eval", str(tiny_dir), "--json", str(tmp_path / "no" / "x.json"))
    assert_one_line_error(code, err, "does not exist")


def test_compress_warns_when_the_scheme_saves_nothing(capsys, tiny_dir, tmp_path):
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x64", "--factors", "4", "--out",
                       str(tmp_path / "k4"))
    assert code == 0 and "kronypt: warning:" in err and "saves nothing" in err


def test_unsupported_and_unreadable_models_are_refused_in_one_line(capsys, tmp_path):
    from transformers import Phi3Config, Phi3ForCausalLM

    fused = tmp_path / "phi3"  # gate and up fused into one gate_up_proj: no family of kronypt's
    Phi3ForCausalLM(Phi3Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=2, vocab_size=64, pad_token_id=0)).save_pretrained(fused)
    for args in (["plan", str(fused)], ["compress", str(fused), "--a-shape", "4x4", "--out", str(tmp_path / "x")],
                 ["info", str(fused)], ["export", str(fused), "--dense", "--out", str(tmp_path / "x")]):
        code, _, err = run(capsys, *args)
        assert_one_line_error(code, err, "Phi3ForCausalLM) is not a model kronypt can compress; supported families: "
                                         "GPT-2 (Conv1D c_fc/c_proj")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    code, _, err = run(capsys, "plan", str(broken))
    assert_one_line_error(code, err, "cannot read")
    assert not (tmp_path / "x").exists()


def test_empty_prompt_starts_a_new_document_and_repeated_modules_count_once(capsys, tiny_dir, tmp_path):
    code, out, err = run(capsys, "generate", str(tiny_dir), "--prompt", "", "--max-new-tokens", "3")
    assert code == 0 and "<|endoftext|>" not in out, err  # neither the start token nor special tokens printed
    code, out, _ = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--modules", "c_fc,c_fc",
                       "--out", str(tmp_path / "fc"), "--json")
    report = json.loads(out)
    assert code == 0 and [m["name"] for m in report["matrices"]].count("transformer.h.0.mlp.c_fc") == 1
    config = json.loads((tmp_path / "fc" / "config.json").read_text())
    assert {spec["init"] for spec in config["compression"]["modules"].values()} == {"van-loan"}


@requires_shared
def test_a_mistyped_model_name_is_reported_as_the_model(capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the same message, without retries
    code, _, err = run(capsys, "eval", "no-such-model-anywhere", "--data-dir", str(SHARED_DATA))
    assert_one_line_error(code, err, "cannot load config 'no-such-model-anywhere': not a local folder")


def test_out_dot_and_force_keep_the_folder_and_other_files(capsys, tiny_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x16", "--out", ".")
    assert code == 0, err
    assert (work / "model.safetensors").is_file() and not list(tmp_path.glob(".*partial*"))
    (work / "notes.txt").write_text("mine")
    (work / "model-00002-of-00002.safetensors").write_bytes(b"stale shard of an earlier save")
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x16", "--out", ".")
    assert_one_line_error(code, err, "is not empty; pass --force")
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x16", "-k", "2", "--out", ".", "--force")
    assert code == 0, err
    assert (work / "notes.txt").read_text() == "mine" and not (work / "model-00002-of-00002.safetensors").exists()
    modules = json.loads((work / "config.json").read_text())["compression"]["modules"]
    assert {spec["factors"] for spec in modules.values()} == {2}
    code, out, err = run(capsys, "info", ".")
    assert code == 0 and "c_fc: A 64x16, B 4x4, k=2 (blocks 0-1)" in out, err


def test_second_pass_report_keeps_the_first_and_export_defaults_to_dense(capsys, tiny_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    code, out, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "128x64", "--modules", "c_fc", "--out",
                         str(first), "--json")
    assert code == 0, err
    one = json.loads(out)
    assert (one["out"], one["a_shape"], one["factors"], one["init"]) == (str(first), [128, 64], 1, "van-loan")
    code, out, err = run(capsys, "compress", str(first), "--a-shape", "64x16", "--modules", "c_proj", "--out",
                         str(second), "--json")
    assert code == 0, err
    both = json.loads(out)
    assert both == json.loads((second / "compression_report.json").read_text())
    assert [m["name"].rsplit(".", 1)[1] for m in both["matrices"]] == ["c_fc", "c_fc", "c_proj", "c_proj"]
    assert both["params_before"] == one["params_before"] and both["params_after"] < one["params_after"]
    assert both["mean_rel_error"] == pytest.approx(sum(m["rel_error"] for m in both["matrices"]) / 4)
    code, out, err = run(capsys, "export", str(second), "--out", str(tmp_path / "plain"))
    assert code == 0 and "dense GPT2LMHeadModel" in out, err


def test_compressing_a_folder_without_a_tokenizer_warns(capsys, tmp_path):
    from tests.conftest import tiny_model

    tiny_model().save_pretrained(tmp_path / "bare")
    code, _, err = run(capsys, "compress", str(tmp_path / "bare"), "--a-shape", "64x16", "--out", str(tmp_path / "o"))
    assert code == 0 and "warning: " in err and "holds no tokenizer files" in err


def _safetensors_dtypes(folder) -> set:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return {weights.get_slice(name).get_dtype() for name in weights.keys()}


def test_compress_and_export_keep_a_bfloat16_checkpoint_in_bfloat16(capsys, tmp_path):
    from kronypt.models import CompressionConfig, compress_, load_model
    from tests.conftest import tiny_model

    source, packed, plain = tmp_path / "bf16", tmp_path / "k", tmp_path / "d"
    tiny_model().to(torch.bfloat16).save_pretrained(source)
    code, out, err = run(capsys, "info", str(source), "--json")
    assert code == 0 and json.loads(out)["dtype"] == "bfloat16", err
    code, _, err = run(capsys, "compress", str(source), "--a-shape", "16x8", "--factors", "2", "--out", str(packed))
    assert code == 0, err
    assert _safetensors_dtypes(packed) == {"BF16"} and json.loads((packed / "config.json").read_text())["dtype"] == \
        "bfloat16"
    code, out, err = run(capsys, "info", str(packed))
    assert code == 0 and "bfloat16" in out and "float32" not in out, err

    # what the Python API gives in memory (factors from float32 weights, then bfloat16), loaded back exactly
    expected = load_model(str(source))
    compress_(expected, CompressionConfig(a_shape=(16, 8), factors=2), progress=False)
    expected.to(torch.bfloat16)
    loaded = load_model(str(packed), dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected(ids).logits, rtol=0, atol=0)

    code, _, err = run(capsys, "export", str(packed), "--out", str(plain))
    assert code == 0, err
    assert _safetensors_dtypes(plain) == {"BF16"} and json.loads((plain / "config.json").read_text())["dtype"] == \
        "bfloat16"
    dense = GPT2LMHeadModel.from_pretrained(plain, dtype="auto").eval()
    with torch.no_grad():
        # bfloat16 rounding of W = ΣA⊗B against the factored path: 0.004 here (logits' spread 0.16); zeroing
        # one block's c_proj in the export moves them by 0.027
        torch.testing.assert_close(dense(ids).logits.float(), loaded(ids).logits.float(), rtol=0, atol=0.012)

    # asked otherwise: float32 copies; a bad --dtype is refused before anything is written
    code, _, err = run(capsys, "export", str(packed), "--dtype", "float32", "--out", str(tmp_path / "d32"))
    assert code == 0 and _safetensors_dtypes(tmp_path / "d32") == {"F32"}, err
    code, _, err = run(capsys, "compress", str(source), "--a-shape", "16x8", "--dtype", "float8", "--out",
                       str(tmp_path / "x"))
    assert_one_line_error(code, err, "unknown --dtype 'float8'; choose one of auto, float32, bfloat16, float16")
    assert not (tmp_path / "x").exists()


def test_a_float32_checkpoint_stays_float32_and_other_commands_still_load_float32(capsys, tiny_dir, tmp_path):
    from kronypt.models import load_model

    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(tmp_path / "k"))
    assert code == 0 and _safetensors_dtypes(tmp_path / "k") == {"F32"}, err
    tiny = tmp_path / "bf16"
    load_model(str(tiny_dir)).to(torch.bfloat16).save_pretrained(tiny)
    assert next(load_model(str(tiny)).parameters()).dtype == torch.float32  # eval, train: float32 by default


MLP_MATRICES = [f"transformer.h.{b}.mlp.{m}" for b in (0, 1) for m in ("c_fc", "c_proj")]


def _dense_and_factors(tiny_dir, folder):
    """{path: (dense W, A, B)} in float64 and the (out, in) orientation (Conv1D stores W transposed)."""
    dense = GPT2LMHeadModel.from_pretrained(tiny_dir)
    packed = AutoModelForCausalLM.from_pretrained(folder)
    return {path: (dense.get_submodule(path).weight.detach().T.double(), packed.get_submodule(path).A.detach().double(),
                   packed.get_submodule(path).B.detach().double()) for path in MLP_MATRICES}


def test_compress_rescale_keeps_each_matrix_s_frobenius_norm(capsys, tiny_dir, tmp_path):
    from kronypt.math.decompose import kron_reconstruct

    for name, flags in (("plain", []), ("rescaled", ["--rescale"])):
        code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--factors", "2", *flags,
                           "--out", str(tmp_path / name))
        assert code == 0, err
    plain, rescaled = (_dense_and_factors(tiny_dir, tmp_path / name) for name in ("plain", "rescaled"))
    for path in MLP_MATRICES:
        W, A, B = rescaled[path]
        W_hat = kron_reconstruct(A, B)
        W_plain = kron_reconstruct(*plain[path][1:])
        # float32 factors on disk: the norms agree to float32 rounding (about 1e-7 relative)
        assert W_hat.norm().item() == pytest.approx(W.norm().item(), rel=1e-5), path
        assert W_plain.norm() < 0.9 * W.norm()  # 2 terms of a random matrix: without --rescale the norm shrinks
        # rescaling multiplies Van Loan's matrix by alpha = ||W|| / ||W_plain||, direction unchanged
        alpha = W.norm() / W_plain.norm()
        assert ((W_hat - alpha * W_plain).norm() / W_hat.norm()).item() < 1e-5, path


def test_compress_prune_fill_puts_the_fill_in_the_dropped_b_entries(capsys, tiny_dir, tmp_path):
    from kronypt.math.decompose import kron_reconstruct

    # A 256x32 for c_fc (256, 64): B is 1x2, the paper's 96M-prune layout; c_proj (64, 256) gets B 2x1.
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "256x32", "--init", "prune",
                       "--prune-fill", "0.1", "--out", str(tmp_path / "p"))
    assert code == 0, err
    fill = torch.tensor(0.1, dtype=torch.float32).double()  # saved as float32
    for path, (W, A, B) in _dense_and_factors(tiny_dir, tmp_path / "p").items():
        if path.endswith("c_fc"):  # the even input columns are kept, B = [1, 0.1]
            kept, b = W[:, ::2], torch.tensor([[[1.0, fill]]], dtype=torch.float64)
        else:  # the even output rows are kept, B = [1, 0.1]^T
            kept, b = W[::2, :], torch.tensor([[[1.0], [fill]]], dtype=torch.float64)
        assert A.shape == (1, *kept.shape) and torch.equal(A[0], kept), path
        assert torch.equal(B, b), path
        W_hat = kron_reconstruct(A, B)
        odd = (slice(None), slice(1, None, 2)) if path.endswith("c_fc") else (slice(1, None, 2), slice(None))
        even = (slice(None), slice(0, None, 2)) if path.endswith("c_fc") else (slice(0, None, 2), slice(None))
        assert torch.equal(W_hat[even], W[even]) and torch.equal(W_hat[odd], fill * W[even]), path


def test_weights_of_other_shapes_than_the_config_are_one_error_line(capsys, tiny_dir):
    """transformers raises a RuntimeError after its load report: it escaped as a 50-line traceback."""
    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps({**config, "n_inner": 128}))  # stored MLPs are 256 wide
    for command in (("info", str(tiny_dir)), ("generate", str(tiny_dir), "--prompt", "hi")):
        code, _, err = run(capsys, *command)
        assert code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith(
            f"kronypt: error: cannot load model '{tiny_dir}': its weights do not have the shapes its config.json")


def test_the_output_folder_may_not_be_the_model_being_read(capsys, tiny_dir, tmp_path):
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(tiny_dir), "--force")
    assert_one_line_error(code, err, f"--out {tiny_dir} is the model folder being read")
    assert run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(tmp_path / "k"))[0] == 0
    code, _, err = run(capsys, "export", str(tmp_path / "k"), "--out", str(tmp_path / "k" / ".." / "k"), "--force")
    assert_one_line_error(code, err, "is the model folder being read")
    assert json.loads((tmp_path / "k" / "config.json").read_text())["model_type"] == "kronypt"  # untouched


def test_an_interrupted_save_leaves_no_staging_folder(capsys, tiny_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def interrupted(self, folder, *args, **kwargs):  # Ctrl-C halfway through writing the weights
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupted)
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(tmp_path / "k"))
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == [tiny_dir]  # neither k nor a hidden .k.partial


@pytest.mark.parametrize("fill", ["nan", "inf", "-inf"])
def test_a_non_finite_prune_fill_is_refused_and_writes_nothing(capsys, tiny_dir, tmp_path, fill):
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "256x32", "--init", "prune", "--prune-fill",
                       fill, "--out", str(tmp_path / "k"))
    assert_one_line_error(code, err, "prune_fill must be a finite number")
    assert not (tmp_path / "k").exists()


def test_a_prompt_that_is_not_utf8_is_one_line(capsys, tiny_dir):
    code, _, err = run(capsys, "generate", str(tiny_dir), "--prompt", "caf\udce9", "--max-new-tokens", "2")
    assert_one_line_error(code, err, "--prompt is not valid UTF-8 text")
