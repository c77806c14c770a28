-- The window's hours, all providers: volume, baseline, score, errors, p95.
SELECT hour, requests, errors, error_rate, p95_ms, history_days, baseline, score, anomaly
FROM request_volume_hourly
WHERE hour >= $start AND hour < $end
ORDER BY hour
