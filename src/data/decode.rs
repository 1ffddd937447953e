//! Image files to 8-bit RGB pixels: JPEG (the `image` crate decodes it with `zune-jpeg`'s
//! SIMD decoder) and PNG, any colour type, EXIF orientation applied, with a pixel limit
//! against decompression bombs. A JPEG that ends before its end-of-image marker is refused, as
//! Pillow refuses it (`zune-jpeg` would fill the missing part with grey).
use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

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
/// another format), each naming the file. A JPEG whose data ends before the end-of-image
/// marker (FFD9) that follows its last scan is truncated, as for Pillow (`image file is
/// truncated`); bytes after that marker are ignored, as Pillow ignores them.
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
    match reader.format() {
        None => return Err(bad("not a JPEG or PNG file".into())),
        Some(ImageFormat::Jpeg) => jpeg_complete(bytes).map_err(bad)?,
        Some(_) => {}
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

/// Checks that the marker segments of a JPEG (`bytes` starts with its SOI marker) run to an
/// end-of-image marker (FFD9) after the last scan, as libjpeg, and so Pillow, requires. The
/// segments are walked by their lengths, so the complete JPEG of an EXIF thumbnail inside an
/// APP1 segment does not count; what follows the end-of-image marker is not read.
fn jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let mut i = 2;
    let mut scans = 0;
    // The next marker: like libjpeg, skip stray bytes and the fill bytes (FF) before it.
    while let Some(ff) = bytes
        .get(i..)
        .and_then(|s| s.iter().position(|&b| b == 0xFF))
    {
        i += ff;
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { break };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length (TEM, restarts, SOI) and a stray stuffed zero.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(&[hi, lo]) = bytes.get(i..i + 2) else {
            break;
        };
        i += usize::from(u16::from_be_bytes([hi, lo]));
        if marker == 0xDA {
            scans += 1;
            i = end_of_scan(bytes, i);
        }
    }
    let after = if scans > 0 {
        " after its last scan"
    } else {
        ""
    };
    Err(format!(
        "image file is truncated: it ends before the JPEG end-of-image marker (FFD9){after}"
    ))
}

/// The position of the marker that ends the entropy-coded data of a scan starting at `i`
/// (there, FF is followed by a stuffed 00 or a restart marker D0..D7), or the end of `bytes`.
fn end_of_scan(bytes: &[u8], mut i: usize) -> usize {
    while let Some(ff) = bytes
        .get(i..)
        .and_then(|s| s.iter().position(|&b| b == 0xFF))
    {
        i += ff;
        match bytes.get(i + 1) {
            Some(0x00 | 0xD0..=0xD7) => i += 2,
            Some(0xFF) => i += 1,
            _ => return i,
        }
    }
    bytes.len()
}
