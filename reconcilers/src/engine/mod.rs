//! The reusable controller engine: work queue, retries, runner, resync, write tracking, dry-run plans.
