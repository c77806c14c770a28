-- The providers of each hour of batch_hours, worst first (highest error rate, then slowest p95).
SELECT hour, provider, requests, errors, error_rate, p95_ms, healthy
FROM provider_health_hourly
WHERE hour IN (SELECT hour FROM batch_hours)
QUALIFY row_number() OVER (PARTITION BY hour ORDER BY error_rate DESC, p95_ms DESC NULLS LAST, provider) <= $limit
ORDER BY hour, error_rate DESC, p95_ms DESC NULLS LAST, provider
