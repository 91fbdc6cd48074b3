//! What a run logs: each optimiser step (`StepLog`) and each validation (`History`), in a JSON form that keeps
//! the non-finite values a diverged run logs.

use serde::{Deserialize, Serialize};

/// One optimiser step, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Counted from 1.
    pub step: u64,
    /// Mean training loss of the step, in bits per character.
    #[serde(with = "json_float")]
    pub bits: f64,
    #[serde(with = "json_float")]
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(with = "json_float")]
    pub grad_norm: f64,
}

/// Everything logged so far: every step, and each validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub steps: Vec<StepLog>,
    /// `(step, validation bits per character)`.
    #[serde(with = "json_float::pairs")]
    pub valid: Vec<(u64, f64)>,
}

/// JSON has no NaN or infinity (serde_json writes `null`, which does not read back as a number), yet a
/// history may hold them: it is logged up to the step that diverged. They are kept as the strings `"NaN"`,
/// `"inf"` and `"-inf"`, so every value round-trips through a checkpoint and `history.json`.
mod json_float {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
        /// What older versions wrote for a NaN: read as NaN, so their checkpoints resume.
        Null(()),
    }

    fn repr(v: f64) -> Repr {
        match v {
            v if v.is_finite() => Repr::Number(v),
            v if v.is_nan() => Repr::Text("NaN".into()),
            v if v > 0.0 => Repr::Text("inf".into()),
            _ => Repr::Text("-inf".into()),
        }
    }

    fn value<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Number(v) => Ok(v),
            Repr::Null(()) => Ok(f64::NAN),
            Repr::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\", got {t:?}"
                ))),
            },
        }
    }

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        repr(*v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        value(Repr::deserialize(d)?)
    }

    /// The same for `(step, value)` pairs.
    pub(crate) mod pairs {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &[(u64, f64)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|&(step, x)| (step, repr(x))))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(u64, f64)>, D::Error> {
            Vec::<(u64, Repr)>::deserialize(d)?
                .into_iter()
                .map(|(step, r)| Ok((step, value(r)?)))
                .collect()
        }
    }
}
