"""The README's demo runs and its FLOP check holds (tiny model, a couple of steps)."""

from scaling.train.demo import run_demo


def test_demo_runs_every_method(tmp_path, capsys):
    rows = run_demo(steps=2, out=str(tmp_path / "tiny"), batch=2, seq_len=32)
    assert [r["method"] for r in rows] == ["full", "lora", "qlora", "ladder", "xladder"]
    for r in rows:
        assert abs(r["measured"] / r["analytic"] - 1) < 0.01
        assert r["step_s"] > 0
    assert "analytic F/tok" in capsys.readouterr().out
