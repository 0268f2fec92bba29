from gateway.metrics import Metrics


def test_invalidation_lag_histogram_is_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.02, 0.3, 7.0, -0.5):  # negative: clock skew, counted as 0
        metrics.observe_invalidation_lag(seconds)
    text = metrics.render()
    assert 'gateway_invalidation_lag_seconds_bucket{le="0.005"} 2' in text
    assert 'gateway_invalidation_lag_seconds_bucket{le="0.025"} 3' in text
    assert 'gateway_invalidation_lag_seconds_bucket{le="0.5"} 4' in text
    assert 'gateway_invalidation_lag_seconds_bucket{le="+Inf"} 5' in text
    assert "gateway_invalidation_lag_seconds_count 5" in text
