//! Parameter groups: another weight decay and learning-rate multiplier for the parameters of
//! normalisation layers and for biases, as torchvision's reference scripts
//! (`--norm-weight-decay`, `--bias-weight-decay`, `utils.set_weight_decay`) and airbench's
//! larger learning rate for BatchNorm biases.
//!
//! torchvision classifies a parameter by the module that holds it (`_BatchNorm`, `LayerNorm`,
//! `GroupNorm`, ...) and by its own name (`bias`). Here the variables of a
//! [`nn::VarStore`](tch::nn::VarStore) only have names, so the classes are read from
//! torchvision's ResNet names, which [`ResNeXt`](crate::ResNeXt) uses: a parameter of a module
//! named `bn*` (`bn1`, `layer1.0.bn2`, ...) or `downsample.1` is a norm parameter, one whose
//! last name part is `bias` is a bias. `tests/optim.rs` checks that this gives the groups of
//! torchvision's `set_weight_decay` on torchvision's own `resnext50_32x4d`.
use serde::{Deserialize, Serialize};

use super::error::{check_weight_decay, invalid, OptimError};

/// The weight decay and learning-rate multiplier of one class of parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupOverride {
    /// The weight decay of these parameters; `None` keeps the optimiser's.
    pub weight_decay: Option<f64>,
    /// Their learning rate is the step's learning rate times this (finite, above 0).
    pub lr_multiplier: f64,
}

impl Default for GroupOverride {
    /// The optimiser's weight decay and learning rate (multiplier 1).
    fn default() -> Self {
        GroupOverride {
            weight_decay: None,
            lr_multiplier: 1.0,
        }
    }
}

impl GroupOverride {
    /// No weight decay, the step's learning rate: torchvision's `--norm-weight-decay 0` /
    /// `--bias-weight-decay 0`.
    pub fn no_decay() -> Self {
        GroupOverride {
            weight_decay: Some(0.0),
            lr_multiplier: 1.0,
        }
    }

    fn validate(&self, field: &'static str) -> Result<(), OptimError> {
        if let Some(wd) = self.weight_decay {
            check_weight_decay(field, wd)?;
        }
        let m = self.lr_multiplier;
        if !(m.is_finite() && m > 0.0) {
            return Err(invalid("lr_multiplier", m, "a finite number above 0"));
        }
        Ok(())
    }
}

/// The class of a parameter, the first that applies of: [`NormBias`](Self::NormBias) (when
/// [`ParamGroups::norm_bias`] is set), [`Bias`](Self::Bias) (when [`ParamGroups::bias`] is
/// set), [`Norm`](Self::Norm) (when [`ParamGroups::norm`] is set), [`Other`](Self::Other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamClass {
    /// Everything else: the optimiser's own weight decay, multiplier 1.
    Other,
    /// A weight or bias of a normalisation layer.
    Norm,
    /// A bias (of any layer).
    Bias,
    /// A bias of a normalisation layer.
    NormBias,
}

/// What one parameter is updated with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSetting {
    /// Its class.
    pub class: ParamClass,
    /// Its weight decay.
    pub weight_decay: f64,
    /// Its learning-rate multiplier.
    pub lr_multiplier: f64,
}

/// Overrides for classes of parameters; every class left `None` keeps the optimiser's weight
/// decay and learning rate. The default has none: one group, as a plain optimiser.
///
/// ```
/// use resnext::trainer::{GroupOverride, ParamClass, ParamGroups};
/// // torchvision: --norm-weight-decay 0 --bias-weight-decay 0.
/// let groups = ParamGroups {
///     norm: Some(GroupOverride::no_decay()),
///     bias: Some(GroupOverride::no_decay()),
///     ..ParamGroups::default()
/// };
/// assert_eq!(groups.class_of("layer1.0.bn1.weight"), ParamClass::Norm);
/// assert_eq!(groups.class_of("layer1.0.bn1.bias"), ParamClass::Bias);
/// assert_eq!(groups.class_of("layer2.0.downsample.1.weight"), ParamClass::Norm);
/// assert_eq!(groups.class_of("fc.bias"), ParamClass::Bias);
/// assert_eq!(groups.setting("conv1.weight", 5e-4).weight_decay, 5e-4);
/// assert_eq!(groups.setting("fc.bias", 5e-4).weight_decay, 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParamGroups {
    /// Parameters of normalisation layers (torchvision's `--norm-weight-decay`).
    pub norm: Option<GroupOverride>,
    /// Biases (torchvision's `--bias-weight-decay`, its custom key `bias`, which takes
    /// precedence over `norm` as there).
    pub bias: Option<GroupOverride>,
    /// Biases of normalisation layers, before `bias` and `norm` (airbench trains BatchNorm
    /// biases with a 64 times larger learning rate).
    pub norm_bias: Option<GroupOverride>,
}

/// Whether `name` is a parameter of a normalisation layer by torchvision's ResNet names: its
/// module (the name without its last part) is named `bn*` or `downsample.1`.
pub fn is_norm_parameter(name: &str) -> bool {
    let Some((module, _)) = name.rsplit_once('.') else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or(module);
    last.starts_with("bn") || module == "downsample.1" || module.ends_with(".downsample.1")
}

/// Whether `name` is a bias: its last part is `bias` (torchvision's custom key `bias`).
pub fn is_bias(name: &str) -> bool {
    name.rsplit('.').next() == Some("bias")
}

impl ParamGroups {
    /// Checks every override: weight decays finite and `>= 0`, multipliers finite and above 0.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] naming the value.
    pub fn validate(&self) -> Result<(), OptimError> {
        let all = [
            (self.norm, "norm.weight_decay"),
            (self.bias, "bias.weight_decay"),
            (self.norm_bias, "norm_bias.weight_decay"),
        ];
        for (group, field) in all {
            if let Some(g) = group {
                g.validate(field)?;
            }
        }
        Ok(())
    }

    /// The class of the parameter `name` (see [`ParamClass`]).
    pub fn class_of(&self, name: &str) -> ParamClass {
        let (norm, bias) = (is_norm_parameter(name), is_bias(name));
        if self.norm_bias.is_some() && norm && bias {
            ParamClass::NormBias
        } else if self.bias.is_some() && bias {
            ParamClass::Bias
        } else if self.norm.is_some() && norm {
            ParamClass::Norm
        } else {
            ParamClass::Other
        }
    }

    /// The override of a class (`None` for [`ParamClass::Other`] and unset classes).
    pub fn override_of(&self, class: ParamClass) -> Option<GroupOverride> {
        match class {
            ParamClass::Other => None,
            ParamClass::Norm => self.norm,
            ParamClass::Bias => self.bias,
            ParamClass::NormBias => self.norm_bias,
        }
    }

    /// What the parameter `name` is updated with, `weight_decay` being the optimiser's.
    pub fn setting(&self, name: &str, weight_decay: f64) -> ParamSetting {
        let class = self.class_of(name);
        let o = self.override_of(class).unwrap_or_default();
        ParamSetting {
            class,
            weight_decay: o.weight_decay.unwrap_or(weight_decay),
            lr_multiplier: o.lr_multiplier,
        }
    }
}
