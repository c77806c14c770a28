SELECT hour, check_name, subject, value, threshold, passed, severity, detail
FROM alert_evaluations
WHERE hour IN (SELECT hour FROM batch_hours) AND NOT passed
ORDER BY hour, check_name, subject
