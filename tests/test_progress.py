"""Progress away from a terminal: flushed log lines (a task's start, each tenth, its end), not a silent live bar."""

import io

from rich.progress import Progress

from respi_edge.runtime.progress import LogProgress, progress_bar


def test_log_lines_at_start_each_tenth_and_end():
    out = io.StringIO()
    with progress_bar(stream=out) as p:  # pytest's stdout is no terminal
        assert isinstance(p, LogProgress)
        tid = p.add_task("encoder features", total=40)
        for i in range(40):
            p.update(tid, advance=1, description=f"epoch 1/3 loss {1 - i / 100:.2f}")
        p.console.print("epoch 1: train loss 0.61")
    lines = out.getvalue().splitlines()
    assert lines[0] == "encoder features: 0/40"
    counts = [ln.split(": ", 1)[1].split(" ")[0] for ln in lines[1:-1]]
    assert counts == [f"{4 * k}/40" for k in range(1, 11)]  # one line per tenth, none per item
    assert lines[-2].startswith("epoch 1/3 loss 0.61: 40/40 (100 %")  # the description follows the bar's
    assert lines[-1] == "epoch 1: train loss 0.61"


def test_label_and_total_given_late():
    out = io.StringIO()
    p = LogProgress("scoring", stream=out)
    tid = p.add_task("", total=None)
    for i in range(1, 6):
        p.update(tid, completed=i, total=5)
    lines = out.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["scoring: 1/5", "scoring: 2/5", "scoring: 3/5", "scoring: 4/5",
                                                   "scoring: 5/5"]


def test_disabled_stays_silent_and_terminal_keeps_rich(monkeypatch):
    assert isinstance(progress_bar(disable=True), Progress)  # --json: no lines at all
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats the output as a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert isinstance(progress_bar(), Progress)

