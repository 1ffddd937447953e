//! [`RgbPlanes`]: an 8-bit RGB image stored as three planes, the layout of CIFAR records and of
//! torchvision's `uint8` image tensors (`[3, H, W]`, row-major).
use crate::data::DataError;

/// An RGB image of `u8` values stored channel-first: the red plane, then the green plane, then
/// the blue plane, each `height` rows of `width` values (torchvision's `[3, H, W]` `uint8`
/// tensor, and a CIFAR-10 record's 3072 pixel bytes for a 32x32 image).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RgbPlanes {
    height: usize,
    width: usize,
    data: Vec<u8>,
}

impl RgbPlanes {
    /// Wraps `data` (`3 * height * width` bytes, `[3, H, W]` row-major) as an image.
    ///
    /// Errors: a side of 0, or a `data` length other than `3 * height * width`.
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<RgbPlanes, DataError> {
        if height == 0 || width == 0 {
            return Err(DataError::InvalidConfig {
                field: "image size (height, width)",
                value: format!("({height}, {width})"),
                expected: "both sides at least 1 pixel".to_string(),
            });
        }
        let expected = height.checked_mul(width).and_then(|p| p.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(DataError::InvalidTensor {
                what: "RGB planes",
                expected: format!("3 * {height} * {width} values ([3, {height}, {width}])"),
                actual: format!("{} values", data.len()),
            });
        }
        Ok(RgbPlanes {
            height,
            width,
            data,
        })
    }

    /// An image of `height` x `width` pixels, every value `value`.
    ///
    /// Errors: a side of 0.
    pub fn filled(height: usize, width: usize, value: u8) -> Result<RgbPlanes, DataError> {
        let len = height
            .checked_mul(width)
            .and_then(|p| p.checked_mul(3))
            .ok_or_else(|| DataError::InvalidConfig {
                field: "image size (height, width)",
                value: format!("({height}, {width})"),
                expected: "a size whose 3 * height * width fits in memory".to_string(),
            })?;
        RgbPlanes::new(height, width, vec![value; len])
    }

    /// Rows of each plane.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns of each plane.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Values of one plane (`height * width`).
    pub fn plane_len(&self) -> usize {
        self.height * self.width
    }

    /// All values, `[3, H, W]` row-major.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// All values, mutable, `[3, H, W]` row-major.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Plane `c` (0 red, 1 green, 2 blue); `None` for `c > 2`.
    pub fn plane(&self, c: usize) -> Option<&[u8]> {
        let n = self.plane_len();
        self.data.get(c * n..(c + 1) * n)
    }

    /// The values, `[3, H, W]` row-major.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }

    /// An image of the same size whose values are `f(plane index, plane of self, plane of
    /// output)` for each of the three planes.
    pub(crate) fn map_planes(&self, mut f: impl FnMut(usize, &[u8], &mut [u8])) -> RgbPlanes {
        let n = self.plane_len();
        let mut out = vec![0u8; self.data.len()];
        for (c, (src, dst)) in self
            .data
            .chunks_exact(n)
            .zip(out.chunks_exact_mut(n))
            .enumerate()
        {
            f(c, src, dst);
        }
        RgbPlanes {
            height: self.height,
            width: self.width,
            data: out,
        }
    }

    /// An image of the same size with `f` applied to every value.
    pub(crate) fn map_values(&self, f: impl Fn(u8) -> u8) -> RgbPlanes {
        RgbPlanes {
            height: self.height,
            width: self.width,
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }
}
