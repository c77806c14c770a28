-- Headline figures of one derived hour (Dagster metadata, logs).
SELECT
    v.requests,
    v.errors,
    v.error_rate,
    v.p95_ms,
    v.score AS volume_score,
    v.anomaly AS volume_anomaly,
    (SELECT count(*) FROM provider_health_hourly WHERE hour = $hour) AS providers,
    (SELECT count(*) FROM provider_health_hourly WHERE hour = $hour AND NOT healthy) AS providers_unhealthy,
    (SELECT max(error_rate) FROM error_rate_5m_overall WHERE hour = $hour) AS max_error_rate_5m
FROM request_volume_hourly AS v
WHERE v.hour = $hour
