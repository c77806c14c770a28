-- The derived tables, one row per group that had requests (no zero rows), every table keyed by
-- `hour` (the partition hour) so one hour can be replaced. Error = status >= 400, or a timeout
-- (status IS NULL AND success = false). Percentiles are continuous (quantile_cont), in ms.

CREATE TABLE IF NOT EXISTS error_rate_5m (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    bucket_start TIMESTAMPTZ NOT NULL,  -- 5-minute bucket start (UTC, :00, :05, ...)
    provider VARCHAR NOT NULL,          -- integration provider ('unknown' when missing)
    requests BIGINT NOT NULL,           -- requests in the bucket
    errors BIGINT NOT NULL,             -- of which errors
    error_rate DOUBLE NOT NULL,         -- errors / requests
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);

CREATE TABLE IF NOT EXISTS error_rate_hourly (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    provider VARCHAR NOT NULL,          -- integration provider
    service VARCHAR NOT NULL,           -- API category (hris, ats, crm, ...)
    requests BIGINT NOT NULL,           -- requests in the hour
    errors BIGINT NOT NULL,             -- of which errors (4xx, 5xx, other >= 400, timeouts)
    error_rate DOUBLE NOT NULL,         -- errors / requests
    status_4xx BIGINT NOT NULL,         -- status 400-499
    status_5xx BIGINT NOT NULL,         -- status 500-599
    timeouts BIGINT NOT NULL,           -- status null and success false
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);

CREATE TABLE IF NOT EXISTS latency_hourly (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    provider VARCHAR NOT NULL,          -- integration provider
    action VARCHAR NOT NULL,            -- action executed, e.g. bamboohr_list_employees
    requests BIGINT NOT NULL,           -- requests in the hour (timeouts included)
    p50_ms DOUBLE,                      -- median duration
    p90_ms DOUBLE,                      -- 90th percentile duration
    p95_ms DOUBLE,                      -- 95th percentile duration
    p99_ms DOUBLE,                      -- 99th percentile duration
    mean_ms DOUBLE,                     -- mean duration
    max_ms DOUBLE,                      -- slowest request
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);

CREATE TABLE IF NOT EXISTS provider_health_hourly (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    provider VARCHAR NOT NULL,          -- integration provider
    requests BIGINT NOT NULL,           -- requests in the hour
    errors BIGINT NOT NULL,             -- of which errors
    error_rate DOUBLE NOT NULL,         -- errors / requests
    p95_ms DOUBLE,                      -- 95th percentile duration of the provider's requests
    healthy BOOLEAN NOT NULL,           -- error_rate <= error_rate_threshold
    error_rate_threshold DOUBLE NOT NULL,-- the provider error-rate threshold in force
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);

CREATE TABLE IF NOT EXISTS request_volume_hourly (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC); a row even when it had no requests
    requests BIGINT NOT NULL,           -- requests in the hour, all providers
    errors BIGINT NOT NULL,             -- of which errors
    error_rate DOUBLE,                  -- errors / requests (null without requests)
    p50_ms DOUBLE,                      -- median duration, all providers
    p95_ms DOUBLE,                      -- 95th percentile duration, all providers
    p99_ms DOUBLE,                      -- 99th percentile duration, all providers
    mean_ms DOUBLE,                     -- mean duration, all providers
    history_days INTEGER NOT NULL,      -- prior days (same hour of day, up to 28) with a row here
    baseline DOUBLE,                    -- median requests of those hours (null without history)
    mad DOUBLE,                         -- median absolute deviation of those hours
    score DOUBLE,                       -- (requests - baseline) / max(1.4826 * mad, sqrt(baseline), 1); null below 7 days of history
    anomaly BOOLEAN NOT NULL,           -- abs(score) > score_threshold (never without enough history)
    score_threshold DOUBLE NOT NULL,    -- the volume score threshold in force
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);

CREATE TABLE IF NOT EXISTS account_errors_hourly (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC)
    account_id VARCHAR NOT NULL,        -- linked account
    provider VARCHAR NOT NULL,          -- integration provider
    requests BIGINT NOT NULL,           -- requests in the hour
    errors BIGINT NOT NULL,             -- of which errors
    error_rate DOUBLE NOT NULL,         -- errors / requests
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);

CREATE TABLE IF NOT EXISTS alert_evaluations (
    hour TIMESTAMPTZ NOT NULL,          -- partition hour (UTC) evaluated
    check_name VARCHAR NOT NULL,        -- overall_error_rate_5m, p95_latency, provider_error_rate, request_volume_anomaly
    subject VARCHAR NOT NULL,           -- what was measured: 'bucket 2026-11-25T14:20Z', 'overall', 'provider workday'
    value DOUBLE,                       -- the measured value (null: not enough data to judge)
    threshold DOUBLE NOT NULL,          -- the threshold it was compared with
    passed BOOLEAN NOT NULL,            -- false when value crossed threshold
    severity VARCHAR NOT NULL,          -- WARN or ERROR: the severity a failure is raised with
    detail VARCHAR,                     -- context for a human (counts, worst accounts, history)
    project VARCHAR                     -- the pipeline's name of the StackOne project (STACKONE_PROJECTS)
);
