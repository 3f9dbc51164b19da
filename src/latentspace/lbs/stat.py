"""Statistical forecasters for LBS: ARIMA and ETS fitted on the training part, as a highway and as baselines.

The baselines (`forecast.arima_forecast`, `forecast.ets_forecast`) and the statistical highway share one
fit: the ARIMA order and the ETS variant of least AIC on the training part (statsmodels). A fit is kept
as a JSON-able spec (the model, its order or variant and its fitted parameters), so a checkpoint can
rebuild the forecaster without the training data. `stat_table` filters a whole series with the fitted
parameters once and reads every step's H-step forecast off the filtered states (the state-space
recursion a_{t+k} = c + T a_{t+k-1}, y = d + Z a), which equals re-applying the model at each origin
(`res.apply(z[:t + 1]).forecast(H)`) but costs one filter pass instead of one per origin.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from ..core.errors import ConfigError, DataError

ARIMA_ORDERS = ((1, 0, 0), (2, 0, 1), (0, 1, 1), (1, 1, 1), (2, 1, 2))
ETS_VARIANTS = (("ETS(A,N,N)", {}), ("ETS(A,Ad,N)", {"trend": True, "damped_trend": True}))
STAT_KINDS = ("arima", "ets")


def _least_aic(fits, what: str):
    """(label, results) of least AIC among `fits`, (label, thunk fitting one model); failed fits are skipped."""
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, fit in fits:
            try:
                res = fit()
            except (ValueError, np.linalg.LinAlgError):
                continue
            if best is None or res.aic < best[1].aic:
                best = (label, res)
    if best is None:
        raise DataError(f"no {what} could be fitted to the training part")
    return best


def fit_arima(z_train: np.ndarray, orders=ARIMA_ORDERS):
    """ARIMA of least AIC on z_train (constant when d = 0): (order, fitted results)."""
    from statsmodels.tsa.arima.model import ARIMA

    return _least_aic(((order, lambda order=order: ARIMA(z_train, order=order,
                                                          trend="c" if order[1] == 0 else "n").fit())
                       for order in orders), "ARIMA order")


def fit_ets(z_train: np.ndarray):
    """Exponential smoothing (state space): simple or damped trend, the one of least AIC: (name, results)."""
    from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

    return _least_aic(((name, lambda kwargs=kwargs: ExponentialSmoothing(z_train, **kwargs).fit(disp=False))
                       for name, kwargs in ETS_VARIANTS), "exponential smoothing model")


def fit_stat_spec(z_train: np.ndarray, kind: str) -> dict:
    """Fit `kind` ("arima" or "ets") on the training part; the JSON-able spec `stat_table` rebuilds it from."""
    z_train = np.asarray(z_train, dtype=np.float64)
    if kind == "arima":
        order, res = fit_arima(z_train)
        return {"kind": "arima", "name": f"ARIMA{order}", "order": list(order),
                "trend": "c" if order[1] == 0 else "n", "params": [float(v) for v in res.params]}
    if kind == "ets":
        name, res = fit_ets(z_train)
        kwargs = dict(ETS_VARIANTS)[name]
        return {"kind": "ets", "name": name, "kwargs": kwargs, "params": [float(v) for v in res.params]}
    raise ConfigError(f"unknown statistical forecaster {kind!r}: expected one of {list(STAT_KINDS)}")


def _filtered(spec: dict, z: np.ndarray):
    """The spec's model on series z (T,), filtered with its fitted parameters (no re-estimation)."""
    params = np.asarray(spec["params"], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["kind"] == "arima":
            from statsmodels.tsa.arima.model import ARIMA

            return ARIMA(z, order=tuple(spec["order"]), trend=spec["trend"]).filter(params)
        if spec["kind"] == "ets":
            from statsmodels.tsa.statespace.exponential_smoothing import ExponentialSmoothing

            return ExponentialSmoothing(z, **spec["kwargs"]).filter(params)
    raise ConfigError(f"unknown statistical forecaster {spec.get('kind')!r}")


_NDIM = {"transition": 2, "design": 2, "state_intercept": 1, "obs_intercept": 1}  # without a time axis


def _time_invariant(matrix: np.ndarray, name: str) -> np.ndarray:
    """A system matrix without its time axis; it must not vary over time (a constant trend does not)."""
    if matrix.ndim > _NDIM[name]:
        if not np.allclose(matrix, matrix[..., :1]):
            raise DataError(f"statistical highway: time-varying {name} is not supported")
        matrix = matrix[..., 0]
    return matrix


def stat_table(spec: dict, z: np.ndarray, horizon: int) -> np.ndarray:
    """Every step's H-step forecast of the fitted spec on z (T,): (T, H), row t forecasts z[t + 1 .. t + H]
    from z[: t + 1] only (causal)."""
    res = _filtered(spec, np.asarray(z, dtype=np.float64))
    ssm = res.model.ssm
    trans = _time_invariant(ssm["transition"], "transition")  # (k, k)
    design = _time_invariant(ssm["design"], "design")  # (1, k)
    c = _time_invariant(ssm["state_intercept"], "state_intercept")  # (k,)
    d = _time_invariant(ssm["obs_intercept"], "obs_intercept")  # (1,)
    a = res.filtered_state.T  # (T, k): a_{t|t}
    out = []
    for _ in range(horizon):
        a = a @ trans.T + c  # a_{t+k|t}
        out.append(a @ design.T + d)  # (T, 1)
    return np.concatenate(out, 1)


def parse_specs(text: str) -> dict[str, dict]:
    """The JSON text older checkpoints kept in config.json (`highway_stat`) -> {kind: spec}; '' -> {}."""
    if not text:
        return {}
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"highway_stat is not valid JSON: {err}") from None
    if not isinstance(specs, dict):
        raise ConfigError("highway_stat must be a JSON object {kind: spec}")
    return specs
