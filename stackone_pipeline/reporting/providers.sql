-- The window's provider-hours.
SELECT hour, provider, requests, errors, error_rate, p95_ms, healthy
FROM provider_health_hourly
WHERE hour >= $start AND hour < $end
ORDER BY hour, provider
