//! The legacy format of `torch.save` (`_use_new_zipfile_serialization=False`): pickles in a
//! row (magic number, protocol, system information, the saved object, the storage keys), then
//! each storage as an 8-byte element count and its bytes.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::walk::find_tensors;
use super::{bad, io_bad, storage_kind, PthFile, Storages};
use crate::weights::pickle::{read_pickle, Limits, Node, Pickle};
use crate::weights::WeightsError;

/// torch's legacy-format magic number, the first pickle of such a file.
const LEGACY_PROTOCOL: i64 = 1001;

pub(super) fn open_legacy(path: &Path, file: File) -> Result<PthFile, WeightsError> {
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
