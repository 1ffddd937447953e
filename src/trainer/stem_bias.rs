//! airbench94's frozen whitening bias (`whiten_bias_epochs`): the stem's bias (`conv1.bias`,
//! which only the whitening stem has) trains for the first epochs of a run and stays as it is
//! from then on. In a run it is a trainer callback ([`StemBiasFreeze`], the checkpoint section
//! `stem_bias`).
use tch::{nn, Kind, Tensor};

use super::{EpochContext, TrainCallback, TrainConfig, TrainError};

/// The checkpoint section of the freeze.
const SECTION: &str = "stem_bias";

/// The name of the stem's bias.
const STEM_BIAS: &str = "conv1.bias";

/// Stops the stem's bias (`conv1.bias`) from training after the epoch `epochs`
/// ([`TrainConfig::stem_bias_epochs`]): from then on it requires no gradient, and the
/// optimisers leave a parameter that requires none alone (no weight decay, no momentum), as
/// PyTorch's optimisers skip a parameter whose gradient is `None` (airbench sets
/// `requires_grad = False` at the start of each epoch from `whiten_bias_epochs` on). A
/// lookahead ([`TrainConfig::lookahead`]) still sets it to its slow copy, as airbench's
/// lookahead does with every entry of the state dict. Saved in the checkpoint, so that a run
/// resumed after the freeze keeps the bias frozen.
#[derive(Debug)]
pub struct StemBiasFreeze {
    /// Epochs the bias trains.
    epochs: usize,
    /// The bias.
    bias: Tensor,
}

impl StemBiasFreeze {
    /// The freeze of `vs`'s stem bias after `epochs` epochs (at once for 0).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming `stem_bias_epochs` when `vs` has no `conv1.bias`.
    pub fn new(vs: &nn::VarStore, epochs: usize) -> Result<Self, TrainError> {
        let Some(bias) = vs.variables().remove(STEM_BIAS) else {
            return Err(TrainError::InvalidConfig {
                field: "stem_bias_epochs",
                value: epochs.to_string(),
                expected: "a model whose stem convolution has a bias (conv1.bias: the \
                    whitening stem), or null"
                    .into(),
            });
        };
        let freeze = StemBiasFreeze { epochs, bias };
        if epochs == 0 {
            freeze.freeze();
        }
        Ok(freeze)
    }

    /// The freeze `config` asks for over `vs`; `None` without `stem_bias_epochs` or when `vs`
    /// has no stem bias (nothing to freeze, as [`TrainConfig::stem_bias_epochs`] says).
    ///
    /// # Errors
    /// As [`StemBiasFreeze::new`].
    pub fn from_config(
        config: &TrainConfig,
        vs: &nn::VarStore,
    ) -> Result<Option<Self>, TrainError> {
        match config.stem_bias_epochs {
            Some(epochs) if vs.variables().contains_key(STEM_BIAS) => {
                Self::new(vs, epochs).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Whether the bias is frozen.
    pub fn frozen(&self) -> bool {
        !self.bias.requires_grad()
    }

    fn freeze(&self) {
        let _ = self.bias.set_requires_grad(false);
    }
}

impl TrainCallback for StemBiasFreeze {
    fn section(&self) -> &str {
        SECTION
    }

    fn after_epoch(&mut self, ctx: &EpochContext<'_>) -> Result<(), TrainError> {
        if ctx.metrics.epoch >= self.epochs {
            self.freeze();
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let frozen = Tensor::from(i64::from(self.frozen()));
        vec![("frozen".into(), frozen)]
    }

    fn check_state(&self, tensors: &[(String, Tensor)]) -> Result<(), String> {
        match tensors {
            [(name, t)] if name == "frozen" && t.numel() == 1 && t.kind() == Kind::Int64 => Ok(()),
            _ => Err("expected one int64 scalar `frozen`".into()),
        }
    }

    fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError> {
        if let [(_, t)] = tensors.as_slice() {
            if t.int64_value(&[]) != 0 {
                self.freeze();
            }
        }
        Ok(())
    }
}
