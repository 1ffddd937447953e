//! Extraction of the batch files from a CIFAR-10 `tar.gz`, into a temporary folder renamed
//! into place. Only the expected files are written, under names chosen here, so no entry can
//! write outside the folder (no path traversal, no links).
use std::fs::{self, File};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

use super::cifar::{BATCHES_DIR, META_FILE, TEST_FILE, TRAIN_FILES};
use super::{Cifar10, DataError};

/// Files taken from the archive (the batch files are required, the others optional).
const WANTED: [&str; 8] = [
    TRAIN_FILES[0],
    TRAIN_FILES[1],
    TRAIN_FILES[2],
    TRAIN_FILES[3],
    TRAIN_FILES[4],
    TEST_FILE,
    META_FILE,
    "readme.html",
];
/// How many of [`WANTED`] are required.
const REQUIRED: usize = 6;

/// The file name to extract `entry` as, if it is `cifar-10-batches-bin/<wanted name>`.
fn wanted_name(entry: &Path) -> Option<&'static str> {
    let mut parts = entry.components().filter(|c| *c != Component::CurDir);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Component::Normal(dir)), Some(Component::Normal(file)), None)
            if dir == BATCHES_DIR =>
        {
            WANTED.iter().copied().find(|w| file == *w)
        }
        _ => None,
    }
}

/// Extracts the batch files of `archive` into `dest` (which must not exist), through a
/// temporary folder in `root`. Returns `dest`.
pub(crate) fn extract_batches(
    archive: &Path,
    root: &Path,
    dest: &Path,
) -> Result<PathBuf, DataError> {
    let tmp = tempfile::Builder::new()
        .prefix(".cifar-10-batches-bin.")
        .suffix(".partial")
        .tempdir_in(root)
        .map_err(|e| DataError::io("create a temporary folder in", root, e))?;
    let found = unpack(archive, tmp.path())?;
    let missing: Vec<String> = WANTED[..REQUIRED]
        .iter()
        .filter(|w| !found.contains(w))
        .map(|w| format!("{BATCHES_DIR}/{w}"))
        .collect();
    if !missing.is_empty() {
        return Err(DataError::ArchiveMissingFiles {
            archive: archive.into(),
            missing,
        });
    }
    Cifar10::locate(tmp.path()).map_err(|e| DataError::ArchiveInvalidFile {
        archive: archive.into(),
        source: Box::new(e),
    })?;
    match fs::rename(tmp.path(), dest) {
        Ok(()) => {
            // The folder now lives at `dest`: do not let the guard delete anything.
            let _ = tmp.keep();
            Ok(dest.to_path_buf())
        }
        // Another process may have put a complete dataset there meanwhile (the guard
        // removes our copy).
        Err(_) if Cifar10::is_present(dest) => Ok(dest.to_path_buf()),
        Err(e) => Err(DataError::io("rename the extracted folder to", dest, e)),
    }
}

/// Writes the wanted entries of `archive` into `dir`; returns the names written.
fn unpack(archive: &Path, dir: &Path) -> Result<Vec<&'static str>, DataError> {
    let corrupt = |e: std::io::Error| DataError::CorruptArchive {
        archive: archive.into(),
        message: e.to_string(),
    };
    let file = File::open(archive).map_err(|e| DataError::io("open", archive, e))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1 << 18];
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(corrupt)?.into_owned();
        let Some(name) = wanted_name(&path) else {
            continue;
        };
        let out_path = dir.join(name);
        let mut out = File::create(&out_path).map_err(|e| DataError::io("create", &out_path, e))?;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(e)),
            };
            out.write_all(&buf[..n])
                .map_err(|e| DataError::io("write", &out_path, e))?;
        }
        if !found.contains(&name) {
            found.push(name);
        }
    }
    // Read to the end of the gzip stream so that its checksum is verified.
    let mut gz = tar.into_inner();
    std::io::copy(&mut gz, &mut std::io::sink()).map_err(corrupt)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_expected_entries_are_taken() {
        let ok = |p: &str| wanted_name(Path::new(p));
        assert_eq!(
            ok("cifar-10-batches-bin/data_batch_1.bin"),
            Some("data_batch_1.bin")
        );
        assert_eq!(
            ok("./cifar-10-batches-bin/test_batch.bin"),
            Some("test_batch.bin")
        );
        assert_eq!(ok("cifar-10-batches-bin/../../etc/passwd"), None);
        assert_eq!(ok("../cifar-10-batches-bin/data_batch_1.bin"), None);
        assert_eq!(ok("/cifar-10-batches-bin/data_batch_1.bin"), None);
        assert_eq!(ok("cifar-10-batches-bin/x/data_batch_1.bin"), None);
        assert_eq!(ok("other/data_batch_1.bin"), None);
        assert_eq!(ok("data_batch_1.bin"), None);
    }
}
