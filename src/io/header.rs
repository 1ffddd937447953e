//! The header of a safetensors file read alone: its first 8 bytes (the header's length), then
//! that many bytes of JSON (names, element types, shapes and offsets of the tensors, and the
//! string metadata), bounded by [`MAX_SAFETENSORS_HEADER`]; the tensors' data is not read.
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::Metadata;

use super::{io_err, IoError};

/// Largest safetensors header read (the JSON of names, shapes and offsets, and the metadata):
/// ResNeXt-101's is about 150 KB, a training checkpoint's a few times that.
pub const MAX_SAFETENSORS_HEADER: u64 = 16 << 20;

/// The string metadata (`__metadata__`) of the safetensors file `path`, empty when it has none,
/// from its header alone: at most 8 + [`MAX_SAFETENSORS_HEADER`] bytes are read, whatever the
/// file's size. The header must parse; the tensors' offsets and the file's length are not
/// checked here (they are when the tensors are read).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resnext::io::{read_safetensors_metadata, write_safetensors};
/// use std::collections::HashMap;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("t.safetensors");
/// let tensors = [("x".to_string(), tch::Tensor::from_slice(&[1f32, 2.0]))];
/// let meta = HashMap::from([("note".to_string(), "hello".to_string())]);
/// write_safetensors(&path, &tensors, Some(meta.clone()))?;
/// assert_eq!(read_safetensors_metadata(&path)?, meta);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`IoError::Io`] when the file cannot be read, [`IoError::Format`] for a header over the
/// bound, cut short or that does not parse.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, IoError> {
    let (_, header, _) = read_safetensors_header(path)?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// The header of the safetensors file `path`, read alone (see [`read_safetensors_metadata`]):
/// the open file, the parsed header, and the offset where the tensors' data starts.
///
/// # Errors
/// As [`read_safetensors_metadata`].
pub(crate) fn read_safetensors_header(path: &Path) -> Result<(File, Metadata, u64), IoError> {
    let format = |message: String| IoError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(io_err("reading", path))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| format(format!("no header ({e})")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_SAFETENSORS_HEADER {
        return Err(format(format!(
            "a header of {n} bytes; expected at most {MAX_SAFETENSORS_HEADER}"
        )));
    }
    let mut json = Vec::with_capacity(n as usize);
    (&mut file)
        .take(n)
        .read_to_end(&mut json)
        .map_err(io_err("reading", path))?;
    if json.len() as u64 != n {
        return Err(format(format!(
            "the header is cut short at {} of {n} bytes",
            json.len()
        )));
    }
    let header: Metadata = serde_json::from_slice(&json)
        .map_err(|e| format(format!("the header does not parse: {e}")))?;
    Ok((file, header, 8 + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.safetensors");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    fn header_file(json: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn only_the_header_is_needed_for_the_metadata() {
        // The data is cut short: reading the tensors would fail, the metadata does not need them.
        let json =
            r#"{"__metadata__":{"k":"v"},"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let (_dir, path) = file_of(&header_file(json, &[0; 3]));
        let meta = read_safetensors_metadata(&path).unwrap();
        assert_eq!(meta, HashMap::from([("k".into(), "v".into())]));
        let (_, header, start) = read_safetensors_header(&path).unwrap();
        assert_eq!(start, 8 + json.len() as u64);
        assert_eq!(header.tensors()["x"].shape, vec![4]);
    }

    #[test]
    fn bad_headers_are_format_errors_naming_the_problem() {
        let huge = (MAX_SAFETENSORS_HEADER + 1).to_le_bytes().to_vec();
        let cases: [(Vec<u8>, &str); 4] = [
            (vec![1, 2, 3], "no header"),
            (huge, "expected at most"),
            (header_file("{}", b"")[..9].to_vec(), "cut short at 1 of 2"),
            (header_file("{nope", b""), "does not parse"),
        ];
        for (bytes, needle) in cases {
            let (_dir, path) = file_of(&bytes);
            let e = read_safetensors_metadata(&path).unwrap_err();
            assert!(matches!(e, IoError::Format { .. }), "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_safetensors_metadata(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, IoError::Io { .. }), "{e}");
    }
}
