//! A weights file opened once: its header (or `.pth` pickle) read a single time, then asked
//! for its metadata, its architecture and finally its tensors, so that a program that needs
//! all three (`predict`, the exporters, fine-tuning) reads the file's header once and each
//! tensor once, and every answer is about the same file.
use std::path::Path;

use tch::{nn, Device};

use super::metadata::metadata_of;
use super::model::{load_model_from, stem_and_classes};
use super::pretrained::load_pretrained_from;
use super::{
    matching_preset, LoadOptions, LoadedModel, PretrainedReport, Shapes, TensorSource,
    WeightsError, WeightsMetadata,
};
use crate::resnext::{ResNeXtConfig, Stem};

/// A safetensors or PyTorch weights file, open, with the names, shapes and element types of
/// its tensors read (no tensor data yet). The free functions of [`crate::weights`]
/// ([`read_weights_metadata`](super::read_weights_metadata),
/// [`config_from_weights`](super::config_from_weights), [`load_model`](super::load_model),
/// [`load_pretrained`](super::load_pretrained), …) each open the file anew; this answers them
/// all from one opening.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resnext::weights::{save_weights, LoadOptions, WeightsFile};
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::{nn, Device};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("weights.safetensors");
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// save_weights(&vs, &path, 0)?;
///
/// let file = WeightsFile::open(&path)?;
/// assert!(file.metadata()?.is_none()); // save_weights writes none
/// let config = file.preset().expect("the tiny preset's tensors");
/// assert_eq!(config, ResNeXtConfig::tiny(10));
/// let loaded = file.load_model(&config, Device::Cpu, LoadOptions { strict: true })?;
/// assert_eq!(loaded.report.loaded, vs.variables().len());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WeightsFile {
    /// Every tensor under its own name (the model's prefix is taken off when it is loaded).
    source: TensorSource,
}

impl WeightsFile {
    /// Opens a safetensors file or a PyTorch `torch.save` file (told apart by their first
    /// bytes, see [`read_state_dict`](super::read_state_dict)), reading its header or pickle.
    ///
    /// # Errors
    /// [`WeightsError::Io`] for an unreadable or corrupt safetensors file,
    /// [`WeightsError::Pytorch`] for a PyTorch file that is refused.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        Ok(WeightsFile {
            source: TensorSource::open_whole(path)?,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// The file's [`WeightsMetadata`], as [`read_weights_metadata`](super::read_weights_metadata)
    /// gives it (`None` for a PyTorch file or a file without it), checked against its tensors.
    ///
    /// # Errors
    /// [`WeightsError::Metadata`] as [`read_weights_metadata`](super::read_weights_metadata).
    pub fn metadata(&self) -> Result<Option<WeightsMetadata>, WeightsError> {
        if !self.source.is_safetensors() {
            return Ok(None);
        }
        metadata_of(&self.source)
    }

    /// The names and shapes of the model's tensors (found under a prefix such as `module.` as
    /// [`read_state_dict`](super::read_state_dict) finds them, named without it; BN batch
    /// counters left out).
    pub fn shapes(&self) -> Shapes {
        self.source.model_shapes()
    }

    /// The preset whose variables are exactly the file's model tensors, as
    /// [`preset_for_weights`](super::preset_for_weights) finds it.
    pub fn preset(&self) -> Option<ResNeXtConfig> {
        matching_preset(&self.shapes())
    }

    /// The preset `name` with the file's stem and number of classes, as
    /// [`config_from_weights`](super::config_from_weights) gives it.
    ///
    /// # Errors
    /// As [`config_from_weights`](super::config_from_weights), the file being open already.
    pub fn config_for(&self, name: &str) -> Result<ResNeXtConfig, WeightsError> {
        let (stem, num_classes) = self.architecture()?;
        Ok(ResNeXtConfig::from_name(name, num_classes)?.with_stem(stem))
    }

    /// The stem and number of classes of the file's model, as
    /// [`pretrained_architecture`](super::pretrained_architecture) gives them.
    ///
    /// # Errors
    /// [`WeightsError::Infer`] when `conv1.weight` or `fc.weight` is missing or oddly shaped.
    pub fn architecture(&self) -> Result<(Stem, i64), WeightsError> {
        stem_and_classes(self.path(), &self.shapes())
    }

    /// Builds the network `config` describes on `device` and loads the file's weights into it,
    /// as [`load_model`](super::load_model) does: each tensor the model has is read once.
    ///
    /// # Errors
    /// As [`load_model`](super::load_model).
    pub fn load_model(
        self,
        config: &ResNeXtConfig,
        device: Device,
        options: LoadOptions,
    ) -> Result<LoadedModel, WeightsError> {
        load_model_from(config, self.source.into_model(), device, options)
    }

    /// Loads the file's weights into `vs`, the variables of the network `model` describes, as
    /// [`load_pretrained`](super::load_pretrained) does (a classifier with another number of
    /// classes keeps its fresh values).
    ///
    /// # Errors
    /// As [`load_pretrained`](super::load_pretrained); `vs` is unchanged on error.
    pub fn load_pretrained(
        self,
        vs: &mut nn::VarStore,
        model: &ResNeXtConfig,
    ) -> Result<PretrainedReport, WeightsError> {
        load_pretrained_from(vs, self.source.into_model(), model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Normalization;
    use crate::io::write_safetensors;
    use crate::weights::{
        config_from_weights, preset_for_weights, pretrained_architecture, read_weights_metadata,
        save_weights_with,
    };
    use crate::ResNeXt;
    use tch::Tensor;

    fn tiny_metadata(classes: i64) -> WeightsMetadata {
        WeightsMetadata {
            model: ResNeXtConfig::tiny(classes),
            classes: (0..classes).map(|c| format!("c{c}")).collect(),
            image_size: 32,
            normalization: Normalization::default(),
        }
    }

    /// The tensors of a tiny network with 3 classes, each name under `prefix`.
    fn tiny_tensors(prefix: &str) -> Vec<(String, Tensor)> {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(3));
        let mut tensors: Vec<(String, Tensor)> = (vs.variables().into_iter())
            .map(|(n, t)| (format!("{prefix}{n}"), t.detach()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    }

    #[test]
    fn one_opening_answers_as_the_free_functions_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(3));
        save_weights_with(&vs, &path, 7, Some(&tiny_metadata(3))).unwrap();

        let file = WeightsFile::open(&path).unwrap();
        assert_eq!(file.path(), path.as_path());
        let meta = file.metadata().unwrap();
        assert_eq!(meta, Some(tiny_metadata(3)));
        assert_eq!(meta, read_weights_metadata(&path).unwrap());
        assert_eq!(file.preset(), preset_for_weights(&path).unwrap());
        let named = file.config_for("resnext29_2x64d").unwrap();
        assert_eq!(
            named,
            config_from_weights("resnext29_2x64d", &path).unwrap()
        );
        assert_eq!(
            file.architecture().unwrap(),
            pretrained_architecture(&path).unwrap()
        );
        let loaded = file
            .load_model(
                &ResNeXtConfig::tiny(3),
                Device::Cpu,
                LoadOptions { strict: true },
            )
            .unwrap();
        assert_eq!(loaded.report.loaded, vs.variables().len());
        assert_eq!(loaded.report.num_batches_tracked, Some(7));
        for (name, t) in loaded.vs.variables() {
            assert!(t.equal(&vs.variables()[&name]), "{name}");
        }
    }

    #[test]
    fn a_prefixed_model_is_found_but_metadata_is_checked_against_the_names_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ddp.safetensors");
        let meta = Some(tiny_metadata(3).to_map());
        write_safetensors(&path, &tiny_tensors("module."), meta).unwrap();

        let file = WeightsFile::open(&path).unwrap();
        assert_eq!(file.preset(), Some(ResNeXtConfig::tiny(3)));
        assert!(file.shapes().contains_key("conv1.weight"));
        // As read_weights_metadata: the model it describes has no `module.` names.
        let e = file.metadata().unwrap_err();
        assert!(matches!(e, WeightsError::Metadata { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            read_weights_metadata(&path).unwrap_err().to_string()
        );
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(3));
        let report = file
            .load_pretrained(&mut vs, &ResNeXtConfig::tiny(3))
            .unwrap();
        assert_eq!(report.found_under.as_deref(), Some("module."));
        assert_eq!(report.replaced_classifier, None);
    }
}
