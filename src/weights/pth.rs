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
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use zip::ZipArchive;

use super::pickle::{read_pickle, Id, Limits, Node, Object, Pickle};
use super::WeightsError;

/// Ranks above this are refused (PyTorch's own kernels stop at 25 for many ops).
const MAX_RANK: usize = 64;
/// Entries of a zip file above this are refused (a `torch.save` of a model has one per tensor).
const MAX_ZIP_ENTRIES: usize = 1_000_000;
/// How deep dicts and modules may nest.
const MAX_DEPTH: usize = 64;
/// How many wrappers (`_rebuild_parameter`, `_rebuild_from_type_v2`) a tensor may be inside.
const MAX_WRAPPERS: usize = 4;
/// Tensors a file may hold (a `state_dict` of ResNeXt-101 has about 1,600; a checkpoint with
/// an optimizer's state and an EMA copy a few times that).
const MAX_TENSORS: usize = 65_536;
/// Longest tensor name (torchvision's longest are about 40 bytes).
const MAX_NAME: usize = 512;
/// Values visited while looking for tensors, at most this many times the pickle's values
/// (shared references could otherwise make the walk exponential).
const VISITS_PER_NODE: usize = 4;
/// Extra elements a tensor may span in its storage beyond twice its own size.
const SPAN_MARGIN: u64 = 4096;
/// torch's legacy-format magic number, the first pickle of such a file.
const LEGACY_PROTOCOL: i64 = 1001;

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

fn open_zip(path: &Path, file: File) -> Result<PthFile, WeightsError> {
    let mut archive =
        ZipArchive::new(file).map_err(|e| bad(path, format!("not a readable zip file: {e}")))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(bad(
            path,
            format!(
                "{} zip entries; expected at most {MAX_ZIP_ENTRIES}",
                archive.len()
            ),
        ));
    }
    let pkl = archive
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .ok_or_else(|| {
            bad(
                path,
                "a zip file without `<name>/data.pkl`: not written by torch.save",
            )
        })?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    check_byte_order(path, &mut archive, &prefix)?;
    let pickle = {
        let entry = archive
            .by_name(&pkl)
            .map_err(|e| bad(path, format!("`{pkl}`: {e}")))?;
        refuse_compressed(path, &format!("`{pkl}`"), entry.compression())?;
        let limits = Limits::DEFAULT;
        if entry.size() > limits.max_bytes {
            return Err(bad(
                path,
                format!(
                    "`{pkl}` is {} bytes; expected at most {}",
                    entry.size(),
                    limits.max_bytes
                ),
            ));
        }
        let mut reader = BufReader::new(entry);
        read_pickle(&mut reader, limits).map_err(|e| bad(path, format!("`{pkl}`: {e}")))?
    };
    let tensors = find_tensors(path, &pickle, false)?;
    check_stored(path, &mut archive, &prefix, &tensors)?;
    Ok(PthFile {
        path: path.to_path_buf(),
        tensors,
        storages: Storages::Zip {
            archive: Box::new(archive),
            prefix,
        },
    })
}

/// Refuses a file whose `byteorder` entry says big-endian.
fn check_byte_order(
    path: &Path,
    archive: &mut ZipArchive<File>,
    prefix: &str,
) -> Result<(), WeightsError> {
    let Ok(entry) = archive.by_name(&format!("{prefix}byteorder")) else {
        return Ok(()); // files of PyTorch < 1.10 have none: little-endian
    };
    let mut order = String::new();
    entry
        .take(16)
        .read_to_string(&mut order)
        .map_err(io_bad(path, "reading `byteorder`"))?;
    if order.trim() != "little" {
        return Err(bad(
            path,
            format!(
                "byte order `{}`; only little-endian files are read",
                order.trim()
            ),
        ));
    }
    Ok(())
}

/// Refuses a compressed zip entry (`what` names it): torch.save stores its entries
/// uncompressed, and a compressed one could not be read in part or bounded before inflating.
fn refuse_compressed(
    path: &Path,
    what: &str,
    method: zip::CompressionMethod,
) -> Result<(), WeightsError> {
    if method == zip::CompressionMethod::Stored {
        return Ok(());
    }
    Err(bad(
        path,
        format!("{what} is compressed; torch.save stores its entries uncompressed"),
    ))
}

/// Refuses storages stored compressed (torch.save never compresses them; a compressed entry
/// could not be read in part).
fn check_stored(
    path: &Path,
    archive: &mut ZipArchive<File>,
    prefix: &str,
    tensors: &[TensorRef],
) -> Result<(), WeightsError> {
    let keys: std::collections::BTreeSet<&str> =
        tensors.iter().map(|t| t.storage.as_str()).collect();
    for key in keys {
        let name = format!("{prefix}data/{key}");
        let entry = archive
            .by_name(&name)
            .map_err(|e| bad(path, format!("storage `{name}`: {e}")))?;
        refuse_compressed(path, &format!("storage `{name}`"), entry.compression())?;
    }
    Ok(())
}

fn open_legacy(path: &Path, file: File) -> Result<PthFile, WeightsError> {
    let limits = Limits::DEFAULT;
    let mut reader = BufReader::new(file);
    let mut next = |what: &str| {
        read_pickle(&mut reader, limits)
            .map_err(|e| bad(path, format!("legacy format, {what}: {e}")))
    };
    let magic = next("magic number")?;
    let protocol = next("protocol version")?;
    let info = next("system information")?;
    if magic.node(magic.root) != &Node::BigInt
        || protocol.int(protocol.root) != Some(LEGACY_PROTOCOL)
    {
        return Err(bad(
            path,
            "a pickle, but not a torch.save file (no torch magic number)",
        ));
    }
    check_little_endian(path, &info)?;
    let main = next("the saved object")?;
    let keys = next("storage keys")?;
    let start = magic.bytes + protocol.bytes + info.bytes + main.bytes + keys.bytes;
    let tensors = find_tensors(path, &main, true)?;
    let keys: Vec<String> = keys
        .seq(keys.root)
        .ok_or_else(|| bad(path, "legacy format: the storage keys are not a list"))?
        .iter()
        .map(|&k| keys.str(k).map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| bad(path, "legacy format: a storage key is not a string"))?;
    let mut file = reader.into_inner();
    let at = locate_storages(path, &mut file, start, &keys, &storage_types(&main))?;
    Ok(PthFile {
        path: path.to_path_buf(),
        tensors,
        storages: Storages::Legacy { file, at },
    })
}

fn check_little_endian(path: &Path, info: &Pickle) -> Result<(), WeightsError> {
    if let Node::Dict(items) = info.node(info.root) {
        for &(k, v) in items {
            if info.str(k) == Some("little_endian") && info.node(v) == &Node::Bool(false) {
                return Err(bad(
                    path,
                    "a big-endian file; only little-endian files are read",
                ));
            }
        }
    }
    Ok(())
}

/// The type of every storage the pickle refers to (`key` to `FloatStorage`, …), from its
/// persistent ids, whether a tensor uses it or not.
fn storage_types(pickle: &Pickle) -> HashMap<String, String> {
    let mut types = HashMap::new();
    for node in &pickle.nodes {
        let Node::PersId(pid) = node else { continue };
        if let Some([tag, ty, key, ..]) = pickle.seq(*pid) {
            if let (Some("storage"), Some(("torch", ty)), Some(key)) =
                (pickle.str(*tag), pickle.global(*ty), pickle.str(*key))
            {
                types.insert(key.to_string(), ty.to_string());
            }
        }
    }
    types
}

/// Walks the legacy file's storages (each an 8-byte element count, then its bytes, in the
/// order of `keys`) and notes where each one's bytes start, without reading them.
fn locate_storages(
    path: &Path,
    file: &mut File,
    mut at: u64,
    keys: &[String],
    types: &HashMap<String, String>,
) -> Result<HashMap<String, (u64, u64)>, WeightsError> {
    let length = file.metadata().map_err(io_bad(path, "cannot stat"))?.len();
    let mut located = HashMap::with_capacity(keys.len());
    for key in keys {
        let ty = types
            .get(key)
            .map_or("(no reference to it)", String::as_str);
        let (_, element) = storage_kind(ty).ok_or_else(|| {
            bad(
                path,
                format!("legacy format: storage `{key}` is of type {ty}, whose element size is not known"),
            )
        })?;
        let mut count = [0u8; 8];
        file.seek(SeekFrom::Start(at))
            .map_err(io_bad(path, "seek"))?;
        file.read_exact(&mut count).map_err(|e| {
            bad(
                path,
                format!("legacy format: storage `{key}` is cut short ({e})"),
            )
        })?;
        let count = u64::from_le_bytes(count);
        let end = count
            .checked_mul(element)
            .and_then(|b| b.checked_add(at + 8))
            .filter(|&end| end <= length)
            .ok_or_else(|| {
                bad(path, format!("legacy format: storage `{key}` claims {count} elements, past the end of the file"))
            })?;
        located.insert(key.clone(), (at + 8, count));
        at = end;
    }
    Ok(located)
}

/// The tensors of a pickle, named as `state_dict()` names them (see the module's docs).
fn find_tensors(
    path: &Path,
    pickle: &Pickle,
    legacy: bool,
) -> Result<Vec<TensorRef>, WeightsError> {
    let mut walk = Walk {
        pickle,
        legacy,
        visits: pickle.nodes.len().saturating_mul(VISITS_PER_NODE).max(1024),
        tensors: Vec::new(),
    };
    walk.value(pickle.root, "", 0).map_err(|e| bad(path, e))?;
    Ok(walk.tensors)
}

/// The strings of a pickled `set([...])` (or a set literal).
fn set_strings(p: &Pickle, id: Id) -> Vec<&str> {
    let elements = match p.node(id) {
        Node::Set(ids) => ids.clone(),
        Node::Object(o) => (p.seq(o.args))
            .and_then(|a| a.first())
            .and_then(|&l| p.seq(l))
            .map(<[Id]>::to_vec)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    elements.iter().filter_map(|&e| p.str(e)).collect()
}

/// The search for tensors through a pickle's values, with its budget of visits.
struct Walk<'a> {
    pickle: &'a Pickle,
    legacy: bool,
    visits: usize,
    tensors: Vec<TensorRef>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl<'a> Walk<'a> {
    fn value(&mut self, id: Id, name: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH} at `{name}`"));
        }
        if self.visits == 0 {
            return Err("too many shared references among the pickle's values".into());
        }
        self.visits -= 1;
        match self.pickle.node(id) {
            Node::Dict(items) => self.items(items, name, depth),
            Node::Object(object) => self.object(object, name, depth),
            _ => Ok(()),
        }
    }

    /// A dict's entries, named by their string or integer keys.
    fn items(&mut self, items: &[(Id, Id)], name: &str, depth: usize) -> Result<(), String> {
        for &(k, v) in items {
            let key = match (self.pickle.str(k), self.pickle.int(k)) {
                (Some(s), _) => s.to_string(),
                (None, Some(i)) => i.to_string(),
                _ => continue,
            };
            if name.len() + key.len() >= MAX_NAME {
                return Err(format!(
                    "a name longer than {MAX_NAME} bytes under `{name}`"
                ));
            }
            self.value(v, &join(name, &key), depth + 1)?;
        }
        Ok(())
    }

    fn object(&mut self, object: &Object, name: &str, depth: usize) -> Result<(), String> {
        let p = self.pickle;
        let callable = p.global(object.callable).unwrap_or(("", ""));
        if let Some(tensor) = self.tensor(callable, object.args, name)? {
            if self.tensors.len() >= MAX_TENSORS {
                return Err(format!("more than {MAX_TENSORS} tensors"));
            }
            self.tensors.push(tensor);
            return Ok(());
        }
        self.items(&object.items, name, depth)?;
        let Some(state) = object.state else {
            return Ok(());
        };
        // BUILD's state is a dict, or (dict, slots).
        let state = match p.seq(state) {
            Some(&[dict, _]) if matches!(p.node(state), Node::Tuple(_)) => dict,
            _ => state,
        };
        let Node::Dict(fields) = p.node(state) else {
            return Ok(());
        };
        if fields.iter().any(|&(k, _)| p.str(k) == Some("_modules")) {
            return self.module(fields, name, depth);
        }
        self.items(fields, name, depth)
    }

    /// An `nn.Module` pickled whole: its parameters, persistent buffers and submodules.
    fn module(&mut self, fields: &[(Id, Id)], name: &str, depth: usize) -> Result<(), String> {
        let p = self.pickle;
        let field = |key: &str| {
            fields
                .iter()
                .find(|&&(k, _)| p.str(k) == Some(key))
                .map(|&(_, v)| v)
        };
        let non_persistent: Vec<&str> = field("_non_persistent_buffers_set")
            .map(|set| set_strings(p, set))
            .unwrap_or_default();
        for part in ["_parameters", "_buffers", "_modules"] {
            let Some(dict) = field(part) else { continue };
            let items = match p.node(dict) {
                Node::Dict(items) => items.clone(),
                Node::Object(o) => o.items.clone(),
                _ => continue,
            };
            let items: Vec<(Id, Id)> = items
                .into_iter()
                .filter(|&(k, _)| {
                    part != "_buffers" || !p.str(k).is_some_and(|k| non_persistent.contains(&k))
                })
                .collect();
            self.items(&items, name, depth)?;
        }
        Ok(())
    }

    /// The tensor `callable(*args)` rebuilds, if it is one of torch's rebuild functions; the
    /// wrappers (a parameter around a tensor, a subclass around either) are unwrapped at most
    /// [`MAX_WRAPPERS`] deep, in a loop (a crafted chain cannot exhaust the stack).
    fn tensor(
        &mut self,
        mut callable: (&'a str, &'a str),
        mut args: Id,
        name: &str,
    ) -> Result<Option<TensorRef>, String> {
        let p = self.pickle;
        for _ in 0..=MAX_WRAPPERS {
            let list = p.seq(args).unwrap_or(&[]);
            (callable, args) = match callable {
                ("torch._utils", "_rebuild_tensor_v2") => return self.rebuild(list, name).map(Some),
                ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                    match list.first().map(|&t| p.node(t)) {
                        Some(Node::Object(inner)) => {
                            (p.global(inner.callable).unwrap_or(("", "")), inner.args)
                        }
                        _ => return Err(format!("parameter `{name}` holds no tensor")),
                    }
                }
                ("torch._tensor", "_rebuild_from_type_v2") => match list {
                    [func, _, inner_args, ..] => (p.global(*func).unwrap_or(("", "")), *inner_args),
                    _ => return Err(format!("tensor `{name}`: malformed _rebuild_from_type_v2")),
                },
                ("torch._utils", other) if other.starts_with("_rebuild") => {
                    return Err(format!("tensor `{name}` is rebuilt by torch._utils.{other}, which is not read (quantized, sparse or other special tensors)"))
                }
                _ => return Ok(None),
            };
        }
        Err(format!(
            "tensor `{name}` is wrapped more than {MAX_WRAPPERS} times"
        ))
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    fn rebuild(&self, args: &[Id], name: &str) -> Result<TensorRef, String> {
        let p = self.pickle;
        let malformed = || format!("tensor `{name}`: malformed _rebuild_tensor_v2 arguments");
        let [storage, offset, size, stride, ..] = args else {
            return Err(malformed());
        };
        let Node::PersId(pid) = p.node(*storage) else {
            return Err(malformed());
        };
        let (storage_type, key) = self.storage(*pid, name)?;
        let ints = |id: Id| -> Result<Vec<i64>, String> {
            let seq = p.seq(id).ok_or_else(malformed)?;
            if seq.len() > MAX_RANK {
                return Err(format!(
                    "tensor `{name}` has rank {}; at most {MAX_RANK} is read",
                    seq.len()
                ));
            }
            seq.iter()
                .map(|&d| p.int(d).filter(|&d| d >= 0).ok_or_else(malformed))
                .collect()
        };
        let (shape, stride) = (ints(*size)?, ints(*stride)?);
        let offset = p
            .int(*offset)
            .and_then(|o| u64::try_from(o).ok())
            .ok_or_else(malformed)?;
        if shape.len() != stride.len() {
            return Err(malformed());
        }
        Ok(TensorRef {
            name: name.to_string(),
            kind: storage_kind(&storage_type).map(|(k, _)| k),
            shape,
            storage_type,
            storage: key,
            offset,
            stride,
        })
    }

    /// `('storage', torch.XStorage, key, location, numel[, view_metadata])`: the type's name
    /// and the key.
    fn storage(&self, pid: Id, name: &str) -> Result<(String, String), String> {
        let p = self.pickle;
        let malformed = || format!("tensor `{name}`: malformed storage reference");
        let fields = p.seq(pid).ok_or_else(malformed)?;
        let (ty, key) = match fields {
            [tag, ty, key, _location, _numel, rest @ ..] if p.str(*tag) == Some("storage") => {
                if self.legacy && rest.first().is_some_and(|&v| p.node(v) != &Node::None) {
                    return Err(format!("tensor `{name}` is a view of a legacy storage, which is not read; save it with the zip format"));
                }
                (*ty, *key)
            }
            _ => return Err(malformed()),
        };
        let storage_type = match p.global(ty) {
            Some(("torch", n)) => n.to_string(),
            _ => return Err(malformed()),
        };
        let key = p.str(key).ok_or_else(malformed)?;
        if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
            return Err(format!(
                "tensor `{name}`: storage key `{key}` is not a plain name"
            ));
        }
        Ok((storage_type, key.to_string()))
    }
}
