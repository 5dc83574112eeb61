//! Human output: volumes in m³, ages, aligned tables, coverage lines.

use hydromesh_proto::query::Coverage;

/// Writes `line` and a newline to stdout. A closed pipe (the reader went away) ends the
/// process quietly with status 0; any other failure (a full disk under a redirect) ends it
/// with the error and status 2. Used through `say!`.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: cannot write the output: {error}");
            std::process::exit(i32::from(super::EXIT_ERROR));
        }
    }
}

pub use crate::domain::cubic_metres;

/// An age in ms as a short human duration ("2 s", "3 min", "1 h").
pub fn age(ms: u64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// "3 fog nodes, 0 stale, data as of 2 s ago", plus the nodes left out, if any, named by `name`.
pub fn coverage_line(coverage: &Coverage, name: impl Fn(&str) -> String) -> String {
    let nodes = coverage.included.len();
    let mut line = format!(
        "{nodes} fog node{}, {} stale, data as of {} ago",
        if nodes == 1 { "" } else { "s" },
        coverage.stale.len(),
        age(coverage.oldest_data_age_ms)
    );
    let list = |peers: &[String]| peers.iter().map(|peer| name(peer)).collect::<Vec<_>>().join(", ");
    if !coverage.stale.is_empty() {
        line += &format!("\nstale: {}", list(&coverage.stale));
    }
    if !coverage.missing.is_empty() {
        line += &format!("\nnot included (did not answer): {}", list(&coverage.missing));
    }
    line
}

/// A table with a header row; columns are right-aligned when `numeric`, else left-aligned.
pub struct Table {
    headers: Vec<(&'static str, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these `(header, numeric)` columns.
    pub fn new(headers: &[(&'static str, bool)]) -> Self {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The aligned table, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, (header, _))| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(header.len())
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    let (width, numeric) = (widths[i], self.headers[i].1);
                    if numeric {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut out = vec![line(self.headers.iter().map(|(h, _)| *h).collect())];
        out.extend(self.rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_exact_cubic_metres() {
        assert_eq!(cubic_metres(0), "0.000");
        assert_eq!(cubic_metres(1234), "1.234");
        assert_eq!(cubic_metres(1_000_005), "1000.005");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&[("METER", true), ("HOME", false)]);
        table.row(vec!["7".into(), "abc".into()]);
        table.row(vec!["1234567".into(), "d".into()]);
        assert_eq!(table.render(), "  METER  HOME\n      7  abc\n1234567  d");
    }

    #[test]
    fn coverage_names_stale_and_missing_nodes() {
        let coverage = Coverage {
            included: vec!["a".into(), "b".into()].into(),
            stale: vec!["b".into()],
            missing: vec!["c".into()],
            oldest_data_age_ms: 2500,
        };
        assert_eq!(
            coverage_line(&coverage, |peer| format!("node-{peer}")),
            "2 fog nodes, 1 stale, data as of 2 s ago\nstale: node-b\nnot included (did not answer): node-c"
        );
    }
}
