use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::config::DEFAULT_BN_MOMENTUM;
use super::spec::{BlockSpec, ConvSpec};
use super::Activation;

/// Kaiming-normal initialisation with fan-out and ReLU gain, as torchvision does for convolutions.
pub(crate) const CONV_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// The bias-free 2-D convolution `spec` describes, initialised as torchvision does.
pub(crate) fn conv2d(p: nn::Path, spec: &ConvSpec) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride: spec.stride,
        padding: spec.padding,
        groups: spec.groups,
        bias: false,
        ws_init: CONV_INIT,
        ..Default::default()
    };
    nn::conv2d(p, spec.in_channels, spec.out_channels, spec.kernel, cfg)
}

/// The epsilon of every batch normalisation of the model (PyTorch's default). tch keeps a
/// `BatchNorm`'s configuration private, so code that folds BN layers reads it from here.
pub(crate) const BN_EPS: f64 = 1e-5;

/// Batch normalisation with weight 1 (or 0) and bias 0, PyTorch's eps and the given momentum.
pub(crate) fn batch_norm(
    p: nn::Path,
    channels: i64,
    zero_weight: bool,
    momentum: f64,
) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(if zero_weight { 0.0 } else { 1.0 }),
        bs_init: nn::Init::Const(0.0),
        eps: BN_EPS,
        momentum,
        ..Default::default()
    };
    nn::batch_norm2d(p, channels, cfg)
}

impl Activation {
    /// The nonlinearity on `x`, in place.
    pub(crate) fn apply_(self, x: &mut Tensor) {
        match self {
            Activation::Relu => {
                let _ = x.relu_();
            }
            Activation::Gelu => {
                let _ = x.gelu_("none");
            }
        }
    }
}

/// How a block is built beyond its geometry: the nonlinearity, the BN momentum, and whether
/// its last BN starts at zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BlockStyle {
    /// The nonlinearity after each BN.
    pub activation: Activation,
    /// Momentum of its BN layers (PyTorch's convention).
    pub bn_momentum: f64,
    /// torchvision's `zero_init_residual`.
    pub zero_init_residual: bool,
}

/// The ResNeXt bottleneck block (torchvision's `Bottleneck` with `groups = cardinality`).
///
/// `main(x)` = 1x1 conv (in → width) + BN + ReLU → 3x3 conv with `cardinality` groups and the
/// block's stride + BN + ReLU → 1x1 conv (width → 4·planes) + BN, where
/// width = floor(planes · base_width / 64) · cardinality. The output is
/// `ReLU(main(x) + shortcut(x))` with `x` the block's *input*; the shortcut is the identity,
/// or a strided 1x1 conv + BN (`downsample`) when the stride or the channel count changes.
///
/// ```
/// use resnext::ResNeXtBlock;
/// use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let block = ResNeXtBlock::new(&vs.root() / "block", 64, 64, 2, 32, 4, false);
/// let y = block.forward_t(&Tensor::zeros([1, 64, 8, 8], (Kind::Float, Device::Cpu)), false);
/// assert_eq!(y.size(), vec![1, 256, 4, 4]);
/// ```
#[derive(Debug)]
pub struct ResNeXtBlock {
    spec: BlockSpec,
    activation: Activation,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl ResNeXtBlock {
    /// A block reading `in_channels` and writing `4 * planes` channels, with variables under `p`
    /// named `conv1`, `bn1`, `conv2`, `bn2`, `conv3`, `bn3`, `downsample.0`, `downsample.1`
    /// (the block of [`BlockSpec::bottleneck`], built by [`ResNeXtBlock::from_spec`]).
    pub fn new(
        p: nn::Path,
        in_channels: i64,
        planes: i64,
        stride: i64,
        cardinality: i64,
        base_width: i64,
        zero_init_residual: bool,
    ) -> Self {
        let spec = BlockSpec::bottleneck(in_channels, planes, stride, cardinality, base_width);
        Self::from_spec(p, spec, zero_init_residual)
    }

    /// The block `spec` describes, with its variables under `p` (see [`ResNeXtBlock::new`]);
    /// with `zero_init_residual` the weight of `bn3` starts at 0.
    pub fn from_spec(p: nn::Path, spec: BlockSpec, zero_init_residual: bool) -> Self {
        let style = BlockStyle {
            activation: Activation::Relu,
            bn_momentum: DEFAULT_BN_MOMENTUM,
            zero_init_residual,
        };
        Self::build(p, spec, style)
    }

    /// The block `spec` describes in `style`, with its variables under `p`.
    pub(crate) fn build(p: nn::Path, spec: BlockSpec, style: BlockStyle) -> Self {
        let m = style.bn_momentum;
        let [reduce, grouped, expand] = spec.main_path();
        // The shortcut is created before the main path: another order would change the
        // weights a given seed produces.
        let downsample = spec.projection().map(|conv| {
            let d = &p / "downsample";
            (
                conv2d(&d / "0", &conv),
                batch_norm(&d / "1", conv.out_channels, false, m),
            )
        });
        Self {
            spec,
            activation: style.activation,
            conv1: conv2d(&p / "conv1", &reduce),
            bn1: batch_norm(&p / "bn1", reduce.out_channels, false, m),
            conv2: conv2d(&p / "conv2", &grouped),
            bn2: batch_norm(&p / "bn2", grouped.out_channels, false, m),
            conv3: conv2d(&p / "conv3", &expand),
            bn3: batch_norm(&p / "bn3", expand.out_channels, style.zero_init_residual, m),
            downsample,
        }
    }

    /// The geometry of this block.
    pub fn spec(&self) -> &BlockSpec {
        &self.spec
    }

    /// Whether this block has a projection shortcut.
    pub fn has_downsample(&self) -> bool {
        self.downsample.is_some()
    }

    /// The three convolutions of the main path with their specs and the BN after each, in
    /// order (1x1, grouped 3x3, 1x1), for crate-internal transformations such as BN folding.
    pub(crate) fn main_path(&self) -> [(ConvSpec, &nn::Conv2D, &nn::BatchNorm); 3] {
        let [reduce, grouped, expand] = self.spec.main_path();
        [
            (reduce, &self.conv1, &self.bn1),
            (grouped, &self.conv2, &self.bn2),
            (expand, &self.conv3, &self.bn3),
        ]
    }

    /// The projection shortcut (strided 1x1 convolution with its spec, and its BN), if any.
    pub(crate) fn downsample_parts(&self) -> Option<(ConvSpec, &nn::Conv2D, &nn::BatchNorm)> {
        let (conv, bn) = self.downsample.as_ref()?;
        self.spec.projection().map(|spec| (spec, conv, bn))
    }
}

impl ModuleT for ResNeXtBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let act = self.activation;
        let mut out = x.apply(&self.conv1).apply_t(&self.bn1, train);
        act.apply_(&mut out);
        let out = out.apply(&self.conv2);
        // A pooling block reduces here, and pools its input for the shortcut.
        let (out, shortcut_input) = match self.spec.max_pool() {
            Some(pool) => (pool.forward(&out), pool.forward(x)),
            None => (out, x.shallow_clone()),
        };
        let mut out = out.apply_t(&self.bn2, train);
        act.apply_(&mut out);
        let mut out = out.apply(&self.conv3).apply_t(&self.bn3, train);
        match &self.downsample {
            Some((conv, bn)) => out += shortcut_input.apply(conv).apply_t(bn, train),
            None => out += shortcut_input,
        }
        act.apply_(&mut out);
        out
    }
}
