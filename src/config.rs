//! The model configuration, as the CLI's JSON and the reference constructor give it.

use crate::error::{Error, Result};
use crate::model::transformer::check_layer_sizes;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `HourGlass::new(n_heads, d_model, dropout, d_ff, shortening_factors)` as a value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourGlassConfig {
    pub n_heads: usize,
    pub d_model: usize,
    pub dropout: f64,
    pub d_ff: usize,
    /// Shortening factor of each level, each relative to the level above: [2, 3] is 2x, then 3x more.
    pub shortening_factors: Vec<usize>,
}

impl HourGlassConfig {
    /// Errors name the offending value: sizes of zero, d_model not divisible by n_heads, dropout outside
    /// [0, 1), an empty factor list or a zero factor.
    pub fn validate(&self) -> Result<()> {
        check_layer_sizes(self.n_heads, self.d_model, self.d_ff, self.dropout)?;
        if self.shortening_factors.is_empty() {
            return Err(Error::Config(
                "shortening_factors is empty: an hourglass needs at least one factor".into(),
            ));
        }
        if let Some(i) = self.shortening_factors.iter().position(|&k| k == 0) {
            return Err(Error::Config(format!(
                "shortening_factors[{i}] is 0 in {:?}: factors must be at least 1",
                self.shortening_factors
            )));
        }
        Ok(())
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("invalid config JSON: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_json(&text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }
}
