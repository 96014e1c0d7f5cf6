"""At the end of a run the student and summary are written first, then the final checkpoint; a failed write
names the file and leaves no temporary directory behind."""

from __future__ import annotations

import errno
import json

from conftest import egad, smoke_argv

from egad_cli.engine import checkpoint as ckpt_mod


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_student_export_still_writes_the_final_checkpoint(tmp_path, capsys, corpus_dir, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    run = tmp_path / "run"
    code = egad(*smoke_argv(run, corpus_dir, "method=kd", "eval.before=false"))
    err = capsys.readouterr().err
    assert code == 2 and str(run / "student") in err and "No space left" in err and "Traceback" not in err
    assert (run / "checkpoints" / "step-4" / "manifest.json").is_file()  # the trained state is kept
    assert not list((run / "checkpoints").glob(".*"))


def test_a_full_disk_at_the_final_checkpoint_keeps_the_exported_student(tmp_path, capsys, corpus_dir,
                                                                        monkeypatch):
    real_save = ckpt_mod.save_file
    calls = []

    def fail_the_last(tensors, path, metadata=None):  # periodic checkpoint at step 2 works, step 4 fails
        calls.append(path)
        if len(calls) > 1:
            disk_full()
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", fail_the_last)
    run = tmp_path / "run"
    code = egad(*smoke_argv(run, corpus_dir, "method=kd", "eval.before=false"))
    err = capsys.readouterr().err
    assert code == 2 and "could not write checkpoint step 4" in err and "MiB" in err
    assert (run / "student" / "config.json").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]  # no .tmp left behind
