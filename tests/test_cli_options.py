"""Output folders: checked before any work."""

from __future__ import annotations

from file_snapshot import snapshot

from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared
from tests.test_cli import assert_one_line_error, run

SHAKESPEARE = SHARED_DATA / "tiny-shakespeare" / "input.txt"


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
