"""The Pareto plot: every trial drawn, infeasible ones apart, the front and its boundary."""

from __future__ import annotations

from matplotlib.figure import Figure

from tuning import plots
from tuning._objective import Objective
from tuning._trial import Status, Trial

OBJ = Objective.build(["acc", "ms"], ["max", "min"], {"ms": {"max": 20}})


def _t(tid: str, acc: float, ms: float, status: Status = Status.TERMINATED) -> Trial:
    return Trial.with_results(tid, {}, [{"training_iteration": 3, "acc": acc, "ms": ms}],
                              status=status)


TRIALS = [_t("a", 0.9, 15.0), _t("b", 0.8, 5.0), _t("c", 0.7, 10.0), _t("d", 0.95, 30.0),
          _t("e", 0.6, 2.0, Status.STOPPED), Trial("f", {})]


def test_groups_and_the_front_line() -> None:
    ax = Figure().add_subplot()
    drawn = plots._draw_pareto(ax, TRIALS, OBJ)
    assert drawn == {"feasible": ["c"], "infeasible": ["d"], "front": ["a", "b", "e"]}
    line, bound = ax.get_lines()
    xs, ys = line.get_data()
    # best accuracy first: a (0.9, 15) -> (0.8, 15) -> b (0.8, 5) -> (0.6, 5) -> e (0.6, 2)
    assert list(xs) == [0.9, 0.8, 0.8, 0.6, 0.6] and list(ys) == [15, 15, 5, 5, 2]
    assert [c.get_offsets().shape[0] for c in ax.collections] == [1, 1, 3]
    assert ax.get_title() == "Pareto front: 3 of 5 trials, 1 infeasible"
    assert ax.get_xlabel() == "acc (max)" and ax.get_ylabel() == "ms (min)"
    assert list(bound.get_ydata()) == [20, 20] and bound.get_linestyle() == "--"  # ms <= 20


def test_all_plots_adds_the_pareto_plot_only_for_several_metrics(tmp_path) -> None:
    paths = plots.all_plots(TRIALS, "acc", "max", [], str(tmp_path / "p"), objective=OBJ)
    assert [p.rsplit("/", 1)[-1] for p in paths][-1] == "pareto_front.png"
    single = plots.all_plots(TRIALS, "acc", "max", [], str(tmp_path / "s"),
                             objective=Objective.build("acc", "max"))
    assert len(single) == 3
    ax = Figure().add_subplot()
    assert plots._draw_pareto(ax, [Trial("x", {})], OBJ) == {"feasible": [], "infeasible": [],
                                                             "front": []}
