//! The error type of the data pipeline.
use std::path::PathBuf;

use thiserror::Error;

/// How to get the data, appended to the "not found" errors.
const HOW_TO_GET: &str = "download it with `resnext::data::ensure_cifar10`, which fetches https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and extracts it as \
     `<root>/cifar-10-batches-bin`";

/// Errors raised while loading, downloading or batching CIFAR-10.
///
/// Every variant names the file or value at fault and says what was expected. A function that
/// returns one of these has not produced a partial result: no dataset is half loaded and no
/// download leaves temporary files behind.
#[derive(Debug, Error)]
pub enum DataError {
    /// The dataset folder does not exist (or is not a folder).
    #[error(
        "CIFAR-10 folder {} not found: expected a folder holding data_batch_1.bin … \
         data_batch_5.bin and test_batch.bin, or a root holding cifar-10-batches-bin/; {HOW_TO_GET}",
        path.display()
    )]
    MissingDir {
        /// The folder that was looked for.
        path: PathBuf,
    },
    /// One of the expected dataset files does not exist.
    #[error("CIFAR-10 file {} not found; {HOW_TO_GET}", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A directory (or other non-file) sits where a dataset file should be.
    #[error("{} is a directory (or not a regular file), expected the CIFAR-10 data file", path.display())]
    NotAFile {
        /// The path that is not a regular file.
        path: PathBuf,
    },
    /// A batch file does not have the size of exactly `records` records of 3073 bytes.
    #[error(
        "{} has {actual} bytes, expected exactly {expected} bytes ({records} records of 3073 bytes: \
         1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 binary batch",
        path.display()
    )]
    BadSize {
        /// The file at fault.
        path: PathBuf,
        /// Its actual size in bytes.
        actual: u64,
        /// The size it should have.
        expected: u64,
        /// The number of records expected in it.
        records: usize,
    },
    /// A record's label byte is not a class index 0..=9.
    #[error("{}: record {record} has label byte {label}, expected a class index 0..=9", path.display())]
    BadLabel {
        /// The file at fault.
        path: PathBuf,
        /// Index of the record (0-based) within the file.
        record: usize,
        /// The label byte found.
        label: u8,
    },
    /// The class-name file does not list exactly ten names.
    #[error("{}: found {found} class names, expected 10 (one per line, blank lines ignored)", path.display())]
    BadMeta {
        /// The meta file.
        path: PathBuf,
        /// How many non-blank lines it has.
        found: usize,
    },
    /// A file or folder could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `create`, `rename`, …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A tensor handed to the pipeline has the wrong kind or shape.
    #[error("invalid {what}: expected {expected}, got {actual}")]
    InvalidTensor {
        /// Which tensor (`train_images`, `labels`, …).
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        actual: String,
    },
    /// A configuration value is out of range.
    #[error("invalid data configuration: {field} = {value}: expected {expected}")]
    InvalidConfig {
        /// The field at fault.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// The download URL is neither http(s), `file://` nor a plain path.
    #[error(
        "unsupported CIFAR-10 URL `{url}`: expected http://, https://, file:// or a local path"
    )]
    InvalidUrl {
        /// The URL given.
        url: String,
    },
    /// The server answered with an error status.
    #[error("download of {url} failed: HTTP status {status} {status_text}")]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The reason phrase sent by the server.
        status_text: String,
    },
    /// The download failed before or while receiving the body (connection, DNS, TLS, truncation).
    #[error("download of {url} failed: {message}")]
    Network {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A download has more bytes than it may have (see
    /// [`DownloadLimits::max_bytes`](super::DownloadLimits::max_bytes)); it was stopped there.
    #[error(
        "download of {url} stopped: {found}, more than the {limit} bytes it may have ({bound}); \
         nothing was kept"
    )]
    DownloadTooLarge {
        /// The URL requested.
        url: String,
        /// The most bytes it may have.
        limit: u64,
        /// What exceeded it (the announced `Content-Length`, or the body itself).
        found: String,
        /// Where the limit comes from.
        bound: String,
    },
    /// A download did not finish within
    /// [`DownloadLimits::deadline`](super::DownloadLimits::deadline).
    #[error(
        "download of {url} did not finish within {deadline:.1?} (DownloadLimits::deadline; \
         {received} bytes received); nothing was kept"
    )]
    DownloadDeadline {
        /// The URL requested.
        url: String,
        /// The deadline.
        deadline: std::time::Duration,
        /// The bytes received by then.
        received: u64,
    },
    /// A download ran slower than
    /// [`DownloadLimits::min_rate`](super::DownloadLimits::min_rate) over a window.
    #[error(
        "download of {url} is too slow: {received} bytes in {window:.1?}, below the minimum of \
         {min_rate} bytes per second (DownloadLimits::min_rate); nothing was kept"
    )]
    DownloadTooSlow {
        /// The URL requested.
        url: String,
        /// The bytes received in the window.
        received: u64,
        /// How long the window lasted.
        window: std::time::Duration,
        /// The minimum rate, in bytes per second.
        min_rate: u64,
    },
    /// The archive does not have the expected MD5 checksum.
    #[error(
        "checksum mismatch for {source_desc}: expected MD5 {expected}, got {actual}; the download is \
         corrupt or comes from a different mirror. If this archive is the one you want, set the \
         expected checksum with `DownloadOptions::md5` or the RESNEXT_CIFAR10_MD5 environment variable"
    )]
    ChecksumMismatch {
        /// The URL or path of the archive.
        source_desc: String,
        /// The MD5 that was expected (lowercase hex).
        expected: String,
        /// The MD5 of what was received (lowercase hex).
        actual: String,
    },
    /// The archive is truncated or not a gzip-compressed tar file.
    #[error("{} is not a valid CIFAR-10 archive (truncated or corrupt tar.gz): {message}", archive.display())]
    CorruptArchive {
        /// The archive file.
        archive: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The archive lacks some of the expected `cifar-10-batches-bin/*.bin` files.
    #[error("{} lacks {}: expected cifar-10-batches-bin/ with data_batch_1.bin … data_batch_5.bin and test_batch.bin",
        archive.display(), missing.join(", "))]
    ArchiveMissingFiles {
        /// The archive file.
        archive: PathBuf,
        /// The expected entries that were not found.
        missing: Vec<String>,
    },
    /// A file in the archive does not have the expected size or content.
    #[error("{} holds an invalid dataset file: {source}", archive.display())]
    ArchiveInvalidFile {
        /// The archive file.
        archive: PathBuf,
        /// What is wrong with the extracted file.
        #[source]
        source: Box<DataError>,
    },
    /// The destination already holds an invalid `cifar-10-batches-bin` folder, which is left alone.
    #[error("{} exists but is not a valid CIFAR-10 folder ({reason}); remove it and run the download again",
        path.display())]
    InvalidExisting {
        /// The existing folder.
        path: PathBuf,
        /// Why it is not valid.
        reason: String,
    },
    /// The background thread that prepares batches could not start or stopped abnormally.
    #[error("data pipeline worker failed: {message}")]
    Worker {
        /// What happened.
        message: String,
    },
    /// An image folder (or one of its class folders) holds nothing to read.
    #[error("{} holds no images: expected {expected}", path.display())]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
    /// An image dataset folder has class folders but no `train/` and `val/`, and no
    /// validation fraction was given.
    #[error("{p} has no train/ folder: expected {p}/train/<class>/ and {p}/val/<class>/, or a validation fraction to hold out of its class folders", p = path.display())]
    MissingSplit {
        /// The folder.
        path: PathBuf,
    },
    /// The training and validation folders of an image dataset have different classes.
    #[error("the class folders of {} and {} differ: {difference}", train.display(), val.display())]
    ClassMismatch {
        /// The training folder.
        train: PathBuf,
        /// The validation folder.
        val: PathBuf,
        /// The classes present in only one of them.
        difference: String,
    },
    /// An image file could not be decoded (corrupt, truncated, or not the format its
    /// extension says).
    #[error("cannot decode image {}: {reason}", path.display())]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// An image file claims more pixels than the decoding limit (a decompression bomb, or a
    /// picture far larger than training needs).
    #[error("image {} claims {width}x{height} pixels, more than the limit of {limit} pixels", path.display())]
    ImageTooLarge {
        /// The file.
        path: PathBuf,
        /// Width in its header.
        width: u32,
        /// Height in its header.
        height: u32,
        /// The limit ([`ImageFolderOptions::max_pixels`](super::ImageFolderOptions::max_pixels)).
        limit: u64,
    },
    /// libtorch reported an error.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}

impl DataError {
    /// Builds an [`DataError::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
