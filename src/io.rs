//! File I/O shared by weights, checkpoints, run outputs and downloads: atomic writes (a kill at
//! any instant leaves either the old complete file or the new complete file, never a mix),
//! safetensors files with string metadata (the metadata from the header alone:
//! [`read_safetensors_metadata`]), folders held by one process at a time ([`lock_dir`]) and
//! the removal of what interrupted writes left ([`remove_partial_files`]).
mod header;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};
use thiserror::Error;

pub(crate) use header::read_safetensors_header;
pub use header::{read_safetensors_metadata, MAX_SAFETENSORS_HEADER};

/// Errors reading or writing tensor files and run outputs.
#[derive(Debug, Error)]
pub enum IoError {
    /// The operating system refused a read, write, fsync or rename.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`writing`, `reading`, …).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, corrupt or not safetensors at all).
    #[error("{} is not a valid safetensors file (truncated or corrupt?): {message}", path.display())]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What the parser found wrong.
        message: String,
    },
    /// Another process, or another [`DirLock`] of this one, holds the folder (see [`lock_dir`]).
    #[error("{} is in use by {}: one process at a time may work in it (the lock is on the \
        folder itself and ends with that process)",
        dir.display(),
        holder.map_or("another process".to_string(), |pid| format!("process {pid}")))]
    Locked {
        /// The folder.
        dir: PathBuf,
        /// The process id the holder wrote into the folder's [`LOCK_FILE`], when it could be
        /// read.
        holder: Option<u32>,
    },
    /// A tensor cannot be stored (unsupported element kind) or read back.
    #[error("{}: tensor `{name}`: {message}", path.display())]
    Tensor {
        /// The file concerned.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder, fsynced, then
/// renamed over `path`, and the folder fsynced. Readers see the old file or the new one, whole.
///
/// # Errors
/// [`IoError::Io`] naming the file; `path` is then unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(ATOMIC_PREFIX)
        .suffix(PARTIAL_SUFFIX)
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file for", path))?;
    tmp.write_all(bytes).map_err(io_err("writing", path))?;
    // Temporary files are created owner-only; the result is an ordinary file (rw-r--r--).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("setting permissions of", path))?;
    }
    tmp.as_file().sync_all().map_err(io_err("syncing", path))?;
    if fault::strikes() {
        // As a kill before the rename would: the temporary file stays, `path` is unchanged.
        let _ = tmp.keep();
        return Err(io_err("renaming into place", path)(std::io::Error::other(
            "injected fault (resnext::io::fault)",
        )));
    }
    tmp.persist(path)
        .map_err(|e| io_err("renaming into place", path)(e.error))?;
    // Make the rename itself durable. Not every file system lets a folder be fsynced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Prefix and suffix of [`write_atomic`]'s temporary files.
const ATOMIC_PREFIX: &str = ".tmp-";
/// Suffix of every temporary file or folder this crate creates (atomic writes, downloads,
/// extraction); their names also start with a dot and one of [`PARTIAL_PREFIXES`].
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";
/// Name prefixes of this crate's temporary files and folders.
const PARTIAL_PREFIXES: [&str; 3] = [ATOMIC_PREFIX, ".cifar-10-binary.", ".cifar-10-batches-bin."];
/// The file in which [`lock_dir`] records the holder's process id, for the message another
/// process shows; the lock itself is on the folder, so deleting this file releases nothing.
pub const LOCK_FILE: &str = ".lock";

/// A folder held by this process (see [`lock_dir`]); dropping it releases the folder.
#[derive(Debug)]
pub struct DirLock {
    _folder: fs::File,
    dir: PathBuf,
    id: Option<(u64, u64)>,
}

impl DirLock {
    /// The folder held.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut held = HELD_HERE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = held.iter().position(|&id| Some(id) == self.id) {
            held.swap_remove(i);
        }
    }
}

/// The folders this process holds with [`lock_dir`], as (device, inode).
static HELD_HERE: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// The (device, inode) of an open folder.
fn folder_id(folder: &fs::File) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        folder.metadata().ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = folder;
        None
    }
}

/// Whether a [`DirLock`] of this very process holds the open `folder` (waiting for its lock
/// would then wait for ever).
pub(crate) fn held_by_this_process(folder: &fs::File) -> bool {
    let held = HELD_HERE.lock().unwrap_or_else(|e| e.into_inner());
    folder_id(folder).is_some_and(|id| held.contains(&id))
}

/// An open folder and whether its exclusive lock was taken (see [`try_lock_folder`]).
pub(crate) enum FolderLock {
    /// Locked by this open folder until it is closed.
    Held(fs::File),
    /// Another open folder holds the lock (in this process or another); [`fs::File::lock`] on
    /// this one waits for it.
    Busy(fs::File),
}

/// Opens `dir` itself (`O_RDONLY | O_DIRECTORY`) and tries, without waiting, to take an
/// exclusive `flock` on it. The lock belongs to the open folder, not to a file in it, so
/// nothing removed from or created in `dir` can release or duplicate it; the operating system
/// releases it when the folder is closed or the process ends, however it ends.
///
/// # Errors
/// The error of opening `dir` (also when it is not a folder) or of `flock`.
pub(crate) fn try_lock_folder(dir: &Path) -> Result<FolderLock, std::io::Error> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_DIRECTORY);
    }
    let folder = options.open(dir)?;
    match folder.try_lock() {
        Ok(()) => Ok(FolderLock::Held(folder)),
        Err(fs::TryLockError::WouldBlock) => Ok(FolderLock::Busy(folder)),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the advisory lock of `dir` (an exclusive `flock` on the folder itself, opened
/// `O_RDONLY | O_DIRECTORY`) for as long as the returned [`DirLock`] lives, and records this
/// process's id in `dir/.lock` ([`LOCK_FILE`]) for the message others get. The operating
/// system releases the lock when the process ends, however it ends, so a lock file left by a
/// killed process never blocks anyone; and the lock is not the file, so deleting the lock file
/// of a live holder does not let a second one in.
///
/// # Errors
/// [`IoError::Locked`] at once (no waiting) when another process, or another [`DirLock`] of
/// this one, holds `dir`, naming the holder's process id when its lock file can be read;
/// [`IoError::Io`] when `dir` cannot be opened as a folder or locked.
pub fn lock_dir(dir: &Path) -> Result<DirLock, IoError> {
    let folder = match try_lock_folder(dir) {
        Ok(FolderLock::Held(folder)) => folder,
        Ok(FolderLock::Busy(_)) => {
            let holder = fs::read_to_string(dir.join(LOCK_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(IoError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(e) => return Err(io_err("locking", dir)(e)),
    };
    // Best effort: the id is only for the message another process shows.
    let _ = fs::write(dir.join(LOCK_FILE), std::process::id().to_string());
    let id = folder_id(&folder);
    if let Some(id) = id {
        HELD_HERE.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }
    Ok(DirLock {
        _folder: folder,
        dir: dir.to_path_buf(),
        id,
    })
}

/// Removes from `dir` the temporary files and folders that interrupted writes of this crate
/// left (atomic writes, downloads, extractions: hidden names ending in `.partial`) and returns
/// how many there were. Hold `dir`'s [`lock_dir`] while calling it: a live writer's
/// temporary file looks the same.
///
/// # Errors
/// [`IoError::Io`] naming the entry that could not be removed.
pub fn remove_partial_files(dir: &Path) -> Result<usize, IoError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = PARTIAL_PREFIXES.iter().any(|p| name.starts_with(p));
        if !(ours && name.ends_with(PARTIAL_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        gone.map_err(io_err("removing the leftover", &path))?;
        removed += 1;
    }
    Ok(removed)
}

/// Fault injection for tests: make a chosen [`write_atomic`] fail as a crash or a full disk
/// would at that instant. Process-wide; not for use outside tests.
#[doc(hidden)]
pub mod fault {
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Writes left before the failing one; negative when off.
    static COUNTDOWN: AtomicI64 = AtomicI64::new(-1);

    /// Makes the `n`-th next atomic write (1 = the very next) fail before its rename, leaving
    /// its temporary file behind; later writes succeed again.
    pub fn fail_nth_write(n: u32) {
        COUNTDOWN.store(i64::from(n), Ordering::SeqCst);
    }

    /// Turns injection off; returns whether the armed failure was not reached.
    pub fn disarm() -> bool {
        COUNTDOWN.swap(-1, Ordering::SeqCst) > 0
    }

    /// Whether this write fails.
    pub(crate) fn strikes() -> bool {
        COUNTDOWN
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then(|| n - 1)
            })
            .is_ok_and(|before| before == 1)
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// libtorch's kind for a safetensors element type; `None` for the unsigned types libtorch has
/// no kind for.
pub(crate) fn kind_of_dtype(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Serialises named tensors (any device, any layout) and optional string metadata to the bytes
/// of a safetensors file. Tensors are copied to contiguous CPU memory first.
///
/// # Errors
/// [`IoError::Tensor`] for an element kind safetensors cannot hold; `path` only names the
/// destination in the message.
pub fn safetensors_bytes(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, IoError> {
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let err = |message: String| IoError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            message,
        };
        let dtype = dtype_of(t.kind())
            .ok_or_else(|| err(format!("element kind {:?} cannot be stored", t.kind())))?;
        let cpu = t
            .f_to_device(tch::Device::Cpu)
            .and_then(|c| c.f_contiguous())
            .map_err(|e| err(e.to_string()))?;
        let numel = cpu.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, numel)
            .map_err(|e| err(e.to_string()))?;
        let shape: Vec<usize> = cpu.size().iter().map(|&d| d as usize).collect();
        data.push((name.as_str(), dtype, shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| IoError::Tensor {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    message: format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::tensor::serialize(views, &None).map_err(|e| IoError::Format {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    })?;
    match metadata {
        Some(map) if !map.is_empty() => Ok(with_sorted_metadata(bytes, &map)),
        _ => Ok(bytes),
    }
}

/// `bytes` (a safetensors file without metadata) with `metadata` in its header, keys sorted.
/// safetensors writes its metadata map in `HashMap` order, which changes from process to
/// process; the same weights and metadata must give the same file, byte for byte (a resumed
/// run's `last.safetensors` equals an uninterrupted run's).
fn with_sorted_metadata(bytes: Vec<u8>, metadata: &HashMap<String, String>) -> Vec<u8> {
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len) as usize;
    // The header is a JSON object of the tensors, padded with spaces; safetensors wrote it.
    let header = String::from_utf8_lossy(&bytes[8..8 + n]);
    let tensors = header.trim_end().strip_prefix('{').unwrap_or("}");
    let sorted: std::collections::BTreeMap<&String, &String> = metadata.iter().collect();
    // A map of strings always serialises.
    let meta = serde_json::to_string(&sorted).unwrap_or_default();
    let comma = if tensors == "}" { "" } else { "," };
    let mut header = format!("{{\"__metadata__\":{meta}{comma}{tensors}");
    // Data stays 8-byte aligned, as safetensors keeps it.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(&bytes[8 + n..]);
    out
}

/// Writes named tensors and optional metadata as a safetensors file, atomically
/// (see [`write_atomic`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resnext::io::{read_safetensors, write_safetensors};
/// use tch::Tensor;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("t.safetensors");
/// let meta = [("note".to_string(), "hello".to_string())].into_iter().collect();
/// write_safetensors(&path, &[("x".to_string(), Tensor::from_slice(&[1f32, 2.0]))], Some(meta))?;
/// let file = read_safetensors(&path)?;
/// assert_eq!(file.tensors[0].0, "x");
/// assert_eq!(file.metadata["note"], "hello");
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`IoError`] naming the file; an existing file at `path` is then unchanged.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), IoError> {
    let bytes = safetensors_bytes(path, tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// The contents of a safetensors file: tensors on the CPU in file order, and the metadata.
#[derive(Debug)]
pub struct TensorFile {
    /// `(name, tensor)` pairs, CPU tensors, in the order they are stored.
    pub tensors: Vec<(String, Tensor)>,
    /// The file's `__metadata__` map (empty when it has none).
    pub metadata: HashMap<String, String>,
}

/// Reads a whole safetensors file.
///
/// # Errors
/// [`IoError::Io`] when it cannot be read, [`IoError::Format`] when it is truncated or corrupt,
/// [`IoError::Tensor`] for an element kind libtorch does not have.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, IoError> {
    let bytes = fs::read(path).map_err(io_err("reading", path))?;
    let format = |message: String| IoError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format(format!("{e:?}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format(format!("{e:?}")))?;
    let mut names: Vec<(usize, String)> = header
        .tensors()
        .into_iter()
        .map(|(name, info)| (info.data_offsets.0, name))
        .collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let err = |message: String| IoError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            message,
        };
        let view = st.tensor(&name).map_err(|e| err(format!("{e:?}")))?;
        let kind = kind_of_dtype(view.dtype())
            .ok_or_else(|| err(format!("element type {:?} is not supported", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t =
            Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| err(e.to_string()))?;
        tensors.push((name, t));
    }
    Ok(TensorFile { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes_and_read_back() {
        let tensors = [
            ("b".to_string(), Tensor::from_slice(&[1f32, 2.0, 3.0])),
            ("a".to_string(), Tensor::from_slice(&[7i64])),
        ];
        let entries: Vec<(String, String)> = (0..8)
            .map(|i| (format!("key{i}"), format!("value \"{i}\"")))
            .collect();
        let path = Path::new("t.safetensors");
        // Every HashMap has its own random order.
        let files: Vec<Vec<u8>> = (0..6)
            .map(|_| {
                let meta: HashMap<String, String> = entries.iter().cloned().collect();
                safetensors_bytes(path, &tensors, Some(meta)).unwrap()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.safetensors");
        std::fs::write(&file, &files[0]).unwrap();
        let back = read_safetensors(&file).unwrap();
        assert_eq!(back.metadata, entries.into_iter().collect());
        assert_eq!(back.tensors.len(), 2);
        assert!(back
            .tensors
            .iter()
            .any(|(n, t)| n == "b" && t.equal(&tensors[0].1)));
        let n = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0, "data stays aligned");
    }
}
