"""The append-only journal: torn last lines, corruption, replay up to the last commit."""

from __future__ import annotations

import json
import logging

import pytest

from tuning.experiment import Journal, JournalError, find_experiment_dirs, read_histories, replay


def write(d, lines):
    (d / "journal.jsonl").write_text("".join(lines))


def ev(seq, event, **kw):
    return json.dumps({"seq": seq, "t": float(seq), "event": event, **kw}) + "\n"


BASE = [ev(1, "experiment_created", spec={"name": "x"}), ev(2, "run_started"),
        ev(3, "trial_created", trial_id="trial-000", config={"a": 1}),
        ev(4, "segment_started", trial_id="trial-000", segment_id=1, config={"a": 1}),
        ev(5, "result", trial_id="trial-000", result={"training_iteration": 1, "s": 0.5,
                                                        "checkpoint": "file:///c1"}),
        ev(6, "state", scheduler={}, searcher={}, controller={}, backend={})]


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    write(tmp_path, BASE + ['{"seq": 7, "t": 7.0, "event": "res'])
    with caplog.at_level(logging.WARNING):
        events = Journal(str(tmp_path)).read()
    assert len(events) == 6
    assert "torn last line 7" in caplog.text


def test_corruption_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    write(tmp_path, BASE[:3] + ["not json at all\n"] + BASE[3:])
    with pytest.raises(JournalError, match=r"journal.jsonl, line 4: not a JSON event"):
        Journal(str(tmp_path)).read()


def test_repair_tail_cuts_the_torn_line_so_appends_stay_readable(tmp_path):
    write(tmp_path, BASE + ['{"seq": 7, "t"'])
    j = Journal(str(tmp_path))
    j.read()
    j.repair_tail()
    j.append("run_started")
    j.flush()
    assert [e["event"] for e in Journal(str(tmp_path)).read()][-1] == "run_started"


def test_replay_applies_committed_events_and_drops_an_uncommitted_tail(tmp_path):
    tail = [ev(7, "result", trial_id="trial-000", result={"training_iteration": 2, "s": 0.6}),
            ev(8, "run_started"),  # the next run: what the crashed one did not commit is gone
            ev(9, "result", trial_id="trial-000", result={"training_iteration": 2, "s": 0.7}),
            ev(10, "state", scheduler={}, searcher={}, controller={}, backend={})]
    write(tmp_path, BASE + tail)
    st = replay(Journal(str(tmp_path)).read())
    t = st.trials["trial-000"]
    assert t.num_results == 2 and t.last_value("s") == 0.7 and t.best_value("s", "min") == 0.5
    assert [r["s"] for r in read_histories(Journal(str(tmp_path)))["trial-000"]] == [0.5, 0.7]
    assert t.checkpoint == "file:///c1" and t.checkpoint_iteration == 1
    assert st.attempts == 2 and not st.finished


def test_appends_are_json_lines_with_sequence_numbers(tmp_path):
    j = Journal(str(tmp_path / "exp"))
    j.append("run_started")
    j.append("result", trial_id="t", result={"v": float("nan"), "w": float("inf")})
    j.flush()
    lines = (tmp_path / "exp" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 2]
    back = Journal(str(tmp_path / "exp")).read()[1]["result"]
    assert back["v"] != back["v"] and back["w"] == float("inf")


def test_find_experiment_dirs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name, BASE)
    assert [p.rsplit("/", 1)[-1] for p in find_experiment_dirs(str(tmp_path))] == ["a", "b"]
    assert find_experiment_dirs(str(tmp_path / "a")) == [str(tmp_path / "a")]
