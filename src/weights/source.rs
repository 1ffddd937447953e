//! A weights file opened for reading: the names, shapes and element types of its tensors
//! first, from the safetensors header or the PyTorch pickle; each tensor's data only when it is
//! asked for. The loader compares names and shapes with the model and reads only what fits, so
//! a file's size or its claims never decide how much is read.
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::fit::{model_shapes, Shapes};
use super::pth::PthFile;
use super::WeightsError;
use crate::io::{kind_of_dtype, read_safetensors_header, IoError, TensorFile};

/// A tensor of the file, known before its data is read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// Its name (the model's, once a prefix such as `module.` is taken off).
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its element kind; `None` for a type libtorch has none for (the read then fails).
    pub kind: Option<Kind>,
}

impl Entry {
    /// Its number of elements (saturating: shapes come from the file).
    pub fn numel(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |n, &d| n.saturating_mul(d.max(0) as u64))
    }
}

/// Where the data of the tensors is.
enum Data {
    /// Already in memory (a checkpoint's model part, a replaced classifier).
    Memory(Vec<Tensor>),
    /// A safetensors file: each tensor's byte range.
    Safetensors { file: File, ranges: Vec<(u64, u64)> },
    /// A `torch.save` file; `index[i]` is entry `i`'s tensor in it.
    Pth {
        file: Box<PthFile>,
        index: Vec<usize>,
    },
}

/// A weights file opened for reading (see the module's docs).
pub(crate) struct TensorSource {
    path: PathBuf,
    /// The tensors, in the file's order.
    pub entries: Vec<Entry>,
    /// The file's string metadata (safetensors `__metadata__`; empty otherwise).
    pub metadata: HashMap<String, String>,
    /// The prefix the model's tensors had in the file (`""`, `module.`, …).
    pub prefix: String,
    data: Data,
    /// Entries whose data was replaced in memory.
    replaced: HashMap<usize, Tensor>,
}

impl std::fmt::Debug for TensorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorSource")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// Whether `path` starts as a safetensors file does (an 8-byte header length, then the JSON
/// header); PyTorch's files start with a zip or pickle signature instead.
pub(crate) fn is_safetensors(path: &Path) -> Result<bool, IoError> {
    let mut head = Vec::with_capacity(9);
    File::open(path)
        .and_then(|f| f.take(9).read_to_end(&mut head))
        .map_err(|source| IoError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(head.len() == 9 && head[8] == b'{')
}

impl TensorSource {
    /// Opens a safetensors file or a PyTorch `torch.save` file (told apart by their first
    /// bytes), keeping only the model's tensors, found by their `conv1.weight` and `fc.weight`
    /// under a prefix (see `model_prefix`), renamed without it.
    ///
    /// # Errors
    /// [`WeightsError::Io`] for an unreadable or corrupt safetensors file,
    /// [`WeightsError::Pytorch`] for a PyTorch file that is refused.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let mut source = Self::open_whole(path)?;
        source.keep_model();
        Ok(source)
    }

    /// Opens a safetensors file or a PyTorch `torch.save` file (told apart by their first
    /// bytes), every tensor kept under its own name.
    ///
    /// # Errors
    /// As [`TensorSource::open`].
    pub fn open_whole(path: &Path) -> Result<Self, WeightsError> {
        if is_safetensors(path)? {
            Self::safetensors(path)
        } else {
            Self::pth(path)
        }
    }

    /// Opens a safetensors file, every tensor kept under its own name.
    ///
    /// # Errors
    /// [`WeightsError::Io`] naming the file: unreadable, a header over
    /// [`crate::io::MAX_SAFETENSORS_HEADER`], offsets that do not tile the data, a size that is not
    /// the header's.
    pub fn safetensors(path: &Path) -> Result<Self, WeightsError> {
        let (file, header, data_start) = read_safetensors_header(path)?;
        let format = |message: String| IoError::Format {
            path: path.to_path_buf(),
            message,
        };
        let mut infos: Vec<(String, safetensors::tensor::TensorInfo)> = header
            .tensors()
            .into_iter()
            .map(|(n, i)| (n, i.clone()))
            .collect();
        infos.sort_by_key(|(_, i)| i.data_offsets);
        let length = file.metadata().map_err(|e| format(e.to_string()))?.len();
        let mut end = 0u64;
        let (mut entries, mut ranges) = (Vec::new(), Vec::new());
        for (name, info) in infos {
            let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            let bytes = (info.shape.iter())
                .try_fold(info.dtype.size() as u64, |n, &d| n.checked_mul(d as u64));
            if s != end || bytes != e.checked_sub(s) {
                return Err(format(format!(
                    "tensor `{name}`: its offsets do not match its shape"
                ))
                .into());
            }
            end = e;
            let Ok(shape) = info.shape.iter().map(|&d| i64::try_from(d)).collect() else {
                return Err(format(format!("tensor `{name}`: a dimension beyond 2^63")).into());
            };
            let kind = kind_of_dtype(info.dtype);
            entries.push(Entry { name, shape, kind });
            ranges.push((data_start + s, e - s));
        }
        if data_start + end != length {
            return Err(format(format!(
                "{length} bytes, but the header describes {}",
                data_start + end
            ))
            .into());
        }
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(Self::new(
            path,
            entries,
            metadata,
            Data::Safetensors { file, ranges },
        ))
    }

    fn pth(path: &Path) -> Result<Self, WeightsError> {
        let file = PthFile::open(path)?;
        let entries = (file.tensors.iter())
            .map(|t| Entry {
                name: t.name.clone(),
                shape: t.shape.clone(),
                kind: t.kind,
            })
            .collect();
        let index = (0..file.tensors.len()).collect();
        let data = Data::Pth {
            file: Box::new(file),
            index,
        };
        Ok(Self::new(path, entries, HashMap::new(), data))
    }

    /// Tensors already in memory, as read from `path`.
    pub fn from_file(path: &Path, file: TensorFile) -> Self {
        let (entries, tensors): (Vec<Entry>, Vec<Tensor>) = (file.tensors.into_iter())
            .map(|(name, t)| {
                let entry = Entry {
                    name,
                    shape: t.size(),
                    kind: Some(t.kind()),
                };
                (entry, t)
            })
            .unzip();
        Self::new(path, entries, file.metadata, Data::Memory(tensors))
    }

    fn new(
        path: &Path,
        entries: Vec<Entry>,
        metadata: HashMap<String, String>,
        data: Data,
    ) -> Self {
        TensorSource {
            path: path.to_path_buf(),
            entries,
            metadata,
            prefix: String::new(),
            data,
            replaced: HashMap::new(),
        }
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the tensors are those of a safetensors file (not a PyTorch one, nor in memory).
    pub fn is_safetensors(&self) -> bool {
        matches!(self.data, Data::Safetensors { .. })
    }

    /// The model's prefix (see `model_prefix`) and the entries under it.
    fn model_part(&self) -> (String, Vec<usize>) {
        let prefix = model_prefix(self.entries.iter().map(|e| e.name.as_str()));
        let keep = (0..self.entries.len())
            .filter(|&i| self.entries[i].name.starts_with(&prefix))
            .collect();
        (prefix, keep)
    }

    /// Keeps the entries under the model's prefix, renamed without it.
    fn keep_model(&mut self) {
        let (prefix, keep) = self.model_part();
        if prefix.is_empty() {
            return;
        }
        let mut entries = Vec::with_capacity(keep.len());
        for &i in &keep {
            let mut e = self.entries[i].clone();
            e.name.drain(..prefix.len());
            entries.push(e);
        }
        self.entries = entries;
        self.data = match std::mem::replace(&mut self.data, Data::Memory(Vec::new())) {
            Data::Memory(t) => Data::Memory(keep.iter().map(|&i| t[i].shallow_clone()).collect()),
            Data::Safetensors { file, ranges } => Data::Safetensors {
                file,
                ranges: keep.iter().map(|&i| ranges[i]).collect(),
            },
            Data::Pth { file, index } => Data::Pth {
                file,
                index: keep.iter().map(|&i| index[i]).collect(),
            },
        };
        self.prefix = prefix;
    }

    /// The source of the model's tensors alone, as [`TensorSource::open`] gives it.
    pub fn into_model(mut self) -> Self {
        self.keep_model();
        self
    }

    /// The names and shapes of the model's tensors (BN batch counters left out).
    pub fn shapes(&self) -> Shapes {
        model_shapes(
            self.entries
                .iter()
                .map(|e| (e.name.as_str(), e.shape.clone())),
        )
    }

    /// [`TensorSource::shapes`] of the model's tensors as [`TensorSource::into_model`] would
    /// keep them (under the model's prefix, named without it), without changing `self`.
    pub fn model_shapes(&self) -> Shapes {
        let (prefix, keep) = self.model_part();
        model_shapes(keep.iter().map(|&i| {
            let e = &self.entries[i];
            (&e.name[prefix.len()..], e.shape.clone())
        }))
    }

    /// The index of the entry named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// Replaces entry `index`'s data (and shape and kind) with `tensor`.
    pub fn replace(&mut self, index: usize, tensor: Tensor) {
        self.entries[index].shape = tensor.size();
        self.entries[index].kind = Some(tensor.kind());
        self.replaced.insert(index, tensor);
    }

    /// The data of entry `index`, on the CPU, read now.
    ///
    /// # Errors
    /// [`WeightsError::Io`] / [`WeightsError::Pytorch`] naming the file and the tensor when it
    /// cannot be read.
    pub fn read(&mut self, index: usize) -> Result<Tensor, WeightsError> {
        if let Some(t) = self.replaced.get(&index) {
            return Ok(t.shallow_clone());
        }
        let entry = &self.entries[index];
        match &mut self.data {
            Data::Memory(tensors) => Ok(tensors[index].shallow_clone()),
            Data::Pth { file, index: at } => file.read(at[index]),
            Data::Safetensors { file, ranges } => {
                let err = |message: String| IoError::Tensor {
                    path: self.path.clone(),
                    name: entry.name.clone(),
                    message,
                };
                let kind = entry
                    .kind
                    .ok_or_else(|| err("its element type is not supported".into()))?;
                let (start, len) = ranges[index];
                let mut bytes = vec![0u8; len as usize];
                file.seek(SeekFrom::Start(start))
                    .and_then(|_| file.read_exact(&mut bytes))
                    .map_err(|e| err(e.to_string()))?;
                let t = Tensor::f_from_data_size(&bytes, &entry.shape, kind)
                    .map_err(|e| err(e.to_string()))?;
                Ok(t)
            }
        }
    }

    /// Reads every entry: for files whose content is the point (not for a model's loading,
    /// which reads only what fits). Refused when the tensors would take more than twice the
    /// file's size plus 1 MiB in memory (views that repeat a small storage, for example).
    ///
    /// # Errors
    /// [`WeightsError::Pytorch`] over that budget, else as [`TensorSource::read`].
    pub fn read_all(mut self) -> Result<TensorFile, WeightsError> {
        let length = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let budget = length.saturating_mul(2).saturating_add(1 << 20);
        let mut total = 0u64;
        for e in &self.entries {
            let size = e.kind.map_or(1, |k| k.elt_size_in_bytes() as u64);
            total = total.saturating_add(e.numel().saturating_mul(size));
            if total > budget {
                return Err(WeightsError::Pytorch {
                    path: self.path.clone(),
                    problem: format!(
                        "its tensors would take more than {budget} bytes in memory (at `{}`), \
                         over twice the file's size",
                        e.name
                    ),
                });
            }
        }
        let mut tensors = Vec::with_capacity(self.entries.len());
        for i in 0..self.entries.len() {
            tensors.push((self.entries[i].name.clone(), self.read(i)?));
        }
        let metadata = std::mem::take(&mut self.metadata);
        Ok(TensorFile { tensors, metadata })
    }
}

/// Where a ResNeXt's `state_dict` is among a file's tensor names: the prefix `P` for which
/// both `P` + `conv1.weight` and `P` + `fc.weight` are there (`""` for a plain `state_dict`,
/// `module.` for `DistributedDataParallel`, `model.`, `state_dict.` or `state_dict.module.`
/// for checkpoint dictionaries, as the file reader names nested entries); when there are
/// several, the shortest that is not an exponential moving average's copy (a part named `ema`,
/// `ema_*` or `*_ema`: `state_dict.module.` before `state_dict_ema.`); `""` when there is none
/// (the loader then names what is missing).
pub(crate) fn model_prefix<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const STEM: &str = "conv1.weight";
    const CLASSIFIER: &str = "fc.weight";
    let names: std::collections::HashSet<&str> = names.collect();
    let mut prefixes: Vec<&str> = (names.iter())
        .filter_map(|n| n.strip_suffix(STEM))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .filter(|p| names.contains(format!("{p}{CLASSIFIER}").as_str()))
        .collect();
    let is_ema = |p: &str| {
        p.split('.')
            .any(|c| c == "ema" || c.starts_with("ema_") || c.ends_with("_ema"))
    };
    prefixes.sort_by_key(|p| (is_ema(p), p.len(), *p));
    prefixes.first().map_or_else(String::new, |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::model_prefix;

    fn prefix(names: &[&str]) -> String {
        model_prefix(names.iter().copied())
    }

    #[test]
    fn the_model_is_found_by_its_stem_and_classifier() {
        let plain = ["conv1.weight", "layer1.0.conv1.weight", "fc.weight"];
        assert_eq!(prefix(&plain), "");
        let ddp = [
            "module.conv1.weight",
            "module.layer1.0.conv1.weight",
            "module.fc.weight",
        ];
        assert_eq!(prefix(&ddp), "module.");
        // A block's conv1 is no model without a classifier beside it.
        assert_eq!(prefix(&["layer1.0.conv1.weight", "fc.weight"]), "");
        assert_eq!(prefix(&["xconv1.weight", "xfc.weight"]), "");
        let checkpoint = [
            "state_dict_ema.conv1.weight",
            "state_dict_ema.fc.weight",
            "state_dict.module.conv1.weight",
            "state_dict.module.fc.weight",
        ];
        assert_eq!(prefix(&checkpoint), "state_dict.module.");
        assert_eq!(prefix(&checkpoint[..2]), "state_dict_ema.");
        let two = [
            "b.conv1.weight",
            "b.fc.weight",
            "a.conv1.weight",
            "a.fc.weight",
        ];
        assert_eq!(prefix(&two), "a.");
    }
}
