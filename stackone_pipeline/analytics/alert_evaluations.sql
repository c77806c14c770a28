-- Every threshold evaluation of the hours of batch_hours, passed or not, read from their derived rows.
-- A value equal to its threshold passes: only crossing it fails.

-- 1. Overall (all providers) error rate of each 5-minute bucket that had requests.
SELECT
    hour,
    'overall_error_rate_5m' AS check_name,
    'bucket ' || strftime(bucket_start, '%Y-%m-%dT%H:%MZ') AS subject,
    sum(errors) / sum(requests) AS value,
    $error_rate_5m AS threshold,
    sum(errors) / sum(requests) <= $error_rate_5m AS passed,
    $severity AS severity,
    sum(errors) || ' errors / ' || sum(requests) || ' requests' AS detail,
    $project::VARCHAR AS project
FROM error_rate_5m
WHERE hour IN (SELECT hour FROM batch_hours)
GROUP BY hour, bucket_start

UNION ALL
-- 2a. p95 latency of the hour, all providers.
SELECT
    hour, 'p95_latency', 'overall', p95_ms, $p95_ms, p95_ms <= $p95_ms, $severity,
    requests || ' requests', $project
FROM request_volume_hourly
WHERE hour IN (SELECT hour FROM batch_hours) AND p95_ms IS NOT NULL

UNION ALL
-- 2b. p95 latency of the hour, per provider.
SELECT
    hour, 'p95_latency', 'provider ' || provider, p95_ms, $p95_ms, p95_ms <= $p95_ms, $severity,
    requests || ' requests', $project
FROM provider_health_hourly
WHERE hour IN (SELECT hour FROM batch_hours) AND p95_ms IS NOT NULL

UNION ALL
-- 3. Error rate of each provider over the hour; a failure names its worst accounts.
SELECT
    p.hour, 'provider_error_rate', 'provider ' || p.provider, p.error_rate, $provider_error_rate,
    p.error_rate <= $provider_error_rate, $severity,
    p.errors || ' errors / ' || p.requests || ' requests'
        || CASE WHEN p.error_rate > $provider_error_rate THEN '; worst accounts: ' || (
            SELECT array_to_string(list(
                a.account_id || ' ' || a.errors || '/' || a.requests ORDER BY a.errors DESC, a.account_id
            )[1:3], ', ')
            FROM account_errors_hourly AS a
            WHERE a.hour = p.hour AND a.provider = p.provider AND a.errors > 0
        ) ELSE '' END,
    $project
FROM provider_health_hourly AS p
WHERE p.hour IN (SELECT hour FROM batch_hours)

UNION ALL
-- 4. Request volume against its baseline (always evaluated; no score = not enough history).
SELECT
    hour, 'request_volume_anomaly', 'overall', score, $volume_score, NOT anomaly, $severity,
    CASE WHEN score IS NULL
        THEN requests || ' requests; not scored: ' || history_days || ' of ' || $min_history_days
             || ' days of same-hour history needed'
        ELSE requests || ' requests vs baseline ' || round(baseline, 1) || ' (MAD ' || round(mad, 1)
             || ', ' || history_days || ' days)'
    END,
    $project
FROM request_volume_hourly
WHERE hour IN (SELECT hour FROM batch_hours)
