//! Image files to 8-bit RGB pixels: JPEG (the `image` crate decodes it with `zune-jpeg`'s
//! SIMD decoder) and PNG, any colour type, EXIF orientation applied, with a pixel limit
//! against decompression bombs.
use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use super::DataError;

/// The default pixel limit of [`decode_rgb8`]: Pillow's (`2 * Image.MAX_IMAGE_PIXELS`, above
/// which Pillow refuses to open a file), about a 13,400 x 13,400 picture.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Reads and decodes the image at `path` into 8-bit RGB, whatever its colour type (grayscale,
/// palette, alpha dropped as Pillow's `convert("RGB")` drops it, 16-bit, CMYK JPEG), turned
/// upright by its EXIF orientation. The header is checked against `max_pixels` before any
/// pixel is decoded.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read, [`DataError::ImageTooLarge`] above
/// `max_pixels`, [`DataError::BadImage`] for a file that does not decode (corrupt, truncated,
/// another format), each naming the file.
pub fn decode_rgb8(path: &Path, max_pixels: u64) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("read", path, e))?;
    decode_rgb8_bytes(&bytes, path, max_pixels)
}

/// As [`decode_rgb8`], for the bytes of a file (`path` only names it in errors).
///
/// # Errors
/// As [`decode_rgb8`].
pub fn decode_rgb8_bytes(
    bytes: &[u8],
    path: &Path,
    max_pixels: u64,
) -> Result<RgbImage, DataError> {
    let bad = |reason: String| DataError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a JPEG or PNG file".into()));
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DataError::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: max_pixels,
        });
    }
    let mut limits = Limits::default();
    // Room for the largest allowed picture at 16 bits per channel with alpha, and no more.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    decoder.set_limits(limits).map_err(|e| bad(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}
