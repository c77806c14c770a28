-- The providers of one hour, worst first (highest error rate, then slowest p95).
SELECT provider, requests, errors, error_rate, p95_ms, healthy
FROM provider_health_hourly
WHERE hour = $hour
ORDER BY error_rate DESC, p95_ms DESC NULLS LAST, provider
LIMIT $limit
