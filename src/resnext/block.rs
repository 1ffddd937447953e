use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::config::EXPANSION;

/// Kaiming-normal initialisation with fan-out and ReLU gain, as torchvision does for convolutions.
pub(crate) const CONV_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// A bias-free 2-D convolution initialised as torchvision does.
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    groups: i64,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: kernel / 2,
        groups,
        bias: false,
        ws_init: CONV_INIT,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, kernel, cfg)
}

/// The epsilon of every batch normalisation of the model (PyTorch's default). tch keeps a
/// `BatchNorm`'s configuration private, so code that folds BN layers reads it from here.
pub(crate) const BN_EPS: f64 = 1e-5;

/// Batch normalisation with weight 1 (or 0) and bias 0, PyTorch's eps and momentum.
pub(crate) fn batch_norm(p: nn::Path, channels: i64, zero_weight: bool) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(if zero_weight { 0.0 } else { 1.0 }),
        bs_init: nn::Init::Const(0.0),
        eps: BN_EPS,
        momentum: 0.1,
        ..Default::default()
    };
    nn::batch_norm2d(p, channels, cfg)
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
    /// named `conv1`, `bn1`, `conv2`, `bn2`, `conv3`, `bn3`, `downsample.0`, `downsample.1`.
    pub fn new(
        p: nn::Path,
        in_channels: i64,
        planes: i64,
        stride: i64,
        cardinality: i64,
        base_width: i64,
        zero_init_residual: bool,
    ) -> Self {
        let width = planes * base_width / 64 * cardinality;
        let out = EXPANSION * planes;
        let downsample = (stride != 1 || in_channels != out).then(|| {
            let d = &p / "downsample";
            (
                conv2d(&d / "0", in_channels, out, 1, stride, 1),
                batch_norm(&d / "1", out, false),
            )
        });
        Self {
            conv1: conv2d(&p / "conv1", in_channels, width, 1, 1, 1),
            bn1: batch_norm(&p / "bn1", width, false),
            conv2: conv2d(&p / "conv2", width, width, 3, stride, cardinality),
            bn2: batch_norm(&p / "bn2", width, false),
            conv3: conv2d(&p / "conv3", width, out, 1, 1, 1),
            bn3: batch_norm(&p / "bn3", out, zero_init_residual),
            downsample,
        }
    }

    /// Whether this block has a projection shortcut.
    pub fn has_downsample(&self) -> bool {
        self.downsample.is_some()
    }

    /// The three convolutions of the main path with the BN after each, in order
    /// (1x1, grouped 3x3, 1x1), for crate-internal transformations such as BN folding.
    pub(crate) fn main_path(&self) -> [(&nn::Conv2D, &nn::BatchNorm); 3] {
        [
            (&self.conv1, &self.bn1),
            (&self.conv2, &self.bn2),
            (&self.conv3, &self.bn3),
        ]
    }

    /// The projection shortcut (strided 1x1 convolution and its BN), if any.
    pub(crate) fn downsample_parts(&self) -> Option<(&nn::Conv2D, &nn::BatchNorm)> {
        self.downsample.as_ref().map(|(c, b)| (c, b))
    }
}

impl ModuleT for ResNeXtBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = x.apply(&self.conv1).apply_t(&self.bn1, train);
        let _ = out.relu_();
        let mut out = out.apply(&self.conv2).apply_t(&self.bn2, train);
        let _ = out.relu_();
        let mut out = out.apply(&self.conv3).apply_t(&self.bn3, train);
        match &self.downsample {
            Some((conv, bn)) => out += x.apply(conv).apply_t(bn, train),
            None => out += x,
        }
        let _ = out.relu_();
        out
    }
}
