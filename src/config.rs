//! The model configuration, as the CLI's JSON and the reference constructor give it.
//!
//! The five keys of the reference (`n_heads`, `d_model`, `dropout`, `d_ff`, `shortening_factors`) are
//! required; the component keys of `docs/components.md` are optional and default to the reference model
//! (average pooling, naive upsampling, one layer per stack, causal, no positions), so a reference config
//! written by older code loads unchanged, and `to_json` writes a reference config with exactly the five keys.

use crate::error::{Error, Result};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// How a level shortens its sequence (`"shortening"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShorteningKind {
    /// AvgPool(k) after ShiftRight(k−1): the reference.
    #[default]
    Avg,
    /// Linear(k·D, D) over each window's k vectors, concatenated.
    Linear,
    /// Attention of the pooled queries over the full-length sequence, then a feed-forward block.
    Attention,
}

/// How a level brings its shortened sequence back to full length (`"upsampling"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsamplingKind {
    /// `x + repeat_k(short)`: the reference.
    #[default]
    Naive,
    /// `x + unfold(Linear(D, k·D)(short))`.
    Linear,
    /// Attention of the full-length queries over the shortened sequence, then a feed-forward block.
    Attention,
}

/// The pooling `S` inside attention shortening (`"attention_pooling"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionPooling {
    #[default]
    Avg,
    Linear,
}

/// The upsampling `U` inside attention upsampling (`"attention_upsampling"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionUpsampling {
    #[default]
    Naive,
    Linear,
}

/// Which keys the attention resamplers see (`"attention_resampling_mask"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResamplingMask {
    /// The paper's: shortened query i sees every key up to the end of its window; full-length query i sees
    /// shortened keys up to `i / k` (every key when non-causal).
    #[default]
    Funnel,
    /// The PyTorch package's cheaper variant: each query sees only its own window.
    Window,
}

/// Position information for self-attention (`"positions"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// None added (the reference): causal masks and the shift before shortening tell positions apart.
    #[default]
    None,
    /// Rotary embeddings (RoPE, half-split pairing) on the queries and keys of every transformer layer's
    /// self-attention, positions `0..len` of the layer's own level; not in the attention resamplers
    /// (`ops::rotary`, `docs/components.md`). Needs an even `d_head = d_model / n_heads`.
    Rotary,
}

/// The config key a kind is read from, so that an unknown kind's error names the key as well as the value.
pub(crate) trait ConfigKey {
    const KEY: &'static str;
}

macro_rules! config_key {
    ($($ty:ty => $key:literal),* $(,)?) => {
        $(impl ConfigKey for $ty {
            const KEY: &'static str = $key;
        })*
    };
}

config_key!(
    ShorteningKind => "shortening",
    UpsamplingKind => "upsampling",
    AttentionPooling => "attention_pooling",
    AttentionUpsampling => "attention_upsampling",
    ResamplingMask => "attention_resampling_mask",
    Positions => "positions",
);

/// Reads a kind through a JSON value, prefixing serde's own message (which names the value) with the key.
fn kind_from<T: ConfigKey + DeserializeOwned, E: serde::de::Error>(
    v: Value,
) -> std::result::Result<T, E> {
    T::deserialize(v).map_err(|e| E::custom(format!("{}: {e}", T::KEY)))
}

fn kind<'de, D: Deserializer<'de>, T: ConfigKey + DeserializeOwned>(
    d: D,
) -> std::result::Result<T, D::Error> {
    kind_from(Value::deserialize(d)?)
}

/// One kind for every level, or one per level (a JSON string or a list of strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerLevel<T> {
    All(T),
    Each(Vec<T>),
}

impl<T: Copy + Default> Default for PerLevel<T> {
    fn default() -> Self {
        PerLevel::All(T::default())
    }
}

impl<T: Copy> PerLevel<T> {
    /// The kind of level `i` (0 = outermost); a list shorter than the levels is caught by `validate`.
    pub fn at(&self, i: usize) -> T {
        match self {
            PerLevel::All(kind) => *kind,
            PerLevel::Each(kinds) => kinds[i],
        }
    }
}

impl<T> From<T> for PerLevel<T> {
    fn from(kind: T) -> Self {
        PerLevel::All(kind)
    }
}

impl<T: Serialize> Serialize for PerLevel<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PerLevel::All(kind) => kind.serialize(s),
            PerLevel::Each(kinds) => kinds.serialize(s),
        }
    }
}

impl<'de, T: ConfigKey + DeserializeOwned> Deserialize<'de> for PerLevel<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Array(items) => Ok(PerLevel::Each(
                items
                    .into_iter()
                    .map(kind_from)
                    .collect::<std::result::Result<_, _>>()?,
            )),
            other => Ok(PerLevel::All(kind_from(other)?)),
        }
    }
}

/// The PyTorch package's `depth`: a triple `(pre, valley, post)` per level, the valley a nested triple while
/// factors remain and a number of layers at the innermost level, e.g. `(4, (2, 1, 2), 3)` for factors
/// `(2, 4)`. Any tree of numbers and triples can be written down; `HourGlassConfig::validate` checks that it
/// fits the factors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Depth {
    Layers(usize),
    Triple(Box<[Depth; 3]>),
}

impl Depth {
    /// `(pre, valley, post)`: `Depth::triple(4, Depth::triple(2, 1, 2), 3)`.
    pub fn triple(pre: impl Into<Depth>, valley: impl Into<Depth>, post: impl Into<Depth>) -> Self {
        Depth::Triple(Box::new([pre.into(), valley.into(), post.into()]))
    }

    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .map(|n| Depth::Layers(n as usize))
                .ok_or_else(|| {
                    format!("depth entry {n} is not a number of layers (a non-negative integer)")
                }),
            Value::Array(items) if items.len() == 3 => {
                let [pre, valley, post] = [&items[0], &items[1], &items[2]].map(Depth::from_value);
                Ok(Depth::triple(pre?, valley?, post?))
            }
            Value::Array(_) => Err(format!(
                "depth entry {v} is not a triple [pre, valley, post]"
            )),
            other => Err(format!(
                "depth entry {other} is neither a number of layers nor a triple [pre, valley, post]"
            )),
        }
    }
}

impl From<usize> for Depth {
    fn from(n: usize) -> Self {
        Depth::Layers(n)
    }
}

impl fmt::Display for Depth {
    /// As JSON: `[4, [2, 1, 2], 3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Depth::Layers(n) => write!(f, "{n}"),
            Depth::Triple(t) => write!(f, "[{}, {}, {}]", t[0], t[1], t[2]),
        }
    }
}

impl Serialize for Depth {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Depth::Layers(n) => n.serialize(s),
            Depth::Triple(t) => t.as_slice().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Depth::from_value(&Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// What one level of the hourglass is made of, resolved from a valid config (0 = outermost level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    pub factor: usize,
    pub shortening: ShorteningKind,
    pub upsampling: UpsamplingKind,
    /// Transformer layers before shortening and after upsampling.
    pub pre: usize,
    pub post: usize,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_true(v: &bool) -> bool {
    *v
}

fn yes() -> bool {
    true
}

/// `HourGlass::new(n_heads, d_model, dropout, d_ff, shortening_factors)` as a value, plus the components of
/// `docs/components.md`. Build one with `HourGlassConfig::reference(..)` and struct-update syntax:
///
/// ```
/// use hourglass::config::{Depth, HourGlassConfig, PerLevel, ShorteningKind, UpsamplingKind};
/// let c = HourGlassConfig {
///     shortening: PerLevel::Each(vec![ShorteningKind::Linear, ShorteningKind::Attention]),
///     upsampling: UpsamplingKind::Attention.into(),
///     depth: Some(Depth::triple(2, Depth::triple(1, 2, 0), 1)),
///     ..HourGlassConfig::reference(2, 16, 0.1, 32, &[2, 3])
/// };
/// c.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourGlassConfig {
    pub n_heads: usize,
    pub d_model: usize,
    pub dropout: f64,
    pub d_ff: usize,
    /// Shortening factor of each level, each relative to the level above: [2, 3] is 2x, then 3x more. Empty,
    /// with `depth` a number of layers: a plain transformer (the baseline the hourglass is measured against).
    pub shortening_factors: Vec<usize>,
    /// `"avg"` (default), `"linear"` or `"attention"`, for every level or one per level.
    #[serde(default, skip_serializing_if = "is_default")]
    pub shortening: PerLevel<ShorteningKind>,
    /// `"naive"` (default), `"linear"` or `"attention"`, for every level or one per level.
    #[serde(default, skip_serializing_if = "is_default")]
    pub upsampling: PerLevel<UpsamplingKind>,
    /// S inside attention shortening: `"avg"` (default) or `"linear"`.
    #[serde(default, skip_serializing_if = "is_default", deserialize_with = "kind")]
    pub attention_pooling: AttentionPooling,
    /// U inside attention upsampling: `"naive"` (default) or `"linear"`.
    #[serde(default, skip_serializing_if = "is_default", deserialize_with = "kind")]
    pub attention_upsampling: AttentionUpsampling,
    /// `"funnel"` (default) or `"window"`.
    #[serde(default, skip_serializing_if = "is_default", deserialize_with = "kind")]
    pub attention_resampling_mask: ResamplingMask,
    /// `(pre, valley, post)` layer counts, nested per level; `None` is one layer everywhere; a plain
    /// transformer's number of layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<Depth>,
    /// Autoregressive (default): shift before shortening, causal masks. `false`: no shift, no masks (the
    /// per-window resampling masks keep their windows).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub causal: bool,
    /// `"none"` (default) or `"rotary"`: rotary embeddings on q and k of every transformer layer's
    /// self-attention (not the attention resamplers'); needs an even d_head.
    #[serde(default, skip_serializing_if = "is_default", deserialize_with = "kind")]
    pub positions: Positions,
}

impl HourGlassConfig {
    /// The reference model of `HourGlass::new`: average pooling, naive upsampling, one layer per stack, causal.
    pub fn reference(
        n_heads: usize,
        d_model: usize,
        dropout: f64,
        d_ff: usize,
        shortening_factors: &[usize],
    ) -> Self {
        Self {
            n_heads,
            d_model,
            dropout,
            d_ff,
            shortening_factors: shortening_factors.to_vec(),
            shortening: PerLevel::default(),
            upsampling: PerLevel::default(),
            attention_pooling: AttentionPooling::default(),
            attention_upsampling: AttentionUpsampling::default(),
            attention_resampling_mask: ResamplingMask::default(),
            depth: None,
            causal: true,
            positions: Positions::None,
        }
    }

    /// A plain transformer of `layers` pre-norm layers at full length, with the reference's layer (no
    /// shortening): the hourglass's baseline.
    pub fn plain(n_heads: usize, d_model: usize, dropout: f64, d_ff: usize, layers: usize) -> Self {
        Self {
            depth: Some(Depth::Layers(layers)),
            ..Self::reference(n_heads, d_model, dropout, d_ff, &[])
        }
    }

    /// Errors name the offending value: sizes of zero, d_model not divisible by n_heads, dropout outside
    /// [0, 1), an empty factor list or a zero factor, a per-level list whose length is not the number of
    /// factors, a depth that does not fit the factors, an innermost valley of 0 layers, rotary positions with
    /// an odd d_head. An empty factor list is a plain transformer when `depth` is a number of layers
    /// ([`HourGlassConfig::plain`]), and an error otherwise.
    pub fn validate(&self) -> Result<()> {
        check_layer_sizes(self.n_heads, self.d_model, self.d_ff, self.dropout)?;
        let d_head = self.d_model / self.n_heads;
        if self.positions == Positions::Rotary && !d_head.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "positions \"rotary\" needs an even d_head, got d_head {d_head} (d_model {} / n_heads {}): \
                 rotary pairs (i, i + d_head/2) in every head",
                self.d_model, self.n_heads
            )));
        }
        let factors = &self.shortening_factors;
        if factors.is_empty() && !matches!(self.depth, Some(Depth::Layers(_))) {
            return Err(Error::Config(
                "shortening_factors is empty: an hourglass needs at least one factor (for a plain \
                 transformer without shortening, give depth as its number of layers)"
                    .into(),
            ));
        }
        if let Some(i) = factors.iter().position(|&k| k == 0) {
            return Err(Error::Config(format!(
                "shortening_factors[{i}] is 0 in {factors:?}: factors must be at least 1"
            )));
        }
        check_per_level("shortening", &self.shortening, factors)?;
        check_per_level("upsampling", &self.upsampling, factors)?;
        self.depths()?;
        Ok(())
    }

    /// Each level's parts, outermost first, and the number of layers in the innermost valley.
    pub fn levels(&self) -> Result<(Vec<LevelSpec>, usize)> {
        self.validate()?;
        let (stacks, valley) = self.depths()?;
        let specs = self
            .shortening_factors
            .iter()
            .zip(stacks)
            .enumerate()
            .map(|(i, (&factor, (pre, post)))| LevelSpec {
                factor,
                shortening: self.shortening.at(i),
                upsampling: self.upsampling.at(i),
                pre,
                post,
            })
            .collect();
        Ok((specs, valley))
    }

    /// `(pre, post)` of each level and the innermost valley's layer count, checked against the factors.
    fn depths(&self) -> Result<(Vec<(usize, usize)>, usize)> {
        let factors = &self.shortening_factors;
        let depth = match &self.depth {
            None => return Ok((vec![(1, 1); factors.len()], 1)),
            Some(d) => d,
        };
        let mismatch = |why: String| {
            Error::Config(format!(
                "depth {depth} does not match shortening_factors {factors:?}: {why}"
            ))
        };
        let number = |what: &str, d: &Depth| match d {
            Depth::Layers(n) => Ok(*n),
            Depth::Triple(_) => Err(mismatch(format!(
                "{what} must be a number of layers, got the triple {d}"
            ))),
        };
        let mut stacks = Vec::new();
        let mut level = depth;
        for (i, factor) in factors.iter().enumerate() {
            let Depth::Triple(t) = level else {
                return Err(mismatch(format!(
                    "level {i} (factor {factor}) needs a triple [pre, valley, post], got the number {level}"
                )));
            };
            stacks.push((
                number(&format!("pre of level {i}"), &t[0])?,
                number(&format!("post of level {i}"), &t[2])?,
            ));
            level = &t[1];
        }
        let innermost = match factors.len() {
            0 => "plain transformer".to_string(),
            n => format!("the valley of the innermost level {}", n - 1),
        };
        let valley = number(&innermost, level)?;
        if valley == 0 {
            return Err(mismatch(format!(
                "{innermost} has 0 layers; it needs at least 1"
            )));
        }
        Ok((stacks, valley))
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

    /// The JSON of `from_json`; keys at their defaults are left out (a reference config has exactly the five
    /// keys of the reference constructor).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }
}

/// Checks the sizes every transformer layer needs (the model's constructors call it too).
pub(crate) fn check_layer_sizes(
    n_heads: usize,
    d_model: usize,
    d_ff: usize,
    dropout: f64,
) -> Result<()> {
    if n_heads == 0 || d_model == 0 || d_ff == 0 {
        return Err(Error::Config(format!(
            "n_heads ({n_heads}), d_model ({d_model}) and d_ff ({d_ff}) must all be at least 1"
        )));
    }
    if !d_model.is_multiple_of(n_heads) {
        return Err(Error::Config(format!(
            "d_model {d_model} is not divisible by n_heads {n_heads}"
        )));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::Config(format!(
            "dropout must be in [0, 1), got {dropout}"
        )));
    }
    Ok(())
}

fn check_per_level<T: Serialize>(key: &str, kinds: &PerLevel<T>, factors: &[usize]) -> Result<()> {
    match kinds {
        PerLevel::Each(list) if list.len() != factors.len() => Err(Error::Config(format!(
            "{key} lists {} kind(s) {} but shortening_factors {factors:?} has {} levels: give one kind \
             per level, or a single kind for all",
            list.len(),
            serde_json::to_string(list).expect("kinds serialise"),
            factors.len()
        ))),
        _ => Ok(()),
    }
}
