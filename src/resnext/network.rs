use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use super::block::{batch_norm, conv2d, BlockStyle, ResNeXtBlock, BN_EPS};
use super::spec::{StageSpec, StemSpec};
use super::{Activation, ModelError, ResNeXtConfig};

/// A ResNeXt network: stem, residual stages, global average pooling, linear classifier.
///
/// Built from a [`ResNeXtConfig`] under a [`nn::Path`], with torchvision's variable names.
/// Implements [`ModuleT`]; [`ResNeXt::try_forward_t`] is the same forward pass returning an
/// error instead of panicking on a badly shaped input.
///
/// ```
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let logits = net.forward_t(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false);
/// assert_eq!(logits.size(), vec![2, 10]);
/// assert!(net.try_forward_t(&Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu)), false).is_err());
/// ```
#[derive(Debug)]
pub struct ResNeXt {
    config: ResNeXtConfig,
    stem: StemSpec,
    conv1: nn::Conv2D,
    /// `None` for a stem without BN (the whitening stem, whose convolution has a bias).
    bn1: Option<nn::BatchNorm>,
    activation: Activation,
    stages: Vec<Vec<ResNeXtBlock>>,
    fc: nn::Linear,
}

impl ResNeXt {
    /// Builds the network described by `config` with its variables under `p`
    /// (`conv1`, `bn1`, `layer1.0.conv1`, …, `fc`), initialised as torchvision:
    /// Kaiming-normal (fan-out, ReLU) convolutions, BN weight 1 and bias 0 (the last BN of each
    /// block 0 with `zero_init_residual`), and PyTorch's default `Linear` initialisation.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`ResNeXtConfig::validate`]); use
    /// [`ResNeXt::try_new`] to get an error instead.
    pub fn new(p: &nn::Path, config: &ResNeXtConfig) -> Self {
        match Self::try_new(p, config) {
            Ok(net) => net,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`ResNeXt::new`], returning an error for an invalid configuration.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`].
    pub fn try_new(p: &nn::Path, config: &ResNeXtConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let stem = config.stem_spec();
        let conv1 = match stem.batch_norm {
            true => conv2d(p / "conv1", &stem.conv),
            false => frozen_conv_with_bias(p / "conv1", &stem.conv),
        };
        let bn1 = stem
            .batch_norm
            .then(|| batch_norm(p / "bn1", stem.channels(), false, config.bn_momentum));
        let style = BlockStyle {
            activation: config.activation,
            bn_momentum: config.bn_momentum,
            zero_init_residual: config.zero_init_residual,
        };
        let stages = config
            .stages()
            .iter()
            .map(|stage| make_layer(p, stage, style))
            .collect();
        let fc_in = config.feature_channels();
        let bound = 1.0 / (fc_in as f64).sqrt();
        let fc = nn::linear(
            p / "fc",
            fc_in,
            config.num_classes,
            nn::LinearConfig {
                ws_init: nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
                bs_init: Some(nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                }),
                bias: true,
            },
        );
        Ok(Self {
            config: config.clone(),
            stem,
            conv1,
            bn1,
            activation: config.activation,
            stages,
            fc,
        })
    }

    /// The configuration this network was built from.
    pub fn config(&self) -> &ResNeXtConfig {
        &self.config
    }

    /// The stem's geometry, its convolution and its BN, for crate-internal transformations
    /// (BN folding, export) of torchvision's layout.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] naming `what` for a network outside torchvision's layout
    /// ([`ResNeXtConfig::nonstandard_part`]), which those transformations do not cover.
    pub(crate) fn stem_parts(
        &self,
        what: &str,
    ) -> Result<(&StemSpec, &nn::Conv2D, &nn::BatchNorm), ModelError> {
        let unsupported = |part: String| ModelError::Unsupported {
            what: format!("{what} covers torchvision's layout; this network has {part}"),
        };
        if let Some(part) = self.config.nonstandard_part() {
            return Err(unsupported(part));
        }
        match &self.bn1 {
            Some(bn1) => Ok((&self.stem, &self.conv1, bn1)),
            None => Err(unsupported("a stem without BN".into())),
        }
    }

    /// The device of the weights.
    pub(crate) fn stem_device(&self) -> tch::Device {
        self.conv1.ws.device()
    }

    /// The stem's convolution (`conv1`): for the whitening stem, the weight and bias that
    /// [`whiten_stem`](super::whiten_stem) sets.
    pub(crate) fn stem_conv(&self) -> &nn::Conv2D {
        &self.conv1
    }

    /// The residual stages, each a list of blocks.
    pub(crate) fn stages(&self) -> &[Vec<ResNeXtBlock>] {
        &self.stages
    }

    /// The linear classifier.
    pub(crate) fn classifier(&self) -> &nn::Linear {
        &self.fc
    }

    /// The epsilon of every BN layer of the network.
    pub(crate) const BN_EPS: f64 = BN_EPS;

    /// Checks that `xs` is a float tensor of shape `[N, 3, H, W]`.
    ///
    /// # Errors
    /// [`ModelError::InputShape`] naming the expected and the actual shape.
    pub fn check_input(xs: &Tensor) -> Result<(), ModelError> {
        let shape = xs.size();
        let kind = xs.kind();
        let float = matches!(
            kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        );
        if !float || shape.len() != 4 || shape[1] != 3 || shape.iter().any(|&d| d < 1) {
            return Err(ModelError::InputShape { shape, kind });
        }
        Ok(())
    }

    /// Checks that `xs` suits this network: [`ResNeXt::check_input`], and the element kind and
    /// device of the weights (under autocast, whose casts libtorch makes, only the device).
    ///
    /// # Errors
    /// [`ModelError::InputShape`] or [`ModelError::InputPlacement`].
    pub fn check_input_for(&self, xs: &Tensor) -> Result<(), ModelError> {
        Self::check_input(xs)?;
        let (weights_kind, weights_device) = (self.conv1.ws.kind(), self.conv1.ws.device());
        let autocast = weights_device.is_cuda() && cuda_autocast_enabled();
        if xs.device() != weights_device || (xs.kind() != weights_kind && !autocast) {
            return Err(ModelError::InputPlacement {
                kind: xs.kind(),
                device: xs.device(),
                weights_kind,
                weights_device,
            });
        }
        self.check_spatial_size(&xs.size())
    }

    /// Checks that every feature map of an `[N, 3, H, W]` input keeps at least one pixel (the
    /// whitening stem and the max-pools of [`Downsample::MaxPool`](super::Downsample) shrink
    /// small images to nothing; torchvision's layout never does).
    fn check_spatial_size(&self, shape: &[i64]) -> Result<(), ModelError> {
        let (height, width) = (shape[2], shape[3]);
        let empty = self
            .config
            .stage_shapes(height, width)
            .iter()
            .any(|s| s.shape[1] < 1 || s.shape[2] < 1);
        match empty {
            true => Err(ModelError::InputTooSmall { height, width }),
            false => Ok(()),
        }
    }

    /// The output of the stem and of every stage, in order: `[stem, layer1, layer2, …]`.
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for an input that is not `[N, 3, H, W]`.
    pub fn try_forward_features_t(
        &self,
        xs: &Tensor,
        train: bool,
    ) -> Result<Vec<Tensor>, ModelError> {
        self.check_input_for(xs)?;
        let mut x = self.forward_stem(xs, train);
        let mut outs = vec![x.shallow_clone()];
        for stage in &self.stages {
            for block in stage {
                x = block.forward_t(&x, train);
            }
            outs.push(x.shallow_clone());
        }
        Ok(outs)
    }

    /// The forward pass (logits `[N, num_classes]`), returning an error for a bad input.
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for an input that is not `[N, 3, H, W]`.
    pub fn try_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.check_input_for(xs)?;
        let mut x = self.forward_stem(xs, train);
        for block in self.stages.iter().flatten() {
            x = block.forward_t(&x, train);
        }
        Ok(self.head(&x))
    }

    fn forward_stem(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.apply(&self.conv1);
        if let Some(bn1) = &self.bn1 {
            x = x.apply_t(bn1, train);
        }
        self.activation.apply_(&mut x);
        match self.stem.max_pool {
            None => x,
            Some(pool) => pool.forward(&x),
        }
    }

    fn head(&self, x: &Tensor) -> Tensor {
        let logits = x.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc);
        match self.config.logit_scale {
            1.0 => logits,
            scale => logits * scale,
        }
    }
}

/// torchvision's `_make_layer`: the blocks of `stage`, with their variables under
/// `p / stage.name` (`layer1.0.conv1`, …); the first block has the stage's stride and a
/// projection shortcut when needed.
fn make_layer(p: &nn::Path, stage: &StageSpec, style: BlockStyle) -> Vec<ResNeXtBlock> {
    let layer = p / stage.name.as_str();
    stage
        .block_specs()
        .map(|block| ResNeXtBlock::build(&layer / block.index, block, style))
        .collect()
}

/// The whitening stem's convolution: a weight that is not trained (set from the data by
/// [`whiten_stem`](super::whiten_stem); torchvision's initialisation until then) and a trained
/// bias starting at 0, as airbench's whitening layer.
fn frozen_conv_with_bias(p: nn::Path, spec: &super::ConvSpec) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride: spec.stride,
        padding: spec.padding,
        groups: spec.groups,
        bias: true,
        ws_init: super::block::CONV_INIT,
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    let conv = nn::conv2d(&p, spec.in_channels, spec.out_channels, spec.kernel, cfg);
    // Not trained: out of every optimiser's parameters (which take what requires a gradient).
    let _ = conv.ws.set_requires_grad(false);
    conv
}

impl ModuleT for ResNeXt {
    /// # Panics
    /// With [`ModelError::InputShape`]'s message for an input that is not `[N, 3, H, W]`; use
    /// [`ResNeXt::try_forward_t`] to get the error as a value.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.try_forward_t(xs, train) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Whether `tch::autocast` is on (tch keeps its getter private).
fn cuda_autocast_enabled() -> bool {
    // SAFETY: a plain getter of libtorch's thread-local autocast flag, without arguments.
    unsafe { torch_sys::at_autocast_is_enabled() != 0 }
}
