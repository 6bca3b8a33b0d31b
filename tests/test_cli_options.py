"""Output folders of `compress` and `export`: checked before any work, written through a staging folder of
each process's own, never moved over another process's output, and replaced (`--force`) so that the
earlier model stays complete until the new one is, also when a kill stops the replacement halfway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from file_snapshot import snapshot

from kronypt.cli.options import _model_files, check_out_dir
from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared
from tests.test_cli import assert_one_line_error, run

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = SHARED_DATA / "tiny-shakespeare" / "input.txt"


def _child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), str(REPO / "tests")]))


def _hidden_siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@requires_shared
def test_a_dangling_symlink_as_out_is_refused_before_any_work(capsys, tiny_dir, tmp_path):
    """It ran the whole job, then failed with `[Errno 20] Not a directory`, leaving an 18 MB hidden staging
    folder and the link target's parent folders behind."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "deeper" / "target")
    before = snapshot(tmp_path)
    for command in (["compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(link)],
                    ["export", str(tiny_dir), "--out", str(link)],
                    ["data", "prepare", "--input", str(SHAKESPEARE), "--tokenizer", str(TOKENIZER_DIR),
                     "--out", str(link)],
                    ["train", "--init-from", "kronypt", "--model", str(tiny_dir), "--data", str(tmp_path),
                     "--out", str(link)]):
        code, _, err = run(capsys, *command)
        assert_one_line_error(code, err, f"--out {link} is a symbolic link to {tmp_path / 'gone'}")
        assert snapshot(tmp_path) == before, command


# A compress paused once its weights are in its staging folder, until the test lets it finish.
PAUSED_COMPRESS = """
import sys, time
from pathlib import Path
from transformers import PreTrainedModel
model, out, flags = sys.argv[1], sys.argv[2], Path(sys.argv[3])
save = PreTrainedModel.save_pretrained
def save_then_wait(self, folder, *args, **kwargs):
    save(self, folder, *args, **kwargs)
    (flags / "saved").touch()
    while not (flags / "go").exists():
        time.sleep(0.05)
PreTrainedModel.save_pretrained = save_then_wait
from kronypt.cli.main import main
main(["compress", model, "--a-shape", "16x8", "--out", out])
"""


def test_two_commands_writing_one_new_out_never_share_or_clobber(capsys, tiny_dir, tmp_path):
    """Both used `.OUT.partial`: the second deleted the first one's half-written files, and the first then
    deleted the second one's finished model and crashed on its own vanished staging folder."""
    out, flags = tmp_path / "k", tmp_path / "flags"
    flags.mkdir()
    first = subprocess.Popen([sys.executable, "-c", PAUSED_COMPRESS, str(tiny_dir), str(out), str(flags)],
                             env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (flags / "saved").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "-k", "2", "--out", str(out))
        assert code == 0, err
        second = snapshot(out)
        (flags / "go").touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2 and err.count("\n") == 1, err
    assert f"kronypt: error: --out {out} was created by another process while this one ran; nothing was saved" in err
    assert snapshot(out) == second and _hidden_siblings(out) == []


def test_an_out_in_folders_yet_to_be_made_is_written(capsys, tiny_dir, tmp_path):
    out = tmp_path / "new" / "deeper" / "k"
    code, _, err = run(capsys, "export", str(tiny_dir), "--out", str(out))
    refused = code == 2 and "already a plain GPT2LMHeadModel" in err
    assert refused and not (tmp_path / "new").exists(), err  # refused: untouched
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(out))
    assert code == 0 and (out / "model.safetensors").is_file() and _hidden_siblings(out) == [], err


def test_out_changed_since_the_check_is_not_replaced(tmp_path):
    """An --out that the command found empty, and another process filled meanwhile, is not swapped out."""
    from kronypt.cli.options import staged
    from kronypt.errors import KronyptError

    out = tmp_path / "out"
    out.mkdir()
    check_out_dir(out, force=False)
    (out / "config.json").write_text("{}")  # another process's model arrives
    before = snapshot(out)
    with pytest.raises(KronyptError, match="was changed by another process"):
        with staged(out) as tmp:
            (tmp / "config.json").write_text('{"mine": 1}')
    assert snapshot(out) == before and _hidden_siblings(out) == []


# `kronypt compress --force` into OUT, SIGKILLed before its K-th move of a file into or out of OUT.
KILLED_FORCE = """
import os, signal, sys
from pathlib import Path
model, out, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
moves, replace = [], os.replace
def replace_or_die(src, dst, **kwargs):
    if out in (Path(src).parent, Path(dst).parent):
        moves.append(src)
        if len(moves) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, **kwargs)
os.replace = replace_or_die
from kronypt.cli.main import main
main(["compress", model, "--a-shape", "64x16", "-k", "2", "--out", str(out), "--force"])
"""


@requires_shared
@pytest.mark.parametrize("kill_at", [1, 5, 9, 16])
def test_a_force_replacement_killed_halfway_keeps_the_earlier_model(capsys, tiny_dir, tmp_path, kill_at):
    """The previous model's files were deleted before the new ones moved in: a kill between the two left
    neither. Now they move into a backup folder first; the next command restores them from there."""
    out = tmp_path / "k"
    assert run(capsys, "compress", str(tiny_dir), "--a-shape", "16x8", "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    earlier = {path.name: path.read_bytes() for path in _model_files(out)}
    assert len(earlier) == 8  # 8 moves out, then 8 in: kill_at 1 and 5 stop the first, 9 and 16 the second
    done = subprocess.run([sys.executable, "-c", KILLED_FORCE, str(tiny_dir), str(out), str(kill_at)],
                          env=_child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    backups = [out.parent / name for name in _hidden_siblings(out) if ".replaced-" in name]
    for name, data in earlier.items():  # every file of the earlier model is whole: in OUT or in the backup
        assert data in [(folder / name).read_bytes() for folder in (out, *backups) if (folder / name).is_file()]
    check_out_dir(out, force=True)  # what the next compress/export into OUT does first
    assert snapshot(out) == before and _hidden_siblings(out) == []
    code, _, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x16", "-k", "2", "--out", str(out),
                       "--force")
    assert code == 0 and (out / "notes.txt").read_text() == "mine" and _hidden_siblings(out) == [], err
