//! Samples, percentiles and the two outputs: the side-by-side table and `--json`.
//!
//! Owns no measuring: workloads hand in `(operation, subject, durations)` and this module
//! summarises them. A subject is an endpoint (named after its `Version.runtime_name`) or a
//! floor (`bare runc`).

use std::time::Duration;

use serde::Serialize;

/// One operation measured on one subject.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub operation: String,
    pub subject: String,
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Operations per second: `samples / wall` when `wall` was given (parallel churn),
    /// else `1 / mean` (one at a time).
    pub ops_per_s: f64,
}

impl Row {
    /// Summarises `samples`; `wall` is the elapsed time of a parallel run, if any.
    pub fn new(
        operation: &str,
        subject: &str,
        mut samples: Vec<Duration>,
        wall: Option<Duration>,
    ) -> Row {
        samples.sort();
        let n = samples.len();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |p: f64| {
            if n == 0 {
                0.0
            } else {
                ms(samples[((n as f64 - 1.0) * p).round() as usize])
            }
        };
        let total: Duration = samples.iter().sum();
        let mean_ms = if n == 0 { 0.0 } else { ms(total) / n as f64 };
        let ops_per_s = match wall {
            Some(w) if w > Duration::ZERO => n as f64 / w.as_secs_f64(),
            _ if mean_ms > 0.0 => 1e3 / mean_ms,
            _ => 0.0,
        };
        Row {
            operation: operation.to_owned(),
            subject: subject.to_owned(),
            samples: n,
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            mean_ms,
            ops_per_s,
        }
    }
}

/// A column: an endpoint or a floor.
#[derive(Debug, Serialize)]
pub struct Subject {
    pub name: String,
    /// The runtime's version and endpoint, or what the floor runs.
    pub description: String,
}

/// Everything one run measured, in measuring order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Column order.
    pub subjects: Vec<Subject>,
    /// The workload parameters (`iterations`, `image`, ...), as given.
    pub parameters: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// Failures and remarks (a workload an endpoint failed, a floor that was skipped).
    pub notes: Vec<String>,
    /// `/proc/loadavg` when the run started, so a busy machine shows.
    pub loadavg: String,
}

impl Report {
    pub fn new() -> Report {
        Report {
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            ..Report::default()
        }
    }

    pub fn subject(&mut self, name: &str, description: &str) {
        if !self.subjects.iter().any(|s| s.name == name) {
            self.subjects.push(Subject {
                name: name.to_owned(),
                description: description.to_owned(),
            });
        }
    }

    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn note(&mut self, note: String) {
        eprintln!("crius-bench: {note}");
        self.notes.push(note);
    }

    /// The table: one line per operation, one column group per subject (p50 / p90 / p99 ms
    /// and ops/s), and the p50 ratio of the first subject to the second when both have it.
    pub fn table(&self) -> String {
        let mut ops: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !ops.contains(&r.operation.as_str()) {
                ops.push(&r.operation);
            }
        }
        let names: Vec<&str> = self.subjects.iter().map(|s| s.name.as_str()).collect();
        let width = ops.iter().map(|o| o.len()).max().unwrap_or(9).max(9);
        let col = 31;
        let mut out = format!("{:<width$}", "operation");
        for n in &names {
            out.push_str(&format!(" | {n:^col$}"));
        }
        if names.len() >= 2 {
            out.push_str(&format!(" | {:>7}", "p50 1:2"));
        }
        out.push('\n');
        out.push_str(&format!("{:<width$}", ""));
        for _ in &names {
            out.push_str(&format!(
                " | {:>6} {:>6} {:>6} {:>9}",
                "p50", "p90", "p99", "ops/s"
            ));
        }
        if names.len() >= 2 {
            out.push_str(" |");
        }
        out.push('\n');
        out.push_str(
            &"-".repeat(width + names.len() * (col + 3) + if names.len() >= 2 { 10 } else { 0 }),
        );
        out.push('\n');
        for op in ops {
            let row = |subject: &str| {
                self.rows
                    .iter()
                    .find(|r| r.operation == op && r.subject == subject)
            };
            out.push_str(&format!("{op:<width$}"));
            for n in &names {
                match row(n) {
                    Some(r) => out.push_str(&format!(
                        " | {:>6} {:>6} {:>6} {:>9.1}",
                        fmt_ms(r.p50_ms),
                        fmt_ms(r.p90_ms),
                        fmt_ms(r.p99_ms),
                        r.ops_per_s
                    )),
                    None => out.push_str(&format!(" | {:^col$}", "-")),
                }
            }
            if names.len() >= 2 {
                match (row(names[0]), row(names[1])) {
                    (Some(a), Some(b)) if b.p50_ms > 0.0 => {
                        out.push_str(&format!(" | {:>7.2}", a.p50_ms / b.p50_ms))
                    }
                    _ => out.push_str(&format!(" | {:>7}", "-")),
                }
            }
            out.push('\n');
        }
        out.push_str(
            "times in ms; ops/s = 1/mean one at a time, or completed/wall for the parallel churn\n",
        );
        out.push_str(&self.over_floor());
        for s in &self.subjects {
            out.push_str(&format!("{}: {}\n", s.name, s.description));
        }
        if !self.parameters.is_empty() {
            let p: Vec<String> = self
                .parameters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("parameters: {}\n", p.join(" ")));
        }
        out.push_str(&format!("load average at start: {}\n", self.loadavg));
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

impl Report {
    /// Each endpoint's create+start and ExecSync over each bare runtime's (subjects named
    /// `bare …`), p50.
    fn over_floor(&self) -> String {
        let mut out = String::new();
        for op in ["CreateContainer+StartContainer", "ExecSync"] {
            let rows = self.rows.iter().filter(|r| r.operation == op);
            let (floors, endpoints): (Vec<&Row>, Vec<&Row>) =
                rows.partition(|r| r.subject.starts_with("bare "));
            for e in &endpoints {
                for f in &floors {
                    if f.p50_ms > 0.0 {
                        out.push_str(&format!(
                            "{op} p50, {} over {}: {:+.1} ms ({:.2}x)\n",
                            e.subject,
                            f.subject,
                            e.p50_ms - f.p50_ms,
                            e.p50_ms / f.p50_ms
                        ));
                    }
                }
            }
        }
        out
    }
}

/// Three significant-ish digits: `0.412`, `12.4`, `105`.
fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_throughput() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let r = Row::new("op", "s", samples.clone(), None);
        assert_eq!(
            (r.p50_ms.round(), r.p90_ms.round(), r.p99_ms.round()),
            (51.0, 90.0, 99.0)
        );
        assert!((r.ops_per_s - 1e3 / 50.5).abs() < 1e-6);
        let r = Row::new("op", "s", samples, Some(Duration::from_secs(2)));
        assert!((r.ops_per_s - 50.0).abs() < 1e-6);
        assert_eq!(Row::new("op", "s", vec![], None).p99_ms, 0.0);
    }

    #[test]
    fn table_has_ratio_and_floor_overhead() {
        let ms = |v: u64| vec![Duration::from_millis(v)];
        let mut r = Report::new();
        for (s, d) in [("crius", "a"), ("containerd", "b"), ("bare runc", "c")] {
            r.subject(s, d);
        }
        let op = "CreateContainer+StartContainer";
        r.push(Row::new(op, "crius", ms(60), None));
        r.push(Row::new(op, "containerd", ms(120), None));
        r.push(Row::new(op, "bare runc", ms(50), None));
        r.push(Row::new("ExecSync", "containerd", ms(5), None));
        let t = r.table();
        assert!(t.contains("|    0.50\n"), "{t}");
        assert!(t.contains("crius over bare runc: +10.0 ms (1.20x)"), "{t}");
        assert!(
            t.contains("containerd over bare runc: +70.0 ms (2.40x)"),
            "{t}"
        );
        let exec = t
            .lines()
            .find(|l| l.starts_with("ExecSync"))
            .unwrap_or_default();
        assert!(exec.ends_with("|       -"), "{t}");
    }
}
