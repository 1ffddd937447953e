//! The zip format of `torch.save` (PyTorch 1.6 and later): `<name>/data.pkl`, the pickle, and
//! `<name>/data/<key>`, each storage's bytes, stored uncompressed.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use zip::ZipArchive;

use super::walk::find_tensors;
use super::{bad, io_bad, PthFile, Storages, TensorRef};
use crate::weights::pickle::{read_pickle, Limits};
use crate::weights::WeightsError;

/// Entries of a zip file above this are refused (a `torch.save` of a model has one per tensor).
const MAX_ZIP_ENTRIES: usize = 1_000_000;

pub(super) fn open_zip(path: &Path, file: File) -> Result<PthFile, WeightsError> {
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
