-- Headline figures of each derived hour of batch_hours (Dagster metadata, logs).
SELECT
    v.hour,
    v.requests,
    v.errors,
    v.error_rate,
    v.p95_ms,
    v.score AS volume_score,
    v.anomaly AS volume_anomaly,
    (SELECT count(*) FROM provider_health_hourly AS p WHERE p.hour = v.hour) AS providers,
    (SELECT count(*) FROM provider_health_hourly AS p WHERE p.hour = v.hour AND NOT p.healthy) AS providers_unhealthy,
    (SELECT max(e.error_rate) FROM error_rate_5m_overall AS e WHERE e.hour = v.hour) AS max_error_rate_5m
FROM request_volume_hourly AS v
WHERE v.hour IN (SELECT hour FROM batch_hours)
ORDER BY v.hour
