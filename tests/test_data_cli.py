"""`reidbench data synth` and `reidbench data check` through the command's entry point."""

from __future__ import annotations

from harness.cli import main


def test_synth_then_check_reports_counts_and_no_problems(tmp_path, capsys):
    assert main(["data", "synth", "dukemtmc", str(tmp_path), "--ids", "6", "--seed", "2"]) == 0
    assert main(["data", "check", "dukemtmc", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "16,522" in out and "2,228" in out and "17,661" in out  # the published counts beside ours
    assert "! differs from the published dukemtmc" in out
    assert "cues checked: saliency, parsing, densepose, pose, mask" in out and "no problems" in out


def test_check_lists_every_broken_cue_and_fails(tmp_path, capsys):
    main(["data", "synth", "cuhk01", str(tmp_path), "--ids", "4"])
    masks = sorted((tmp_path / "cues" / "mask" / "campus").iterdir())
    masks[0].unlink()
    masks[1].write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["data", "check", "cuhk01", str(tmp_path), "--cues", "mask,pose"]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and f"missing file {masks[0]}" in out and f"cannot read {masks[1]}" in out


def test_check_refuses_unknown_names_with_a_hint(tmp_path, capsys):
    assert main(["data", "check", "duke", str(tmp_path)]) == 2
    assert "did you mean 'dukemtmc'" in capsys.readouterr().err
    assert main(["data", "check", "market1501", str(tmp_path), "--cues", "parse"]) == 2
    assert main(["data", "synth", "market", str(tmp_path)]) == 2
    assert "did you mean 'market1501'" in capsys.readouterr().err


def test_check_reads_a_named_cue_source_from_its_own_folder(tmp_path, capsys):
    """cues/parsing@spreid/ is checked as its own source, beside the default cues/parsing/."""
    import shutil

    main(["data", "synth", "cuhk01", str(tmp_path), "--ids", "4"])
    shutil.copytree(tmp_path / "cues" / "parsing", tmp_path / "cues" / "parsing@spreid")
    broken = sorted((tmp_path / "cues" / "parsing@spreid" / "campus").iterdir())[0]
    broken.unlink()
    capsys.readouterr()
    assert main(["data", "check", "cuhk01", str(tmp_path), "--cues", "parsing"]) == 0
    assert main(["data", "check", "cuhk01", str(tmp_path), "--cues", "parsing@spreid"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "cue parsing@spreid: missing file" in out and str(broken.parent) in out
    assert main(["data", "check", "cuhk01", str(tmp_path)]) == 1  # every folder, each source too
    assert "cues checked: saliency, parsing, parsing@spreid, densepose" in capsys.readouterr().out
    assert main(["data", "check", "cuhk01", str(tmp_path), "--cues", "parsing@Bad/x"]) == 2
    assert "names no valid source" in capsys.readouterr().err
