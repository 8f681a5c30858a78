"""`imagemini bench train` (what a GPU machine runs first) works end to end at toy size on the CPU."""

from __future__ import annotations

from imagemini.cli import main


def test_bench_train_reports_a_row_per_batch_size(capsys):
    main(["bench", "train", "--batch-tokens", "1500", "3000", "--steps", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.strip().startswith("batch tokens")))
    rows = [line.split() for line in lines[header + 1:]]
    assert [int(r[0]) for r in rows] == [1500, 3000]
    for row in rows:
        ms, tokens_per_s, targets = float(row[1]), float(row[2]), float(row[3].rstrip("%"))
        assert ms > 0 and tokens_per_s > 0 and 0 < targets < 100
