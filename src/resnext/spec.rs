//! The architecture as a list of specs, derived once from a [`ResNeXtConfig`]: the stem, every
//! stage, every block and every convolution, with their channels, kernels, strides and groups.
//!
//! The network builder ([`ResNeXt`](super::ResNeXt)), the FLOP count and stage shapes
//! ([`ResNeXtConfig::stage_shapes`]) and the inference form ([`crate::inference`]) all read
//! these specs, so each fact about the geometry is written here and nowhere else.
use super::{Downsample, ResNeXtConfig, Stem};

/// Block expansion of the bottleneck: a block outputs `EXPANSION * planes` channels.
pub(crate) const EXPANSION: i64 = 4;

/// Name of the stem's output in [`FeatureInfo`] and [`StageShape`](super::StageShape).
pub(crate) const STEM_NAME: &str = "stem";

/// Kernel size of the grouped convolution of every block.
const GROUPED_KERNEL: i64 = 3;

/// Output size of a convolution or pooling along one axis; 0 when the padded input is
/// smaller than the kernel.
fn out_size(size: i64, kernel: i64, stride: i64, padding: i64) -> i64 {
    let span = size + 2 * padding - kernel;
    if span < 0 {
        0
    } else {
        span / stride + 1
    }
}

/// Width of the grouped convolution of a bottleneck with `planes` planes:
/// `floor(planes * base_width / 64) * cardinality` (torchvision's `Bottleneck`).
pub(crate) fn bottleneck_width(planes: i64, base_width: i64, cardinality: i64) -> i64 {
    planes * base_width / 64 * cardinality
}

/// One bias-free 2-D convolution of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Kernel size (square).
    pub kernel: i64,
    /// Stride along both axes.
    pub stride: i64,
    /// Zero padding along both axes (`kernel / 2`, "same" padding at stride 1).
    pub padding: i64,
    /// Number of groups.
    pub groups: i64,
}

impl ConvSpec {
    /// A convolution with "same" padding (`kernel / 2`).
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64, stride: i64, groups: i64) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
            groups,
        }
    }

    /// Output `(height, width)` for a `height x width` input.
    pub fn output_size(&self, height: i64, width: i64) -> (i64, i64) {
        let size = |s| out_size(s, self.kernel, self.stride, self.padding);
        (size(height), size(width))
    }

    /// Forward FLOPs for one `height x width` input (a multiply-add counts as 2).
    pub fn flops(&self, height: i64, width: i64) -> u64 {
        let (h, w) = self.output_size(height, width);
        let per_output = self.in_channels / self.groups * self.kernel * self.kernel;
        (2 * self.out_channels * h * w * per_output) as u64
    }
}

/// A max-pooling layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// Kernel size (square).
    pub kernel: i64,
    /// Stride along both axes.
    pub stride: i64,
    /// Padding along both axes.
    pub padding: i64,
}

impl PoolSpec {
    /// This max-pool on `x` `[N, C, H, W]` (in its memory format).
    ///
    /// # Errors
    /// libtorch's, for example for an input smaller than the kernel.
    pub fn apply(&self, x: &tch::Tensor) -> Result<tch::Tensor, tch::TchError> {
        x.f_max_pool2d(
            [self.kernel; 2],
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            false,
        )
    }

    /// [`PoolSpec::apply`] in a forward pass, panicking on libtorch's error as tch's
    /// operations do (the network checks its input first).
    pub(crate) fn forward(&self, x: &tch::Tensor) -> tch::Tensor {
        self.apply(x)
            .unwrap_or_else(|e| panic!("max-pool {self:?}: {e}"))
    }

    /// Output `(height, width)` for a `height x width` input.
    pub fn output_size(&self, height: i64, width: i64) -> (i64, i64) {
        let size = |s| out_size(s, self.kernel, self.stride, self.padding);
        (size(height), size(width))
    }
}

/// The stem: a convolution from the 3 input channels, BN (or a bias), the activation and an
/// optional max-pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StemSpec {
    /// The stem convolution (`conv1`).
    pub conv: ConvSpec,
    /// Whether BN (`bn1`) follows the convolution; without it the convolution has a bias
    /// (`conv1.bias`), as the whitening stem.
    pub batch_norm: bool,
    /// The max-pool after the activation, if any.
    pub max_pool: Option<PoolSpec>,
}

impl StemSpec {
    /// Output channels of the stem.
    pub fn channels(&self) -> i64 {
        self.conv.out_channels
    }

    /// Total stride of the stem (convolution and pooling).
    pub fn reduction(&self) -> i64 {
        self.conv.stride * self.max_pool.map_or(1, |p| p.stride)
    }

    /// Output `(height, width)` for a `height x width` image.
    pub fn output_size(&self, height: i64, width: i64) -> (i64, i64) {
        let (h, w) = self.conv.output_size(height, width);
        self.max_pool.map_or((h, w), |p| p.output_size(h, w))
    }
}

/// One bottleneck block: 1x1 reduce, grouped 3x3 (with the block's stride), 1x1 expand, and a
/// projection shortcut when the stride or the channel count changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    /// Position of the block in its stage (its variables live under `layerS.<index>`).
    pub index: usize,
    /// Input channels.
    pub in_channels: i64,
    /// Channels of the grouped convolution.
    pub width: i64,
    /// Groups of the grouped convolution (the cardinality).
    pub groups: i64,
    /// Output channels (`4 * planes`).
    pub out_channels: i64,
    /// How much the block reduces the resolution: the stride of the grouped convolution and of
    /// the projection shortcut, or, with `pool`, of the max-pools after them.
    pub stride: i64,
    /// Whether a `stride x stride` max-pool reduces the resolution (after the grouped
    /// convolution, which then has stride 1, and before the shortcut's projection) instead of
    /// the convolutions' stride ([`Downsample::MaxPool`]).
    pub pool: bool,
}

impl BlockSpec {
    /// The block torchvision's `Bottleneck(in_channels, planes, stride, groups = cardinality,
    /// width_per_group = base_width)` builds, at position 0 of its stage.
    pub fn bottleneck(
        in_channels: i64,
        planes: i64,
        stride: i64,
        cardinality: i64,
        base_width: i64,
    ) -> Self {
        Self {
            index: 0,
            in_channels,
            width: bottleneck_width(planes, base_width, cardinality),
            groups: cardinality,
            out_channels: EXPANSION * planes,
            stride,
            pool: false,
        }
    }

    /// Stride of the grouped convolution and the projection: 1 when a max-pool reduces.
    fn conv_stride(&self) -> i64 {
        if self.pool {
            1
        } else {
            self.stride
        }
    }

    /// The max-pool that reduces the resolution in a pooling block (after the grouped
    /// convolution, and on the shortcut's input).
    pub fn max_pool(&self) -> Option<PoolSpec> {
        (self.pool && self.stride > 1).then_some(PoolSpec {
            kernel: self.stride,
            stride: self.stride,
            padding: 0,
        })
    }

    /// Whether the shortcut is a projection (strided 1x1 convolution and BN) rather than the
    /// identity.
    pub fn has_projection(&self) -> bool {
        self.stride != 1 || self.in_channels != self.out_channels
    }

    /// The three convolutions of the main path, in order: `conv1` (1x1 reduce), `conv2`
    /// (grouped 3x3 with the block's stride, or stride 1 before the max-pool), `conv3` (1x1
    /// expand).
    pub fn main_path(&self) -> [ConvSpec; 3] {
        [
            ConvSpec::new(self.in_channels, self.width, 1, 1, 1),
            ConvSpec::new(
                self.width,
                self.width,
                GROUPED_KERNEL,
                self.conv_stride(),
                self.groups,
            ),
            ConvSpec::new(self.width, self.out_channels, 1, 1, 1),
        ]
    }

    /// The projection shortcut's convolution (`downsample.0`), if the block has one (in a
    /// pooling block it reads the pooled input).
    pub fn projection(&self) -> Option<ConvSpec> {
        self.has_projection().then(|| {
            ConvSpec::new(
                self.in_channels,
                self.out_channels,
                1,
                self.conv_stride(),
                1,
            )
        })
    }

    /// Output `(height, width)` for a `height x width` input.
    pub fn output_size(&self, height: i64, width: i64) -> (i64, i64) {
        let (h, w) = self.main_path()[1].output_size(height, width);
        self.max_pool().map_or((h, w), |p| p.output_size(h, w))
    }

    /// Forward FLOPs of the block's convolutions for one `height x width` input.
    pub fn flops(&self, height: i64, width: i64) -> u64 {
        let [reduce, grouped, expand] = self.main_path();
        let (h, w) = self.output_size(height, width);
        let (sh, sw) = match self.max_pool() {
            Some(pool) => pool.output_size(height, width),
            None => (height, width),
        };
        reduce.flops(height, width)
            + grouped.flops(height, width)
            + expand.flops(h, w)
            + self.projection().map_or(0, |p| p.flops(sh, sw))
    }
}

/// One residual stage (torchvision's `layer1`, `layer2`, …): `blocks` bottlenecks, the first
/// with the stage's stride and input channels, the others with stride 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// `layer1`, `layer2`, …: the stage's variables live under this name.
    pub name: String,
    /// Number of blocks.
    pub blocks: usize,
    /// Planes of every block (a block outputs `4 * planes` channels).
    pub planes: i64,
    /// Channels of the grouped convolution of every block.
    pub width: i64,
    /// Groups of the grouped convolution (the cardinality).
    pub groups: i64,
    /// Stride of the first block (the others have stride 1).
    pub stride: i64,
    /// Input channels of the first block.
    pub in_channels: i64,
    /// Output channels of every block.
    pub out_channels: i64,
    /// Whether the first block reduces the resolution with a max-pool
    /// ([`Downsample::MaxPool`]) rather than a stride.
    pub pool: bool,
}

impl StageSpec {
    /// Stride of block `j` (0-based): the stage's stride for the first block, 1 for the others.
    pub fn block_stride(&self, j: usize) -> i64 {
        if j == 0 {
            self.stride
        } else {
            1
        }
    }

    /// Input channels of block `j`: the stage's input for the first block, its output after.
    pub fn block_in_channels(&self, j: usize) -> i64 {
        if j == 0 {
            self.in_channels
        } else {
            self.out_channels
        }
    }

    /// The spec of block `j` (0-based).
    pub fn block(&self, j: usize) -> BlockSpec {
        BlockSpec {
            index: j,
            in_channels: self.block_in_channels(j),
            width: self.width,
            groups: self.groups,
            out_channels: self.out_channels,
            stride: self.block_stride(j),
            pool: self.pool && j == 0,
        }
    }

    /// The specs of the stage's blocks, in order.
    pub fn block_specs(&self) -> impl Iterator<Item = BlockSpec> + '_ {
        (0..self.blocks).map(|j| self.block(j))
    }
}

/// Channels and total stride of one feature map, as timm's `feature_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureInfo {
    /// `stem`, `layer1`, `layer2`, … (the outputs of
    /// [`ResNeXt::try_forward_features_t`](super::ResNeXt::try_forward_features_t), in order).
    pub name: String,
    /// Channels of the feature map.
    pub channels: i64,
    /// Total stride from the input: an `H x W` image gives a `ceil(H / reduction) x
    /// ceil(W / reduction)` map.
    pub reduction: i64,
}

impl ResNeXtConfig {
    /// The stem: for [`Stem::Cifar`] a 3x3 convolution with stride 1 and no pooling, for
    /// [`Stem::ImageNet`] a 7x7 convolution with stride 2 and a 3x3 max-pool with stride 2, for
    /// [`Stem::Whitening`] a 2x2 convolution without padding, with a bias and no BN.
    pub fn stem_spec(&self) -> StemSpec {
        match self.stem {
            Stem::Cifar => StemSpec {
                conv: ConvSpec::new(3, self.stem_channels, 3, 1, 1),
                batch_norm: true,
                max_pool: None,
            },
            Stem::ImageNet => StemSpec {
                conv: ConvSpec::new(3, self.stem_channels, 7, 2, 1),
                batch_norm: true,
                max_pool: Some(PoolSpec {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                }),
            },
            Stem::Whitening => StemSpec {
                conv: ConvSpec {
                    padding: 0,
                    ..ConvSpec::new(3, self.stem_channels, 2, 1, 1)
                },
                batch_norm: false,
                max_pool: None,
            },
        }
    }

    /// The residual stages, in order. The first stage keeps the resolution, every later one
    /// halves it in its first block (with [`Downsample::MaxPool`], every stage halves it, with
    /// a max-pool); each stage reads the previous one's output channels.
    ///
    /// ```
    /// use resnext::ResNeXtConfig;
    /// let stages = ResNeXtConfig::resnext50_32x4d(10).stages();
    /// let layer2 = &stages[1];
    /// assert_eq!((layer2.name.as_str(), layer2.blocks, layer2.stride), ("layer2", 4, 2));
    /// assert_eq!((layer2.in_channels, layer2.width, layer2.out_channels), (256, 256, 512));
    /// assert!(layer2.block(0).has_projection() && !layer2.block(1).has_projection());
    /// ```
    pub fn stages(&self) -> Vec<StageSpec> {
        let mut in_channels = self.stem_channels;
        let mut stages = Vec::with_capacity(self.blocks.len());
        for (i, (&blocks, &planes)) in self.blocks.iter().zip(&self.planes).enumerate() {
            let pool = self.downsample == Downsample::MaxPool;
            let stride = if i == 0 && !pool { 1 } else { 2 };
            let first = BlockSpec::bottleneck(
                in_channels,
                planes,
                stride,
                self.cardinality,
                self.base_width,
            );
            stages.push(StageSpec {
                name: format!("layer{}", i + 1),
                blocks,
                planes,
                width: first.width,
                groups: first.groups,
                stride,
                in_channels,
                out_channels: first.out_channels,
                pool,
            });
            in_channels = first.out_channels;
        }
        stages
    }

    /// Channels and total stride of the stem's and every stage's output (timm's
    /// `feature_info`).
    ///
    /// ```
    /// use resnext::{ResNeXtConfig, Stem};
    /// let cfg = ResNeXtConfig::resnext50_32x4d(1000).with_stem(Stem::ImageNet);
    /// let info: Vec<_> = cfg.feature_info().iter().map(|f| (f.channels, f.reduction)).collect();
    /// assert_eq!(info, [(64, 4), (256, 4), (512, 8), (1024, 16), (2048, 32)]);
    /// ```
    pub fn feature_info(&self) -> Vec<FeatureInfo> {
        let stem = self.stem_spec();
        let mut reduction = stem.reduction();
        let mut info = vec![FeatureInfo {
            name: STEM_NAME.into(),
            channels: stem.channels(),
            reduction,
        }];
        for stage in self.stages() {
            reduction *= stage.stride;
            info.push(FeatureInfo {
                name: stage.name,
                channels: stage.out_channels,
                reduction,
            });
        }
        info
    }
}
