//! Reading samples out of a Prometheus text exposition (a `/metrics` page) in tests.

/// Sums the values of the samples of metric `name` whose label set contains every entry of
/// `labels` (each written as in the exposition, e.g. `controller="sandbox"`), truncated to
/// a whole number. Samples whose value does not parse are skipped; no sample at all is 0.
pub fn metric_sum(exposition: &str, name: &str, labels: &[&str]) -> u64 {
    let labelled = format!("{name}{{");
    let plain = format!("{name} ");
    exposition
        .lines()
        .filter(|l| l.starts_with(&labelled) || l.starts_with(&plain))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x_total things\n\
        x_total{controller=\"sandbox\",result=\"ok\"} 3\n\
        x_total{controller=\"sandbox\",result=\"error\"} 2\n\
        x_total{controller=\"service\",result=\"ok\"} 7\n\
        x_total_other{controller=\"sandbox\"} 100\n\
        y 4.5\n";

    #[test]
    fn metric_sum_adds_the_samples_with_all_the_labels_of_that_metric_only() {
        assert_eq!(metric_sum(PAGE, "x_total", &["controller=\"sandbox\""]), 5);
        assert_eq!(metric_sum(PAGE, "x_total", &[]), 12);
        assert_eq!(metric_sum(PAGE, "y", &[]), 4);
        assert_eq!(metric_sum(PAGE, "missing", &[]), 0);
    }
}
