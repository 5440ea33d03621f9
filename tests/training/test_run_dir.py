"""The run folder's rules: never write into the user's files, lock it, clear stale staging."""

import pytest

from reft_cli.engine.folder_names import LOCK_NAME, TRAINING_CONFIG_NAME
from reft_cli.errors import ReftError
from reft_cli.training.run_dir import check_output_dir, foreign_entries, remove_stale_staging


def test_a_folder_of_the_users_files_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("# mine\n")
    with pytest.raises(ReftError, match="is not empty and holds no reft run") as err:
        check_output_dir(tmp_path, overwrite=False, resuming=False)
    assert str(tmp_path) in str(err.value) and "README.md" in str(err.value)
    assert "train.overwrite_output_dir=true" in str(err.value)
    check_output_dir(tmp_path, overwrite=True, resuming=False)  # the user said so


def test_empty_new_and_own_folders_are_accepted(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False, resuming=False)
    check_output_dir(tmp_path, overwrite=False, resuming=False)
    (tmp_path / LOCK_NAME).write_text("")
    (tmp_path / ".checkpoint-3.ab12.tmp").mkdir()
    assert foreign_entries(tmp_path) == []
    check_output_dir(tmp_path, overwrite=False, resuming=False)


def test_a_run_folder_still_needs_resume_or_overwrite(tmp_path):
    (tmp_path / TRAINING_CONFIG_NAME).write_text("x: 1\n")
    (tmp_path / "README.md").write_text("card\n")
    with pytest.raises(ReftError, match="already holds a run"):
        check_output_dir(tmp_path, overwrite=False, resuming=False)
    check_output_dir(tmp_path, overwrite=False, resuming=True)


def test_a_file_as_output_dir_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ReftError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f", overwrite=True, resuming=False)


def test_only_stale_staging_folders_of_its_own_pattern_are_removed(tmp_path):
    (tmp_path / ".checkpoint-4.k2j3.tmp").mkdir()
    (tmp_path / ".checkpoint-4.k2j3.tmp" / "x").write_text("half")
    keep = [tmp_path / ".mine.tmp", tmp_path / "checkpoint-4.tmp", tmp_path / ".checkpoint-x.a.tmp"]
    for path in keep:
        path.mkdir()
    remove_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
