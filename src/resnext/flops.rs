use super::spec::STEM_NAME;
use super::ResNeXtConfig;

/// Output shape of one part of the network for one image, with the FLOPs spent in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageShape {
    /// `stem`, `layer1`, `layer2`, …, or `fc`.
    pub name: String,
    /// Output `[channels, height, width]` (for `fc`: `[num_classes, 1, 1]`).
    pub shape: [i64; 3],
    /// Forward FLOPs of this part for one image (a multiply-add counts as 2).
    pub flops: u64,
}

impl ResNeXtConfig {
    /// Shapes and forward FLOPs of the stem, each stage and the classifier for one
    /// `height x width` image. Convolutions and the classifier are counted (a multiply-add is
    /// 2 FLOPs); BN, ReLU, additions and pooling are not, as in the papers' counts.
    ///
    /// ```
    /// use resnext::{ResNeXtConfig, Stem};
    /// let cifar = ResNeXtConfig::resnext50_32x4d(10);
    /// let gflops = cifar.forward_flops(32, 32) as f64 / 1e9;
    /// assert!((gflops - 2.69).abs() < 0.01);
    /// let imagenet = ResNeXtConfig::resnext50_32x4d(1000).with_stem(Stem::ImageNet);
    /// assert!((imagenet.forward_flops(224, 224) as f64 / 1e9 - 8.46).abs() < 0.01);
    /// ```
    pub fn forward_flops(&self, height: i64, width: i64) -> u64 {
        self.stage_shapes(height, width)
            .iter()
            .map(|s| s.flops)
            .sum()
    }

    /// See [`ResNeXtConfig::forward_flops`]: the per-part breakdown, read from the specs
    /// ([`ResNeXtConfig::stem_spec`], [`ResNeXtConfig::stages`]) the network is built from.
    pub fn stage_shapes(&self, height: i64, width: i64) -> Vec<StageShape> {
        let stem = self.stem_spec();
        let (mut h, mut w) = stem.output_size(height, width);
        let mut parts = vec![StageShape {
            name: STEM_NAME.into(),
            shape: [stem.channels(), h, w],
            flops: stem.conv.flops(height, width),
        }];
        for stage in self.stages() {
            let mut flops = 0;
            for block in stage.block_specs() {
                flops += block.flops(h, w);
                (h, w) = block.output_size(h, w);
            }
            parts.push(StageShape {
                name: stage.name,
                shape: [stage.out_channels, h, w],
                flops,
            });
        }
        let features = self.feature_channels();
        parts.push(StageShape {
            name: "fc".into(),
            shape: [self.num_classes, 1, 1],
            flops: (2 * features * self.num_classes) as u64,
        });
        parts
    }
}
