//! What a weights file says about itself: the model configuration, the class names and how
//! images were prepared, as string metadata of the safetensors file (PyTorch's
//! `safetensors.torch.load_file` ignores it, so the file still loads into torchvision).
use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::source::is_safetensors;
use super::{check_fits_config, describe_incompatible, LoadOptions, TensorSource, WeightsError};
use crate::data::Normalization;
use crate::resnext::ResNeXtConfig;

/// Metadata key of [`WeightsMetadata::model`] (JSON of a [`ResNeXtConfig`]).
pub const MODEL_KEY: &str = "resnext.model";
/// Metadata key of [`WeightsMetadata::classes`] (a JSON array of strings).
pub const CLASSES_KEY: &str = "resnext.classes";
/// Metadata key of [`WeightsMetadata::image_size`] (a decimal integer).
pub const IMAGE_SIZE_KEY: &str = "resnext.image_size";
/// Metadata key of [`WeightsMetadata::normalization`] (JSON of a [`Normalization`]).
pub const NORMALIZATION_KEY: &str = "resnext.normalization";

/// Every metadata key of [`WeightsMetadata`].
/// The largest image side the metadata may ask for.
pub const MAX_IMAGE_SIZE: i64 = 8192;

const KEYS: [&str; 4] = [MODEL_KEY, CLASSES_KEY, IMAGE_SIZE_KEY, NORMALIZATION_KEY];

/// Everything needed to use a weights file without being told: written by
/// [`save_weights_with`](super::save_weights_with) (the trainer writes it into
/// `last.safetensors` and `best.safetensors`), read by [`read_weights_metadata`].
///
/// ```
/// use resnext::data::Normalization;
/// use resnext::weights::WeightsMetadata;
/// use resnext::ResNeXtConfig;
/// let meta = WeightsMetadata {
///     model: ResNeXtConfig::tiny(2),
///     classes: vec!["cat".into(), "dog".into()],
///     image_size: 32,
///     normalization: Normalization::default(),
/// };
/// let map = meta.to_map();
/// assert_eq!(map["resnext.classes"], r#"["cat","dog"]"#);
/// let back = WeightsMetadata::from_map(std::path::Path::new("w.safetensors"), &map).unwrap();
/// assert_eq!(back, Some(meta));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsMetadata {
    /// The architecture the weights are for.
    pub model: ResNeXtConfig,
    /// The name of every class, in the order of the classifier's outputs.
    pub classes: Vec<String>,
    /// Side of the square images the network was trained on.
    pub image_size: i64,
    /// Per-channel normalisation of the images the network was trained on.
    pub normalization: Normalization,
}

impl WeightsMetadata {
    /// The metadata as the string map of a safetensors file (keys [`MODEL_KEY`],
    /// [`CLASSES_KEY`], [`IMAGE_SIZE_KEY`], [`NORMALIZATION_KEY`]).
    pub fn to_map(&self) -> HashMap<String, String> {
        [
            (MODEL_KEY, to_json(&self.model)),
            (CLASSES_KEY, to_json(&self.classes)),
            (IMAGE_SIZE_KEY, self.image_size.to_string()),
            (NORMALIZATION_KEY, to_json(&self.normalization)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads the metadata from the string map of the file `path` (named in errors): `None`
    /// when the map has none of its keys (a file PyTorch wrote, for example).
    ///
    /// # Errors
    /// [`WeightsError::Metadata`] naming the file and the key when some keys are there but
    /// not all, or one does not parse, or the values disagree (not one class name per output
    /// of the model, an image size below 1, a non-positive std, an invalid model).
    pub fn from_map(
        path: &Path,
        map: &HashMap<String, String>,
    ) -> Result<Option<Self>, WeightsError> {
        if !KEYS.iter().any(|k| map.contains_key(*k)) {
            return Ok(None);
        }
        let bad = |key: &'static str, problem: String| WeightsError::Metadata {
            path: path.to_path_buf(),
            key,
            problem,
        };
        let value = |key: &'static str| {
            map.get(key).ok_or_else(|| {
                bad(
                    key,
                    "missing, while the file has other `resnext.` keys".into(),
                )
            })
        };
        let meta = WeightsMetadata {
            model: parse(value(MODEL_KEY)?).map_err(|e| bad(MODEL_KEY, e))?,
            classes: parse(value(CLASSES_KEY)?).map_err(|e| bad(CLASSES_KEY, e))?,
            image_size: parse(value(IMAGE_SIZE_KEY)?).map_err(|e| bad(IMAGE_SIZE_KEY, e))?,
            normalization: parse(value(NORMALIZATION_KEY)?)
                .map_err(|e| bad(NORMALIZATION_KEY, e))?,
        };
        meta.check().map_err(|(key, problem)| bad(key, problem))?;
        Ok(Some(meta))
    }

    /// Checks that the values agree; the error names the key and the problem.
    fn check(&self) -> Result<(), (&'static str, String)> {
        self.model
            .validate()
            .map_err(|e| (MODEL_KEY, e.to_string()))?;
        if self.classes.len() as i64 != self.model.num_classes {
            return Err((
                CLASSES_KEY,
                format!(
                    "{} class names for a model with {} classes; expected one name per class",
                    self.classes.len(),
                    self.model.num_classes
                ),
            ));
        }
        if !(1..=MAX_IMAGE_SIZE).contains(&self.image_size) {
            return Err((
                IMAGE_SIZE_KEY,
                format!("{}; expected 1 to {MAX_IMAGE_SIZE}", self.image_size),
            ));
        }
        self.normalization
            .validate()
            .map_err(|e| (NORMALIZATION_KEY, e.to_string()))
    }
}

/// Parses one metadata value as JSON, with the value in the error.
fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("`{text}` does not parse: {e}"))
}

/// JSON text of plain data (strings, integers, floats), which always serialises.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The [`WeightsMetadata`] of the safetensors file `path`, or `None` when it has none (a file
/// PyTorch wrote, one saved by [`save_weights`](super::save_weights), or a PyTorch `.pth`).
/// Only the file's header is read. The metadata is data, not trust: besides its own checks
/// ([`WeightsMetadata::from_map`]), the model it describes must have exactly the names and
/// shapes of the file's tensors, compared without building anything.
///
/// # Errors
/// [`WeightsError::Io`] for an unreadable or corrupt file; [`WeightsError::Metadata`] naming
/// the file and the key for malformed metadata (see [`WeightsMetadata::from_map`]) or a model
/// description the tensors do not match (the first differences listed).
pub fn read_weights_metadata(path: &Path) -> Result<Option<WeightsMetadata>, WeightsError> {
    if !is_safetensors(path)? {
        return Ok(None);
    }
    metadata_of(&TensorSource::safetensors(path)?)
}

/// [`read_weights_metadata`] of a safetensors file already open, every tensor under its own
/// name (as [`TensorSource::safetensors`] opens it).
pub(crate) fn metadata_of(source: &TensorSource) -> Result<Option<WeightsMetadata>, WeightsError> {
    let path = source.path();
    let Some(meta) = WeightsMetadata::from_map(path, &source.metadata)? else {
        return Ok(None);
    };
    let strict = LoadOptions { strict: true };
    check_fits_config(&meta.model, source, strict).map_err(|e| match e {
        WeightsError::Incompatible {
            missing,
            mismatched,
            wrong_kind,
            unexpected,
            ..
        } => WeightsError::Metadata {
            path: path.to_path_buf(),
            key: MODEL_KEY,
            problem: format!(
                "describes a `{}` whose tensors are not the file's: {}",
                meta.model.name,
                describe_incompatible(&missing, &mismatched, &wrong_kind, &unexpected)
            ),
        },
        other => other,
    })?;
    Ok(Some(meta))
}
