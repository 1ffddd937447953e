//! PyTorch's `torch.save` files, read without Python and without trusting them: the zip format
//! (PyTorch 1.6 and later) and the legacy format (`_use_new_zipfile_serialization=False`).
//!
//! [`PthFile::open`] reads the pickle (bounded, see [`super::pickle`]) and lists every tensor
//! with its name, shape and element type; no tensor data is read until [`PthFile::read`] asks
//! for one tensor, and then only the bytes of its storage that the tensor covers. So a caller
//! compares names and shapes with its model first and reads only what the model needs.
//!
//! What is accepted, compared with `torch.load(weights_only=True)`:
//! * the values that unpickler allows and a model's tensors live in: dicts, `OrderedDict`s,
//!   tensors (`torch._utils._rebuild_tensor_v2`), parameters (`_rebuild_parameter`,
//!   `_rebuild_parameter_with_state`, `torch._tensor._rebuild_from_type_v2`), and modules
//!   pickled whole (`torch.save(model)`, which `weights_only` refuses): their `_parameters`,
//!   `_buffers` (less `_non_persistent_buffers_set`) and `_modules`, named as `state_dict()`
//!   names them. Other objects are walked through their state; lists, tuples and everything
//!   else hold no tensor for us. Nothing is imported or called;
//! * storages of the float, integer and bool types, little-endian, stored uncompressed (as
//!   `torch.save` writes them);
//! * refused, where `torch.load` would read them: TAR-format files (PyTorch 0.3 and earlier),
//!   compressed zip entries, a `data.pkl` over 16 MiB or of more than 2 million values, tensors of
//!   rank over 64, legacy storage views, big-endian files; and, at read time, a tensor that
//!   spans more of its storage than twice its own size (a view into a larger tensor: save
//!   `.clone()`s). `torch.load` would materialise crafted views of any size; this reader never
//!   reads more than that bound per tensor.
mod legacy;
mod walk;
mod zipped;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use zip::ZipArchive;

use super::WeightsError;
use legacy::open_legacy;
use zipped::open_zip;

/// Extra elements a tensor may span in its storage beyond twice its own size.
const SPAN_MARGIN: u64 = 4096;

/// A tensor of the file: where its elements are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    /// Its name, as `state_dict()` would give it.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its element type; `None` for a storage type libtorch has no kind for (named in
    /// `storage_type`).
    pub kind: Option<Kind>,
    /// The storage's Python type name (`FloatStorage`, …).
    pub storage_type: String,
    /// The storage's key in the file.
    storage: String,
    /// Offset in elements into the storage.
    offset: u64,
    /// Strides in elements.
    stride: Vec<i64>,
}

/// Where the storages' bytes are.
enum Storages {
    /// `<prefix>data/<key>` entries of a zip file.
    Zip {
        archive: Box<ZipArchive<File>>,
        prefix: String,
    },
    /// A legacy file: each storage's first byte and its element count.
    Legacy {
        file: File,
        at: HashMap<String, (u64, u64)>,
    },
}

/// A `torch.save` file opened for reading: its tensors listed, their data unread.
pub(crate) struct PthFile {
    path: PathBuf,
    /// Every tensor of the file, in the pickle's order.
    pub tensors: Vec<TensorRef>,
    storages: Storages,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> WeightsError {
    WeightsError::Pytorch {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io_bad<'a>(path: &'a Path, action: &str) -> impl FnOnce(std::io::Error) -> WeightsError + 'a {
    let action = action.to_string();
    move |e| bad(path, format!("{action}: {e}"))
}

/// libtorch's kind and element size for a storage type name.
fn storage_kind(name: &str) -> Option<(Kind, u64)> {
    Some(match name {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

impl PthFile {
    /// Opens a `torch.save` file: the format is told by its first bytes (a zip signature, a
    /// tar header, or else the legacy format's pickles).
    ///
    /// # Errors
    /// [`WeightsError::Pytorch`] naming the file and the problem (see the module's list of
    /// what is refused).
    pub fn open(path: &Path) -> Result<PthFile, WeightsError> {
        let mut file = File::open(path).map_err(io_bad(path, "cannot open"))?;
        let mut head = Vec::with_capacity(512);
        (&mut file)
            .take(512)
            .read_to_end(&mut head)
            .map_err(io_bad(path, "cannot read"))?;
        file.rewind().map_err(io_bad(path, "cannot read"))?;
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            return open_zip(path, file);
        }
        if head.len() >= 262 && &head[257..262] == b"ustar" {
            return Err(bad(
                path,
                "a TAR-format file (PyTorch 0.3 and earlier) is not read; load it with an old \
                 PyTorch and save it again with torch.save",
            ));
        }
        if head.first() != Some(&0x80) {
            return Err(bad(
                path,
                "neither a zip (PyTorch >= 1.6) nor a legacy torch.save file (a pickle)",
            ));
        }
        open_legacy(path, file)
    }

    /// The data of tensor `index` of [`PthFile::tensors`], contiguous, on the CPU: only the
    /// bytes of its storage that it spans are read, at most twice its own size (plus a few
    /// KB).
    ///
    /// # Errors
    /// [`WeightsError::Pytorch`] for an unsupported element type, a tensor beyond its storage
    /// or spanning too much of it, or a read error; [`WeightsError::Torch`] if libtorch fails.
    pub fn read(&mut self, index: usize) -> Result<Tensor, WeightsError> {
        let t = self.tensors[index].clone();
        let path = self.path.clone();
        let (kind, size) = storage_kind(&t.storage_type).ok_or_else(|| {
            bad(
                &path,
                format!(
                    "tensor `{}` has the unsupported storage type {}",
                    t.name, t.storage_type
                ),
            )
        })?;
        let span =
            span(&t).ok_or_else(|| bad(&path, format!("tensor `{}`: bad strides", t.name)))?;
        let numel = (t.shape.iter()).fold(1u64, |n, &d| n.saturating_mul(d as u64));
        if span > numel.saturating_mul(2).saturating_add(SPAN_MARGIN) {
            return Err(bad(
                &path,
                format!(
                    "tensor `{}` of {numel} elements spans {span} elements of its storage; \
                     expected at most twice its size (a view into a larger tensor? save a \
                     .clone() of it)",
                    t.name
                ),
            ));
        }
        let bytes = self.storage_bytes(&t, size, span)?;
        let torch_err = |source| WeightsError::Torch {
            path: path.clone(),
            name: t.name.clone(),
            source,
        };
        let flat = Tensor::f_from_data_size(&bytes, &[span as i64], kind).map_err(torch_err)?;
        if numel == 0 {
            return Tensor::f_zeros(&t.shape, (kind, tch::Device::Cpu)).map_err(torch_err);
        }
        flat.f_as_strided(&t.shape, &t.stride, 0)
            .and_then(|v| v.f_contiguous())
            .map_err(torch_err)
    }

    /// `span` elements of `element` bytes of tensor `t`'s storage, from its offset.
    fn storage_bytes(
        &mut self,
        t: &TensorRef,
        element: u64,
        span: u64,
    ) -> Result<Vec<u8>, WeightsError> {
        let path = self.path.clone();
        // Elements offset..end of the storage; the buffer is made once they are known to exist.
        let end = t.offset.checked_add(span);
        let beyond = |have: u64| {
            let end = end.map_or("beyond 2^64".to_string(), |e| e.to_string());
            bad(
                &path,
                format!(
                    "tensor `{}` needs elements {}..{end} of storage `{}`, which has {have}",
                    t.name, t.offset, t.storage
                ),
            )
        };
        let buffer = || vec![0u8; (span * element) as usize];
        let buf = match &mut self.storages {
            Storages::Zip { archive, prefix } => {
                let name = format!("{prefix}data/{}", t.storage);
                let mut entry = archive
                    .by_name_seek(&name)
                    .map_err(|e| bad(&path, format!("storage `{name}`: {e}")))?;
                let have = entry.size() / element;
                if end.is_none_or(|end| end > have) {
                    return Err(beyond(have));
                }
                let mut buf = buffer();
                entry
                    .seek(SeekFrom::Start(t.offset * element))
                    .and_then(|_| entry.read_exact(&mut buf))
                    .map_err(io_bad(&path, "reading a storage"))?;
                buf
            }
            Storages::Legacy { file, at } => {
                let &(first, count) = at.get(&t.storage).ok_or_else(|| {
                    bad(&path, format!("storage `{}` is not in the file", t.storage))
                })?;
                if end.is_none_or(|end| end > count) {
                    return Err(beyond(count));
                }
                let mut buf = buffer();
                file.seek(SeekFrom::Start(first + t.offset * element))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(io_bad(&path, "reading a storage"))?;
                buf
            }
        };
        Ok(buf)
    }
}

/// Elements of the storage a tensor spans from its offset: 1 + sum of (size - 1) * stride.
fn span(t: &TensorRef) -> Option<u64> {
    if t.shape.contains(&0) {
        return Some(0);
    }
    let mut last = 0u64;
    for (&size, &stride) in t.shape.iter().zip(&t.stride) {
        let step = u64::try_from(size - 1)
            .ok()?
            .checked_mul(u64::try_from(stride).ok()?)?;
        last = last.checked_add(step)?;
    }
    last.checked_add(1)
}
