SELECT hour, check_name, subject, value, threshold, passed, severity, detail
FROM alert_evaluations
WHERE hour = $hour AND NOT passed
ORDER BY check_name, subject
