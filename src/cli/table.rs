//! kubectl-style plain tables (uppercase headers, columns padded to the widest cell) and ages.

use chrono::{DateTime, Utc};

/// Spaces between two columns, as kubectl prints them.
const COLUMN_GAP: usize = 3;

/// A table of text cells with a header row. Rendering never fails: short rows are padded
/// with empty cells and long rows are cut to the header's width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (printed uppercase).
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends one row; cells are taken in header order.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Number of data rows (the header excluded).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the table has no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: every column as wide as its widest cell plus three spaces, the
    /// last column unpadded, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(width(cell(row, i)));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, column_width) in widths.iter().enumerate() {
                let text = cell(row, i);
                line.push_str(text);
                if i + 1 < columns {
                    let pad = column_width - width(text) + COLUMN_GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The `i`th cell of a row, empty when the row is short.
fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}

/// Display width of a cell, counted in characters (cells are single-line text).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// How long ago `then` was, relative to `now`, the way kubectl prints an AGE:
/// `45s`, `3m20s`, `3m`, `2h5m`, `2h`, `4d3h`, `4d`, `2y30d`, `9y`. A time in the future
/// (clock skew) prints as `0s`; the epoch (no timestamp recorded) as `<unknown>`.
pub fn human_age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if then.timestamp_millis() == 0 {
        return "<unknown>".to_string();
    }
    let seconds = (now - then).num_seconds();
    human_duration(seconds)
}

/// kubectl's `HumanDuration` for a number of seconds (negative counts as zero).
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    let both = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        both(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        both(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        both(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        both(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell_plus_three_spaces() {
        let mut t = Table::new(&["id", "phase", "age"]);
        t.push(vec!["sandbox/web".into(), "running".into(), "3m".into()]);
        t.push(vec!["sandbox/a".into(), "".into(), "45s".into()]);
        assert_eq!(
            t.render(),
            "ID            PHASE     AGE\n\
             sandbox/web   running   3m\n\
             sandbox/a               45s\n"
        );
    }

    #[test]
    fn the_last_column_and_trailing_blanks_are_not_padded() {
        let mut t = Table::new(&["a", "b"]);
        t.push(vec!["x".into(), "".into()]);
        assert_eq!(t.render(), "A   B\nx\n");
    }

    #[test]
    fn short_and_long_rows_render_without_panicking() {
        let mut t = Table::new(&["a", "b"]);
        t.push(vec!["only".into()]);
        t.push(vec!["1".into(), "2".into(), "extra".into()]);
        assert_eq!(t.render(), "A      B\nonly\n1      2\n");
    }

    #[test]
    fn wide_characters_count_as_one_column_each() {
        let mut t = Table::new(&["name", "x"]);
        t.push(vec!["héllo".into(), "1".into()]);
        assert_eq!(t.render(), "NAME    X\nhéllo   1\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (180, "3m"),
            (200, "3m20s"),
            (45 * 60, "45m"),
            (2 * 3600, "120m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (20 * 3600, "20h"),
            (4 * 86_400, "4d"),
            (4 * 86_400 + 3 * 3600, "4d3h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400 + 86_400, "3y1d"),
            (10 * 365 * 86_400, "10y"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn an_unrecorded_creation_time_has_an_unknown_age() {
        let now = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        assert_eq!(human_age(DateTime::<Utc>::UNIX_EPOCH, now), "<unknown>");
        assert_eq!(human_age(now - Duration::seconds(90), now), "90s");
    }
}
