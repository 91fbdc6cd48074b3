//! What the benches share: results as JSON lines for `tools/perf_report.py` (one object per measurement, in
//! the format `docs/perf.md` describes), appended to `$HOURGLASS_BENCH_JSON` when it is set.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::Write;

/// Appends each result, with the date and device, to the file `$HOURGLASS_BENCH_JSON` names (when set).
pub struct Report {
    path: Option<std::path::PathBuf>,
    device: String,
}

impl Report {
    pub fn from_env(device: &str) -> Self {
        Self {
            path: std::env::var_os("HOURGLASS_BENCH_JSON").map(Into::into),
            device: device.to_string(),
        }
    }

    /// Writes `fields` (an object) with `date`, `device` and `impl: "hourglass"` added.
    pub fn write(&self, mut fields: Value) {
        let Some(path) = &self.path else { return };
        let obj = fields.as_object_mut().expect("a JSON object");
        obj.insert("date".into(), json!(today()));
        obj.insert("device".into(), json!(self.device));
        obj.insert("impl".into(), json!("hourglass"));
        let line = serde_json::to_string(&fields).expect("serialises") + "\n";
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot append to {}: {e}", path.display());
        }
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from the days since 1970 (the civil-from-days algorithm).
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
