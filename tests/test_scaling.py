"""Scaling-law fits (raypref.scaling), on points computed by hand from known laws."""

import numpy as np
import pytest

from raypref.scaling import fit, fit_power_law, fit_saturating_power_law


def test_power_law_recovers_hand_values():
    # y = 3 * x^-0.5 at x = 1, 4, 16: 3, 1.5, 0.75 (Kaplan et al. 2020 eq. 1.2 with D_c^alpha = 3, alpha = 0.5)
    f = fit_power_law([1, 4, 16], [3.0, 1.5, 0.75])
    assert f.params["a"] == pytest.approx(3.0) and f.params["b"] == pytest.approx(-0.5)
    assert f.rmse < 1e-12 and f.stderr["b"] == pytest.approx(0.0, abs=1e-9)
    assert f.predict([64]) == pytest.approx([0.375]) and f.formula() == "y = 3 * x^-0.5"
    # two points fix both parameters and leave no error estimate
    two = fit_power_law([1, 10], [2.0, 20.0])
    assert two.params == pytest.approx({"a": 2.0, "b": 1.0}) and two.stderr == {"log_a": None, "b": None}


def test_power_law_weights_points_by_sigma():
    # four points on y = 2x and one far off it with a huge sigma: the fit follows the four
    x, y = [1, 2, 4, 8, 16], [2.0, 4.0, 8.0, 16.0, 5.0]
    sigma = [0.01, 0.02, 0.04, 0.08, 1e6]
    f = fit_power_law(x, y, sigma)
    assert f.params["a"] == pytest.approx(2.0, rel=1e-6) and f.params["b"] == pytest.approx(1.0, abs=1e-6)
    unweighted = fit_power_law(x, y)
    assert abs(unweighted.params["b"] - 1.0) > 0.1  # the same points, every point counted alike


def test_saturating_power_law_recovers_hand_values_and_its_level():
    # y = 0.9 - 0.125 * (x/16)^-0.5; x0, the geometric mean of 1, 4, 16, 64, 256 (= 4^(10/5)), is 16, so
    # (x/16)^-0.5 = 4, 2, 1, 1/2, 1/4 and y = 0.4, 0.65, 0.775, 0.8375, 0.86875
    x, y = [1, 4, 16, 64, 256], [0.4, 0.65, 0.775, 0.8375, 0.86875]
    f = fit_saturating_power_law(x, y)
    assert f.x0 == pytest.approx(16.0)
    assert f.params == pytest.approx({"c": 0.9, "a": -0.125, "b": -0.5}, abs=1e-7)
    assert "at_bound" not in f.extra and f.rmse < 1e-9
    assert f.predict([1e12]) == pytest.approx([0.9], abs=1e-6)  # where it levels off
    assert f.formula() == "y = 0.9 - 0.125 * (x/16)^-0.5"
    assert set(f.stderr) == {"c", "a", "b"} and all(v is not None for v in f.stderr.values())
    # exactly three points fit exactly and have no error estimate; their x0 is 4, so
    # a = -0.125 * (4/16)^-0.5 = -0.25 in y = c + a * (x/4)^b
    three = fit_saturating_power_law(x[:3], y[:3])
    assert three.x0 == pytest.approx(4.0)
    assert three.params == pytest.approx({"c": 0.9, "a": -0.25, "b": -0.5}, abs=1e-6)
    assert three.stderr == {"c": None, "a": None, "b": None}


def test_saturating_fit_flags_points_that_do_not_level_off():
    # y = log10(x) keeps rising: no level; b ends at the edge of its range and the fit says so
    x = [10, 100, 1000, 10000, 100000]
    f = fit_saturating_power_law(x, np.log10(x))
    assert f.extra.get("at_bound") and f.as_dict()["at_bound"] is True


def test_bad_points_name_the_problem():
    with pytest.raises(ValueError, match="needs at least 3 points, got 2"):
        fit("saturating_power_law", [1, 2], [1, 2])
    with pytest.raises(ValueError, match="x must be > 0"):
        fit("power_law", [0, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="y must be > 0"):
        fit("power_law", [1, 2, 3], [1, -2, 3])
    with pytest.raises(ValueError, match="3 distinct x values, got 2"):
        fit("saturating_power_law", [1, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="unknown form 'cubic'"):
        fit("cubic", [1, 2], [1, 2])
    with pytest.raises(ValueError, match=r"sigma must be finite, > 0, one per point; point 2 of 2 \(x = 2\) has 0$"):
        fit("power_law", [1, 2], [1, 2], sigma=[0.1, 0.0])


def test_power_law_standard_errors_hand_values():
    # log x = 0, 1, 2 and log y = 0, 1, 3: least squares log y = -1/6 + 1.5 log x, residuals 1/6, -1/3, 1/6,
    # s^2 = (1/36 + 4/36 + 1/36) / (3 - 2) = 1/6; (A^T A)^-1 = [[5/6, -1/2], [-1/2, 1/2]] for A = [1, log x], so
    # se(b) = sqrt(1/2 * 1/6) = sqrt(1/12) and se(log a) = sqrt(5/6 * 1/6) = sqrt(5)/6
    f = fit_power_law(np.exp([0.0, 1.0, 2.0]), np.exp([0.0, 1.0, 3.0]))
    assert f.params["b"] == pytest.approx(1.5) and f.params["a"] == pytest.approx(np.exp(-1 / 6))
    assert f.stderr["b"] == pytest.approx(np.sqrt(1 / 12)) and f.stderr["log_a"] == pytest.approx(np.sqrt(5) / 6)
    # sigmas taken as absolute (s^2 = 1): the same points with sigma = y, i.e. 1 on log y, give sqrt of the diagonal
    g = fit_power_law(np.exp([0.0, 1.0, 2.0]), np.exp([0.0, 1.0, 3.0]), sigma=np.exp([0.0, 1.0, 3.0]))
    assert g.stderr["b"] == pytest.approx(np.sqrt(1 / 2)) and g.stderr["log_a"] == pytest.approx(np.sqrt(5 / 6))
