"""Nothing lost, ever: the fault catalogue. Each numbered defect a user found is reproduced by a test
that failed on the code before it was fixed; they live beside the code they exercise —
``tests/test_faults_train.py`` (the trainer), ``tests/test_faults_launch.py`` (planning, launching,
status), ``tests/test_faults_cli.py`` (inputs and multi-file outputs) and ``tests/test_io.py`` — and
this file holds the catalogue (so no defect loses its test unnoticed) and the umask scenario that
crosses every stage."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CATALOGUE = {
    "1 demo --out deleted a user's folder / hid a file as .FILE.old": [
        "test_faults_cli.py::test_demo_out_deleted_a_users_folder",
        "test_faults_cli.py::test_demo_out_file_was_moved_to_a_hidden_old_file",
    ],
    "2 two trainers on one run; status showed it planned": [
        "test_faults_train.py::test_defect_2_second_trainer_is_refused_and_changes_nothing",
        "test_faults_train.py::test_defect_2_a_run_that_succeeded_meanwhile_is_not_retrained",
        "test_faults_launch.py::test_defect_2_locked_run_shows_running_and_is_never_resubmitted",
    ],
    "3 a failed resume wiped the logged metrics": [
        "test_faults_train.py::test_defect_3_corrupt_checkpoint_falls_back_to_the_previous_one",
        "test_faults_train.py::test_defect_3_unusable_checkpoint_is_refused_and_keeps_the_logs",
        "test_faults_train.py::test_defect_3_truncated_metrics_table_loses_no_rows",
    ],
    "4 concurrent sweeps lost one budget's runs": [
        "test_faults_launch.py::test_defect_4_concurrent_replans_lose_no_runs",
    ],
    "5 orphaned local worker / debug runs shown failed": [
        "test_faults_launch.py::test_defect_5_orphaned_local_worker_keeps_its_runs",
        "test_faults_launch.py::test_defect_5_debug_runs_show_running_while_they_run",
    ],
    "6 a hand-edited spec.json was trusted": [
        "test_faults_train.py::test_defect_6_invalid_spec_is_refused_before_anything_is_written",
    ],
    "7 full or read-only disk: traceback, no result": [
        "test_faults_train.py::test_defect_7_disk_full_while_training_is_recorded_as_failed",
        "test_faults_train.py::test_defect_7_sigterm_while_the_checkpoint_write_fails",
        "test_faults_train.py::test_defect_7_nothing_writable_is_one_line_and_non_zero",
    ],
    "8 fit --out on a full disk / old and new files mixed": [
        "test_faults_cli.py::test_fit_out_on_a_full_disk_left_a_partial_output",
        "test_faults_cli.py::test_refit_mixed_old_and_new_files",
    ],
    "9 stale temporary files never cleaned": [
        "test_faults_train.py::test_defect_9_stale_temporaries_are_removed_at_start",
    ],
    "10 bare NaN in result.json": [
        "test_faults_train.py::test_defect_10_diverged_result_is_strict_json",
    ],
    "11 files 0600 and folders 0700 whatever the umask": [
        "test_io.py::test_files_and_folders_get_the_umask_mode",
        "test_faults.py::test_defect_11_a_whole_study_is_readable_by_the_group",
    ],
    "tracebacks instead of one line": [
        "test_faults_cli.py::test_file_where_a_folder_is_expected",
        "test_faults_cli.py::test_unreadable_spec",
        "test_faults_cli.py::test_read_only_out_parent",
        "test_faults_cli.py::test_demo_steps_below_one_was_a_traceback",
        "test_faults_cli.py::test_from_fit_extreme_law_overflowed",
        "test_faults_cli.py::test_corrupt_manifest",
        "test_faults_launch.py::test_tracebacks_sweep_out_under_a_file",
        "test_faults_launch.py::test_tracebacks_sweep_replan_over_a_damaged_manifest",
        "test_faults_launch.py::test_tracebacks_manifest_without_run_id",
        "test_faults_launch.py::test_tracebacks_mistyped_run_files_show_that_run_only",
        "test_faults_cli.py::test_os_error_escaping_a_verb_was_a_traceback",
    ],
    "accepted although invalid": [
        "test_faults_cli.py::test_invalid_dials_and_sizes_were_accepted",
        "test_faults_cli.py::test_fits_json_booleans_were_numbers",
        "test_faults_cli.py::test_corrupt_run_table",
        "test_faults_cli.py::test_sweep_spec_budgets_not_a_list_was_judged_letter_by_letter",
    ],
}


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }


def test_every_defect_keeps_its_reproduction():
    found = {}
    for entries in CATALOGUE.values():
        for entry in entries:
            name, func = entry.split("::")
            found.setdefault(name, _tests_in(TESTS / name))
            assert func in found[name], f"{entry} is gone: the defect it reproduces has no test"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_defect_11_a_whole_study_is_readable_by_the_group(tmp_path, umask_022):
    """A simulated study (the planner's run directory, each run's result and metrics) and its fit:
    every file the tool wrote is 0644 and every folder 0755 under umask 022 (mkstemp/mkdtemp alone
    give 0600/0700)."""
    from scaling.cli import main
    from scaling.fit import synth

    sweep = tmp_path / "sweep"
    synth.simulate(sweep, curves=True)
    assert main(["fit", str(sweep), "--bootstrap", "0"]) == 0
    wrong = []
    for path in [sweep, *sweep.rglob("*")]:
        if path.name.endswith(".lock"):
            continue  # created by os.open with 0666 & ~umask too, but not a result
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o755 if path.is_dir() else 0o644
        if mode != want:
            wrong.append(f"{path.relative_to(tmp_path)} {oct(mode)}")
    assert not wrong, wrong
