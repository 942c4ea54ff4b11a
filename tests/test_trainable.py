"""report() / get_checkpoint() inside a segment, with an in-memory channel."""

from __future__ import annotations

import pytest

from tuning import get_checkpoint, report
from tuning._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tuning.trainable import Segment, run_segment


class Channel:
    def __init__(self, stop_after=None, override=None):
        self.sent, self.stop_after, self.override = [], stop_after, override

    def started(self, segment):
        return self.override

    def send(self, message):
        self.sent.append(message)

    def should_stop(self):
        return self.stop_after is not None and len(self.sent) >= self.stop_after

    def wait_decision(self, iteration, timeout):
        return None


def counting(config):
    start = (get_checkpoint() or {"i": 0})["i"]
    for i in range(start, 10):
        report(score=i, checkpoint={"i": i + 1})


def seg(tmp_path, **kw):
    return Segment(trial_id="trial-000", segment_id=1, config={}, storage=str(tmp_path), **kw)


def test_results_stream_one_message_per_report(tmp_path):
    ch = Channel()
    out = run_segment(counting, seg(tmp_path), ch)
    assert out.status == "returned"
    assert [m["result"]["training_iteration"] for m in ch.sent] == list(range(1, 11))
    assert out.checkpoint.endswith("iter-000010.json")


def test_a_stop_ends_the_trial_at_its_next_report(tmp_path):
    ch = Channel(stop_after=3)
    out = run_segment(counting, seg(tmp_path), ch)
    assert out.status == "stopped" and len(ch.sent) == 3


def test_pause_at_and_max_t_end_the_segment_exactly(tmp_path):
    ch = Channel()
    out = run_segment(counting, seg(tmp_path, pause_at=4), ch)
    assert out.status == "paused" and out.last_iteration == 4 and len(ch.sent) == 4
    ch = Channel()
    out = run_segment(counting, seg(tmp_path, max_t=6), ch)
    assert out.status == "finished" and out.last_iteration == 6 and len(ch.sent) == 6


def test_resume_from_a_checkpoint_continues_the_iteration_count(tmp_path):
    first = run_segment(counting, seg(tmp_path, pause_at=4), Channel())
    ch = Channel()
    out = run_segment(counting, seg(tmp_path, checkpoint=first.checkpoint, start_iteration=4), ch)
    assert [m["result"]["training_iteration"] for m in ch.sent] == list(range(5, 11))
    assert [m["result"]["score"] for m in ch.sent] == list(range(4, 10))
    assert out.status == "returned"


def test_a_restart_picks_up_the_newer_checkpoint_the_driver_knows(tmp_path):
    first = run_segment(counting, seg(tmp_path, pause_at=7), Channel())
    ch = Channel(override={"checkpoint": first.checkpoint, "iteration": 7})
    run_segment(counting, seg(tmp_path), ch)
    assert ch.sent[0]["result"]["training_iteration"] == 8


def test_the_trainables_error_is_captured_with_its_traceback(tmp_path):
    def bad(config):
        report(score=1)
        raise ValueError("nope")

    out = run_segment(bad, seg(tmp_path), Channel())
    assert out.status == "error" and "ValueError: nope" in out.error
    assert "Traceback" in out.error


@pytest.mark.parametrize("value", [None, "high", [1, 2]])
def test_a_metric_that_is_not_a_number_is_a_clear_error(tmp_path, value):
    def bad(config):
        report(score=value)

    out = run_segment(bad, seg(tmp_path), Channel())
    assert out.status == "error" and "MetricError" in out.error
    assert "metric 'score' must be a number" in out.error


def test_report_outside_a_trial_says_so():
    with pytest.raises(RuntimeError, match="outside a trial"):
        report(score=1)


def test_checkpoints_round_trip_json_and_torch(tmp_path):
    import torch

    url = save_checkpoint({"epoch": 3, "name": "x"}, str(tmp_path), "t", 3)
    assert url.endswith(".json") and load_checkpoint(url) == {"epoch": 3, "name": "x"}
    url = save_checkpoint({"w": torch.ones(2, 2), "epoch": 1}, str(tmp_path), "t", 4)
    back = load_checkpoint(url)
    assert url.endswith(".pt") and torch.equal(back["w"], torch.ones(2, 2))


def test_an_unsafe_checkpoint_is_refused_when_saved(tmp_path):
    class Custom:
        pass

    with pytest.raises(CheckpointError, match="cannot be serialized for safe loading"):
        save_checkpoint({"obj": Custom()}, str(tmp_path), "t", 1)
    with pytest.raises(CheckpointError, match="must be a dict"):
        save_checkpoint([1, 2], str(tmp_path), "t", 1)
