"""Plots stay readable with many clusters (the self-instruct seed file has 174): a bounded legend
beside the axes, naming which clusters it shows; every axis labelled."""

import json

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ct_train.plot import MAX_LEGEND, _legend, _named, _series, plot_run  # noqa: E402


def _metrics(path, k, steps=21):
    rng = np.random.default_rng(0)
    names = [f"task{i:03d}" for i in range(k)]
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(steps):
            p = rng.dirichlet(np.ones(k))
            row = {"step": step, "loss": 2.0 - step / steps}
            for j, c in enumerate(names):
                row[f"curriculum/prob/{c}"] = float(p[j])
                row[f"cluster/{c}/loss"] = float(2 + rng.normal())
                if step % 10 == 0:
                    row[f"eval/{c}/loss"] = float(j / k)  # higher index, higher final loss
            f.write(json.dumps(row) + "\n")
    return names


def test_many_clusters_name_the_highest_loss_ones_in_a_legend_beside_the_axes(tmp_path):
    names = _metrics(tmp_path, 174)
    series = _series([json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()])
    named = _named(names, series, "eval/{}/loss")
    assert named == names[::-1][:MAX_LEGEND]  # the 12 with the highest final held-out loss
    assert _named(names[:5], series, "eval/{}/loss") == names[:5]  # few clusters: all named

    fig, ax = plt.subplots()
    for c in names:
        ax.plot([0, 1], [0, 1], label=c if c in named else None)
    _legend(ax, len(named), len(names), "highest final held-out loss")
    fig.canvas.draw()
    legend = ax.get_legend()
    assert len(legend.get_texts()) == MAX_LEGEND and "12 of 174 clusters" in legend.get_title().get_text()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1  # beside the axes, not over the curves
    plt.close(fig)

    paths = plot_run(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["loss.png", "clusters.png", "curriculum.png"]
