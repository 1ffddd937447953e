//! Test-time augmentation: the logits averaged over mirrored and shifted copies of each image,
//! at airbench's levels (Jordan 2024, `infer` with `tta_level` 0, 1, 2): see [`Tta`].
//!
//! [`Tta::apply`] runs it around any [`ModuleT`] (the trained network, an
//! [`InferenceModel`](super::InferenceModel)); [`Tta::logits`] around any forward function.
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::nn::ModuleT;
use tch::{TchError, Tensor};

/// A level of test-time augmentation, as airbench's `infer`:
///
/// * [`Tta::None`] gives `f(x)`;
/// * [`Tta::Flip`] gives `½ f(x) + ½ f(flip(x))` (left-right mirror);
/// * [`Tta::FlipTranslate`] gives `½ m(x) + ¼ m(x↖) + ¼ m(x↘)`, where `m` is the `Flip` average
///   and `x↖`, `x↘` are `x` shifted by one pixel up-left and down-right inside its
///   reflection-padded copy (`F.pad(x, (1, 1, 1, 1), "reflect")`, windows at offsets 0 and 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// One pass, no augmentation.
    #[default]
    None,
    /// The image and its mirror: 2 passes.
    Flip,
    /// The image, its one-pixel shifts up-left and down-right, each with its mirror: 6 passes.
    FlipTranslate,
}

impl Tta {
    /// Every level's name, as [`FromStr`] takes them (also `0`, `1`, `2`, airbench's levels).
    pub const NAMES: [&'static str; 3] = ["none", "flip", "flip-translate"];

    /// Forward passes per image.
    pub fn passes(self) -> usize {
        match self {
            Tta::None => 1,
            Tta::Flip => 2,
            Tta::FlipTranslate => 6,
        }
    }

    /// The averaged logits of `forward` on `xs` `[N, C, H, W]` at this level.
    ///
    /// # Errors
    /// libtorch's, or `forward`'s.
    pub fn logits(
        self,
        xs: &Tensor,
        forward: &dyn Fn(&Tensor) -> Result<Tensor, TchError>,
    ) -> Result<Tensor, TchError> {
        let mirror = |x: &Tensor| -> Result<Tensor, TchError> {
            let a = forward(x)?;
            let b = forward(&x.f_flip([3])?)?;
            a.f_add(&b)?.f_mul_scalar(0.5)
        };
        match self {
            Tta::None => forward(xs),
            Tta::Flip => mirror(xs),
            Tta::FlipTranslate => {
                let size = xs.size();
                let (h, w) = (size[2], size[3]);
                let padded = xs.f_reflection_pad2d([1, 1, 1, 1])?;
                let window = |offset: i64| -> Result<Tensor, TchError> {
                    padded.f_narrow(2, offset, h)?.f_narrow(3, offset, w)
                };
                let up_left = mirror(&window(0)?)?;
                let down_right = mirror(&window(2)?)?;
                let shifted = up_left.f_add(&down_right)?.f_mul_scalar(0.5)?;
                mirror(xs)?
                    .f_mul_scalar(0.5)?
                    .f_add(&shifted.f_mul_scalar(0.5)?)
            }
        }
    }
}

impl Tta {
    /// [`Tta::logits`] of `model` in evaluation mode.
    ///
    /// ```
    /// use resnext::inference::Tta;
    /// use resnext::{ResNeXt, ResNeXtConfig};
    /// use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    /// let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    /// let want = (net.forward_t(&xs, false) + net.forward_t(&xs.flip([3]), false)) * 0.5;
    /// let got = tch::no_grad(|| Tta::Flip.apply(&net, &xs))?;
    /// assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    /// # Ok::<(), tch::TchError>(())
    /// ```
    ///
    /// # Errors
    /// libtorch's (the model itself panics on its own errors, as its `forward_t` does).
    pub fn apply<M: ModuleT + ?Sized>(self, model: &M, xs: &Tensor) -> Result<Tensor, TchError> {
        self.logits(xs, &|x| Ok(model.forward_t(x, false)))
    }
}

impl FromStr for Tta {
    type Err = String;

    /// `none`/`0`, `flip`/`1`, `flip-translate`/`flip_translate`/`2`; otherwise the list of
    /// valid names.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "none" | "0" => Ok(Tta::None),
            "flip" | "1" => Ok(Tta::Flip),
            "flip-translate" | "flip_translate" | "2" => Ok(Tta::FlipTranslate),
            _ => Err(format!(
                "unknown test-time augmentation `{name}`; valid: {} (or 0, 1, 2)",
                Tta::NAMES.join(", ")
            )),
        }
    }
}
