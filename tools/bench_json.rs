//! The machine-readable figures of a bench (`--json-out FILE`), shared by the
//! benches that include this file with `#[path = "bench_json.rs"] mod bench_json;`.
//!
//! The file holds one JSON object: `{"bench": "<name>", "params": {...},
//! "figures": [{"name", "value", "unit", "goal"?, "met"}]}`. A name is a
//! stable snake_case identifier; `value` is a number (or `null` when the bench
//! could not measure it, e.g. no sample); `goal` is the goal in words when the
//! issue sets one, and `met` is whether the value meets it (`null` when there
//! is no goal or no value).

use std::path::{Path, PathBuf};

/// The figures of one run, in the order they were recorded.
#[derive(Default)]
pub struct Figures {
    figures: Vec<serde_json::Value>,
}

impl Figures {
    /// A figure without a goal.
    pub fn add(&mut self, name: &str, value: f64, unit: &str) {
        self.push(name, value, unit, None, None);
    }

    /// A figure with a goal in words and whether `value` meets it (`meets` is
    /// not consulted for a value that is not finite: `met` is then `null`).
    pub fn goal(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        goal: &str,
        meets: impl Fn(f64) -> bool,
    ) {
        let met = value.is_finite().then(|| meets(value));
        self.push(name, value, unit, Some(goal), met);
    }

    fn push(&mut self, name: &str, value: f64, unit: &str, goal: Option<&str>, met: Option<bool>) {
        let mut figure = serde_json::json!({
            "name": name,
            // serde_json writes a NaN or an infinity as null.
            "value": value,
            "unit": unit,
            "met": met,
        });
        if let Some(goal) = goal {
            figure["goal"] = serde_json::Value::from(goal);
        }
        self.figures.push(figure);
    }

    /// Writes the object to `path` (replacing it) and says so on stdout.
    pub fn write(self, path: &Path, bench: &str, params: serde_json::Value) {
        let document = serde_json::json!({
            "bench": bench,
            "params": params,
            "figures": self.figures,
        });
        let text = serde_json::to_string_pretty(&document).expect("the figures serialize");
        std::fs::write(path, text + "\n")
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        println!("figures written to {}", path.display());
    }
}

/// The value of `--json-out FILE` among the command-line arguments, if given.
pub fn json_out_arg() -> Option<PathBuf> {
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        if argument == "--json-out" {
            return Some(PathBuf::from(
                arguments.next().expect("--json-out takes a path"),
            ));
        }
    }
    None
}

/// Whether `flag` (e.g. `--skip-lag`) is among the command-line arguments.
pub fn has_flag(flag: &str) -> bool {
    std::env::args().skip(1).any(|argument| argument == flag)
}
