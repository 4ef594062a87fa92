//! Results: rows of the table, rendered as `results.md` and `results.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// Values of one metric, one per repetition (or per sample set).
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn one(v: f64) -> Samples {
        Samples(vec![v])
    }

    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

/// Nearest-rank percentile (p in 0..=100) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    PerSec,
    Micros,
    Millis,
    Seconds,
    Bytes,
    Count,
    Percent,
    /// A plain number with two decimals.
    Number,
    /// A factor, `1.23×`.
    Times,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::PerSec => "1/s",
            Unit::Micros => "µs",
            Unit::Millis => "ms",
            Unit::Seconds => "s",
            Unit::Bytes => "bytes",
            Unit::Count => "count",
            Unit::Percent => "%",
            Unit::Number => "",
            Unit::Times => "×",
        }
    }

    pub fn fmt(self, v: f64) -> String {
        match self {
            Unit::PerSec => format!("{}/s", group(v.round())),
            Unit::Micros => format!("{v:.0} µs"),
            Unit::Millis => format!("{v:.0} ms"),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Bytes => {
                if v >= 1024.0 * 1024.0 {
                    format!("{:.1} MiB", v / (1024.0 * 1024.0))
                } else {
                    format!("{:.1} KiB", v / 1024.0)
                }
            }
            Unit::Count => group(v.round()),
            Unit::Percent => format!("{v:.1}%"),
            Unit::Number => format!("{v:.2}"),
            Unit::Times => format!("{v:.2}×"),
        }
    }
}

fn group(v: f64) -> String {
    let neg = v < 0.0;
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub section: String,
    pub metric: String,
    pub backend: &'static str,
    pub unit: Unit,
    pub replica: Samples,
    pub litestream: Samples,
    /// The target in words; empty for informational rows.
    pub target: String,
    /// `None`: informational (no target), or not measurable.
    pub pass: Option<bool>,
}

impl Row {
    pub fn info(section: &str, metric: &str, backend: &'static str, unit: Unit) -> Row {
        Row {
            section: section.into(),
            metric: metric.into(),
            backend,
            unit,
            replica: Samples::default(),
            litestream: Samples::default(),
            target: String::new(),
            pass: None,
        }
    }

    pub fn values(mut self, replica: Samples, litestream: Samples) -> Row {
        self.replica = replica;
        self.litestream = litestream;
        self
    }

    /// Sets the target and judges the replica median with `check`.
    pub fn target(mut self, text: &str, check: impl Fn(f64) -> bool) -> Row {
        self.target = text.into();
        self.pass = self.replica.median().map(check);
        self
    }

    /// Sets a "replica is `factor`× faster (or smaller)" target, judged on
    /// Litestream's median ÷ replica's.
    pub fn target_factor(mut self, text: &str, factor: f64) -> Row {
        self.target = text.into();
        self.pass = match (self.replica.median(), self.litestream.median()) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a >= factor),
            (Some(_), Some(_)) => Some(false),
            _ => None,
        };
        self
    }

    /// Sets a "less than Litestream" target.
    pub fn target_below_litestream(mut self, text: &str) -> Row {
        self.target = text.into();
        self.pass = match (self.replica.median(), self.litestream.median()) {
            (Some(a), Some(b)) => Some(a < b),
            _ => None,
        };
        self
    }

    fn cell(&self, s: &Samples) -> String {
        match (s.median(), s.min(), s.max()) {
            (Some(m), Some(lo), Some(hi)) if s.0.len() > 1 => format!(
                "{} ({}–{})",
                self.unit.fmt(m),
                self.unit.fmt(lo),
                self.unit.fmt(hi)
            ),
            (Some(m), _, _) => self.unit.fmt(m),
            _ => "—".into(),
        }
    }

    fn ratio(&self) -> Option<f64> {
        // A shared baseline shown in both columns has no ratio.
        if self.replica.0 == self.litestream.0 {
            return None;
        }
        match (self.replica.median(), self.litestream.median()) {
            (Some(r), Some(l)) if l != 0.0 => Some(r / l),
            _ => None,
        }
    }

    fn verdict(&self) -> &'static str {
        match (self.target.is_empty(), self.pass) {
            (true, _) => "info",
            (false, Some(true)) => "PASS",
            (false, Some(false)) => "**FAIL**",
            (false, None) => "n/a",
        }
    }

    fn json(&self) -> Value {
        let s = |s: &Samples| {
            json!({
                "median": s.median(),
                "min": s.min(),
                "max": s.max(),
                "samples": s.0,
            })
        };
        json!({
            "section": self.section,
            "metric": self.metric,
            "backend": self.backend,
            "unit": self.unit.name(),
            "replica": s(&self.replica),
            "litestream": s(&self.litestream),
            "ratio_replica_over_litestream": self.ratio(),
            "target": if self.target.is_empty() { Value::Null } else { json!(self.target) },
            "pass": self.pass,
        })
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub title: String,
    /// (key, value) lines for the machine, versions and settings sections.
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub rows: Vec<Row>,
    /// Scenarios that failed to run, with the error.
    pub errors: Vec<(String, String)>,
    pub wall_seconds: f64,
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", self.title);
        let failed = self.rows.iter().filter(|r| r.pass == Some(false)).count();
        let passed = self.rows.iter().filter(|r| r.pass == Some(true)).count();
        let _ = writeln!(
            md,
            "{passed} targets met, {failed} missed{}; total wall time {:.1} min. Cells are \
             the median over repetitions with the range in parentheses; ratio is \
             replica ÷ Litestream (of the medians); pass/fail judges replica's median.\n",
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(", {} scenario(s) did not run", self.errors.len())
            },
            self.wall_seconds / 60.0
        );
        let _ = writeln!(
            md,
            "| metric | backend | replica | Litestream | ratio | target | pass/fail |\n|---|---|---|---|---|---|---|"
        );
        let mut section = String::new();
        for r in &self.rows {
            if r.section != section {
                section = r.section.clone();
                let _ = writeln!(md, "| **{}** | | | | | | |", esc(&section));
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                esc(&r.metric),
                r.backend,
                r.cell(&r.replica),
                r.cell(&r.litestream),
                r.ratio().map_or("—".into(), |x| format!("{x:.2}×")),
                if r.target.is_empty() {
                    "—".into()
                } else {
                    esc(&r.target)
                },
                r.verdict()
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Scenarios that did not run\n");
            for (name, e) in &self.errors {
                let _ = writeln!(md, "- **{name}**: `{}`", e.replace('\n', " ⏎ "));
            }
        }
        for (title, kv) in [
            ("Machine", &self.machine),
            ("Versions", &self.versions),
            ("Settings", &self.settings),
        ] {
            let _ = writeln!(md, "\n## {title}\n");
            for (k, v) in kv {
                let _ = writeln!(md, "- {k}: {v}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## How it was measured\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    pub fn json(&self) -> Value {
        let kv = |v: &Vec<(String, String)>| {
            Value::Object(
                v.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        json!({
            "title": self.title,
            "machine": kv(&self.machine),
            "versions": kv(&self.versions),
            "settings": kv(&self.settings),
            "notes": self.notes,
            "wall_seconds": self.wall_seconds,
            "rows": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "errors": self.errors.iter().map(|(n, e)| json!({"scenario": n, "error": e})).collect::<Vec<_>>(),
        })
    }

    pub fn write(&self, md: &Path, json_path: &Path) -> Result<()> {
        if let Some(d) = md.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(md, self.markdown()).with_context(|| format!("writing {}", md.display()))?;
        let text = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(json_path, text + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(Samples(vec![3.0, 1.0, 2.0, 10.0]).median(), Some(2.5));
        assert_eq!(group(1234567.0), "1,234,567");
        assert_eq!(group(12.0), "12");
    }
}
