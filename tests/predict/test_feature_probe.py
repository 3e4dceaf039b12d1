"""`launch/feature_probe.py`: the statistics it reports, and a probe of a real trained run."""

import math

import numpy as np
import pytest

from launch.feature_probe import feature_statistics, probe


def test_statistics_say_when_every_input_gives_the_same_features():
    same = np.tile(np.array([[0.0, 2.0, 0.0, 4.0]]), (5, 1))
    assert feature_statistics(same) == {"mean_abs": 1.5, "zero_fraction": 0.5,
                                        "spread_over_examples": 0.0}
    varying = same * np.arange(1, 6)[:, None]  # example k: k * [0, 2, 0, 4]
    # column stds sqrt(2) * [0, 2, 0, 4] (std of 1..5 is sqrt(2)), mean |x| 3 * 1.5
    assert feature_statistics(varying)["spread_over_examples"] == pytest.approx(
        math.sqrt(2) * 1.5 / 4.5, rel=1e-12)
    assert feature_statistics(np.zeros((3, 2)))["spread_over_examples"] == 0.0


def test_probe_of_a_trained_run_reports_every_feature_group(trained_workdir):
    result = probe(trained_workdir, examples=4)
    assert set(result) == {"ref", "main", "residual", "prefix"}
    for name, stats in result.items():
        assert all(math.isfinite(v) for v in stats.values()), (name, stats)
    # images differ between pairs, so an (almost untrained) model's prefix differs too
    assert result["prefix"]["spread_over_examples"] > 0
