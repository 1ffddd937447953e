use super::config::EXPANSION;
use super::{ResNeXtConfig, Stem};

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

/// Output size of a convolution or pooling along one axis.
fn out_size(size: i64, kernel: i64, stride: i64, padding: i64) -> i64 {
    (size + 2 * padding - kernel) / stride + 1
}

/// FLOPs of a bias-free convolution producing `[c_out, h, w]`.
fn conv_flops(c_in: i64, c_out: i64, kernel: i64, groups: i64, h: i64, w: i64) -> u64 {
    (2 * c_out * h * w * (c_in / groups) * kernel * kernel) as u64
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

    /// See [`ResNeXtConfig::forward_flops`]: the per-part breakdown.
    pub fn stage_shapes(&self, height: i64, width: i64) -> Vec<StageShape> {
        let mut parts = Vec::new();
        let (k, s) = match self.stem {
            Stem::Cifar => (3, 1),
            Stem::ImageNet => (7, 2),
        };
        let (mut h, mut w) = (out_size(height, k, s, k / 2), out_size(width, k, s, k / 2));
        let mut c = self.stem_channels;
        let stem_flops = conv_flops(3, c, k, 1, h, w);
        if self.stem == Stem::ImageNet {
            h = out_size(h, 3, 2, 1);
            w = out_size(w, 3, 2, 1);
        }
        parts.push(StageShape {
            name: "stem".into(),
            shape: [c, h, w],
            flops: stem_flops,
        });
        for (i, (&n, &planes)) in self.blocks.iter().zip(&self.planes).enumerate() {
            let width_g = self.group_width(planes);
            let out = EXPANSION * planes;
            let mut flops = 0;
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let (ho, wo) = (out_size(h, 3, stride, 1), out_size(w, 3, stride, 1));
                flops += conv_flops(c, width_g, 1, 1, h, w);
                flops += conv_flops(width_g, width_g, 3, self.cardinality, ho, wo);
                flops += conv_flops(width_g, out, 1, 1, ho, wo);
                if stride != 1 || c != out {
                    flops += conv_flops(c, out, 1, 1, ho, wo);
                }
                (h, w, c) = (ho, wo, out);
            }
            parts.push(StageShape {
                name: format!("layer{}", i + 1),
                shape: [c, h, w],
                flops,
            });
        }
        parts.push(StageShape {
            name: "fc".into(),
            shape: [self.num_classes, 1, 1],
            flops: (2 * c * self.num_classes) as u64,
        });
        parts
    }
}
