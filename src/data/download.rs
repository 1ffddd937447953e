//! Fetching the CIFAR-10 archive: from the official URL, a mirror, a `file://` URL or a path.
//!
//! [`ensure_cifar10`] is the entry point. The archive is downloaded into a temporary file in
//! the destination root (renamed to `cifar-10-binary.tar.gz` once complete and checked), its
//! MD5 is checked before anything is extracted, and the batches are extracted into a temporary
//! folder renamed to `cifar-10-batches-bin` only once every file is there with its right size.
//! On every failure the temporary file and folder are removed. A download is bounded in size,
//! time and rate by [`DownloadLimits`].
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use crate::io::{held_by_this_process, remove_partial_files, try_lock_folder, FolderLock, IoError};

use super::cifar::BATCHES_DIR;
use super::extract::extract_batches;
use super::{Cifar10, DataError};

/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// MD5 of the official archive.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Size of the official archive, in bytes.
pub const CIFAR10_BYTES: u64 = 170_052_171;
/// Environment variable overriding the URL (a mirror, a `file://` URL or a local path).
pub const URL_ENV: &str = "RESNEXT_CIFAR10_URL";
/// Environment variable overriding the expected MD5 (lowercase or uppercase hex).
pub const MD5_ENV: &str = "RESNEXT_CIFAR10_MD5";
/// Name under which a downloaded archive is kept in the root.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// Where to fetch CIFAR-10 from and how.
///
/// Each of `url` and `md5` is taken from the option when set, else from the environment
/// variable ([`URL_ENV`], [`MD5_ENV`]) when set and not empty, else from the official default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadOptions {
    /// The archive: an `http(s)://` URL, a `file://` URL or a local path.
    pub url: Option<String>,
    /// Expected MD5 of the archive, as 32 hex digits.
    pub md5: Option<String>,
    /// Hide the progress bar.
    pub quiet: bool,
}

impl DownloadOptions {
    /// The URL to use: option, else `RESNEXT_CIFAR10_URL`, else [`CIFAR10_URL`].
    pub fn resolved_url(&self) -> String {
        self.url
            .clone()
            .or_else(|| env_value(URL_ENV))
            .unwrap_or_else(|| CIFAR10_URL.to_string())
    }

    /// The expected MD5 (lowercase): option, else `RESNEXT_CIFAR10_MD5`, else [`CIFAR10_MD5`].
    /// Errors when it is not 32 hex digits.
    pub fn resolved_md5(&self) -> Result<String, DataError> {
        let md5 = self
            .md5
            .clone()
            .or_else(|| env_value(MD5_ENV))
            .unwrap_or_else(|| CIFAR10_MD5.to_string())
            .trim()
            .to_ascii_lowercase();
        if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DataError::InvalidConfig {
                field: "md5",
                value: md5,
                expected: "32 hexadecimal digits".into(),
            });
        }
        Ok(md5)
    }
}

/// Bounds on one HTTP(S) download, each a typed error when crossed: the partial file is
/// removed and the data folder released (other processes waiting for it go on).
///
/// The defaults suit the official archive on a slow line: 1 GiB, 2 hours, 10 kB/s over each
/// minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadLimits {
    /// The most bytes any download may have. The official archive (the official URL, or the
    /// official MD5 at a mirror) may have its own size ([`CIFAR10_BYTES`]); another one, the
    /// `Content-Length` its server announces, or this cap when it announces none. A
    /// `Content-Length` above the bound is refused before the body is read, and a body that
    /// goes on past it is stopped there ([`DataError::DownloadTooLarge`]).
    pub max_bytes: u64,
    /// The longest a download may take, from the request to its last byte
    /// ([`DataError::DownloadDeadline`]).
    pub deadline: Duration,
    /// The lowest average rate, in bytes per second, over each `rate_window` from the request
    /// on (the first window is the grace period of a starting transfer); 0 for none
    /// ([`DataError::DownloadTooSlow`]).
    pub min_rate: u64,
    /// The span `min_rate` is averaged over; with a `min_rate`, also the longest a single read
    /// may wait for data.
    pub rate_window: Duration,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            max_bytes: 1 << 30,
            deadline: Duration::from_secs(2 * 60 * 60),
            min_rate: 10_000,
            rate_window: Duration::from_secs(60),
        }
    }
}

impl DownloadLimits {
    /// Errors when a limit can never be met: no bytes, no time, or a rate over no window.
    fn check(&self) -> Result<(), DataError> {
        let invalid = |field, value: String, expected: &str| DataError::InvalidConfig {
            field,
            value,
            expected: expected.into(),
        };
        if self.max_bytes == 0 {
            return Err(invalid("max_bytes", "0".into(), "at least 1 byte"));
        }
        if self.deadline.is_zero() {
            return Err(invalid("deadline", "0 s".into(), "a positive duration"));
        }
        if self.min_rate > 0 && self.rate_window.is_zero() {
            let expected = "a positive duration when min_rate is set";
            return Err(invalid("rate_window", "0 s".into(), expected));
        }
        Ok(())
    }
}

/// A non-empty environment variable.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Makes sure CIFAR-10 is in `root` and returns its batches folder.
///
/// When `root` (or `root/cifar-10-batches-bin`) already holds every batch file with the right
/// size, nothing is fetched. Otherwise the archive named by `opts` is fetched (an earlier
/// download kept as `root/cifar-10-binary.tar.gz` with the right checksum is reused), checked
/// and extracted into `root/cifar-10-batches-bin`. `root` is created if needed. A download is
/// bounded by the default [`DownloadLimits`]; [`ensure_cifar10_with`] takes others.
///
/// # Errors
/// A [`DataError`] naming what failed: the URL, checksum, a download limit
/// ([`DataError::DownloadTooLarge`], [`DataError::DownloadDeadline`],
/// [`DataError::DownloadTooSlow`]), the archive or a file. Nothing fetched is then left in
/// `root`, and `root` is released for the next process.
pub fn ensure_cifar10(root: &Path, opts: &DownloadOptions) -> Result<PathBuf, DataError> {
    ensure_cifar10_with(root, opts, &DownloadLimits::default())
}

/// As [`ensure_cifar10`], with a download bounded by `limits`.
///
/// # Errors
/// As [`ensure_cifar10`]; [`DataError::InvalidConfig`] for limits that can never be met.
pub fn ensure_cifar10_with(
    root: &Path,
    opts: &DownloadOptions,
    limits: &DownloadLimits,
) -> Result<PathBuf, DataError> {
    if let Ok(dir) = Cifar10::locate(root) {
        return Ok(dir);
    }
    let dest = root.join(BATCHES_DIR);
    if fs::symlink_metadata(&dest).is_ok() {
        let reason = match Cifar10::locate(&dest) {
            Err(e) => e.to_string(),
            Ok(_) => "changed while checking".into(),
        };
        return Err(DataError::InvalidExisting { path: dest, reason });
    }
    let url = opts.resolved_url();
    let md5 = opts.resolved_md5()?;
    limits.check()?;
    let source = Source::parse(&url)?;
    fs::create_dir_all(root).map_err(|e| DataError::io("create", root, e))?;
    // One process at a time fetches into `root`; the others wait, then find its result.
    let _held = hold_folder(root)?;
    if let Ok(dir) = Cifar10::locate(root) {
        return Ok(dir);
    }
    // What an interrupted download or extraction left (no live writer: the folder is held).
    remove_partial_files(root).map_err(|e| match e {
        IoError::Io {
            action,
            path,
            source,
        } => DataError::io(action, path, source),
        other => DataError::io("clean", root, std::io::Error::other(other.to_string())),
    })?;

    let (archive, fetched_now) = match source {
        Source::Local(path) => {
            let actual = file_md5(&path, opts.quiet)?;
            check_md5(&path.display().to_string(), &md5, actual)?;
            (path, false)
        }
        Source::Http(url) => {
            let kept = root.join(ARCHIVE_NAME);
            if kept.is_file() && file_md5(&kept, true).is_ok_and(|m| m == md5) {
                (kept, false)
            } else {
                download(&url, root, &kept, &md5, opts.quiet, limits)?;
                (kept, true)
            }
        }
    };
    let extracted = extract_batches(&archive, root, &dest);
    if extracted.is_err() && fetched_now {
        // Do not keep an archive that cannot be used.
        let _ = fs::remove_file(&archive);
    }
    extracted
}

/// Where the archive comes from.
enum Source {
    Http(String),
    Local(PathBuf),
}

impl Source {
    fn parse(url: &str) -> Result<Source, DataError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(Source::Http(url.to_string()));
        }
        if lower.starts_with("file://") {
            let rest = &url["file://".len()..];
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            if !rest.starts_with('/') {
                return Err(DataError::InvalidUrl { url: url.into() });
            }
            return Ok(Source::Local(PathBuf::from(percent_decode(rest))));
        }
        if url.is_empty() || url.contains("://") {
            return Err(DataError::InvalidUrl { url: url.into() });
        }
        Ok(Source::Local(PathBuf::from(url)))
    }
}

/// Decodes `%XX` escapes of a `file://` URL path (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A progress bar counting bytes with their rate, or a hidden one.
fn progress_bar(total: Option<u64>, quiet: bool, message: String) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(t) => (
            ProgressBar::new(t),
            "{msg}\n[{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg}\n[{elapsed_precise}] {spinner} {bytes} ({bytes_per_sec})",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares the MD5 of `what` with the expected one.
fn check_md5(what: &str, expected: &str, actual: String) -> Result<(), DataError> {
    if actual == expected {
        Ok(())
    } else {
        Err(DataError::ChecksumMismatch {
            source_desc: what.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// MD5 of a local file.
fn file_md5(path: &Path, quiet: bool) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => DataError::MissingFile { path: path.into() },
        _ => DataError::io("open", path, e),
    })?;
    let len = file.metadata().ok().map(|m| m.len());
    let bar = progress_bar(len, quiet, format!("Checking {}", path.display()));
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::io("read", path, e)),
        };
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

/// Takes `root`'s advisory lock (an exclusive `flock` on the folder itself, so nothing is
/// created in it), waiting while another process holds it. The operating system releases it
/// when the process ends, however it ends. The wait is bounded by the holder's
/// [`DownloadLimits`].
///
/// # Errors
/// [`DataError::Io`] when `root` cannot be opened or locked, also when this very process holds
/// it as a run directory (waiting would never end).
fn hold_folder(root: &Path) -> Result<fs::File, DataError> {
    let folder = match try_lock_folder(root) {
        Ok(FolderLock::Held(folder)) => return Ok(folder),
        Ok(FolderLock::Busy(folder)) => folder,
        Err(e) => return Err(DataError::io("lock", root, e)),
    };
    if held_by_this_process(&folder) {
        let why = "this process holds it as its run directory: keep the data in another folder";
        return Err(DataError::io("lock", root, std::io::Error::other(why)));
    }
    eprintln!(
        "another process is fetching CIFAR-10 into {}; waiting for it",
        root.display()
    );
    folder.lock().map_err(|e| DataError::io("lock", root, e))?;
    Ok(folder)
}

/// Downloads `url` into a temporary file in `root`, checks its MD5 and renames it to `kept`,
/// within `limits`.
fn download(
    url: &str,
    root: &Path,
    kept: &Path,
    md5: &str,
    quiet: bool,
    limits: &DownloadLimits,
) -> Result<(), DataError> {
    let mut meter = Meter::new(url, limits);
    let response = request(&meter)?;
    let total = (response.headers().get("Content-Length"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    meter.bound(md5, total)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cifar-10-binary.")
        .suffix(".tar.gz.partial")
        .tempfile_in(root)
        .map_err(|e| DataError::io("create a temporary file in", root, e))?;
    let bar = progress_bar(total, quiet, format!("Downloading {url}"));
    // Reads stop at the Content-Length when there is one (HTTP framing), and `meter` stops
    // them at the bound otherwise: nothing past it is written or kept.
    let mut reader = response
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader();
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(meter.failed(received, e));
            }
        };
        meter.check(received, n as u64)?;
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| DataError::io("write", tmp.path(), e))?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if let Some(total) = total.filter(|&t| t != received) {
        return Err(DataError::Network {
            url: url.into(),
            message: format!("truncated download: received {received} of {total} bytes"),
        });
    }
    check_md5(url, md5, hex(&hasher.finalize()))?;
    tmp.flush()
        .map_err(|e| DataError::io("write", tmp.path(), e))?;
    tmp.persist(kept)
        .map_err(|e| DataError::io("rename the download to", kept, e.error))?;
    Ok(())
}

/// One download's [`DownloadLimits`] as it runs: its size bound, its clock and its rate window.
struct Meter<'a> {
    url: &'a str,
    limits: &'a DownloadLimits,
    /// The most bytes it may have, and where that comes from.
    max: (u64, String),
    start: Instant,
    /// The start of the current rate window and the bytes received before it.
    window: (Instant, u64),
}

impl<'a> Meter<'a> {
    fn new(url: &'a str, limits: &'a DownloadLimits) -> Self {
        let start = Instant::now();
        let cap = "DownloadLimits::max_bytes".to_string();
        Meter {
            url,
            limits,
            max: (limits.max_bytes, cap),
            start,
            window: (start, 0),
        }
    }

    /// Sets the size bound from the archive (official or not, by its URL or MD5) and the
    /// announced `Content-Length`; refuses at once a `Content-Length` above it.
    fn bound(&mut self, md5: &str, content_length: Option<u64>) -> Result<(), DataError> {
        let official = self.url == CIFAR10_URL || md5 == CIFAR10_MD5;
        if official && CIFAR10_BYTES < self.max.0 {
            self.max = (CIFAR10_BYTES, "the size of the official archive".into());
        }
        match content_length {
            Some(n) if n > self.max.0 => {
                Err(self.too_large(format!("the server announces {n} bytes (Content-Length)")))
            }
            Some(n) if !official => {
                self.max = (n, "the Content-Length the server announced".into());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks the next `n` bytes, after `received`, against the bound, the deadline and the
    /// rate (over each window that has ended).
    fn check(&mut self, received: u64, n: u64) -> Result<(), DataError> {
        if received + n > self.max.0 {
            let found = format!("the body goes on past {} bytes", self.max.0);
            return Err(self.too_large(found));
        }
        let now = Instant::now();
        if now.duration_since(self.start) > self.limits.deadline {
            return Err(self.deadline(received + n));
        }
        let (since, before) = self.window;
        let span = now.duration_since(since);
        if self.limits.min_rate > 0 && span >= self.limits.rate_window {
            let got = received + n - before;
            if (got as f64) < self.limits.min_rate as f64 * span.as_secs_f64() {
                return Err(self.too_slow(got, span));
            }
            self.window = (now, received + n);
        }
        Ok(())
    }

    /// The error for a request or read that failed after `received` bytes: ureq's timeouts
    /// are the deadline (global) and the rate (a read that waited a whole window).
    fn failed(&self, received: u64, e: std::io::Error) -> DataError {
        let timeout = match e.get_ref().and_then(|inner| inner.downcast_ref()) {
            Some(ureq::Error::Timeout(t)) => *t,
            _ => return self.network(format!("connection failed after {received} bytes: {e}")),
        };
        match timeout {
            ureq::Timeout::Global => self.deadline(received),
            ureq::Timeout::PerRead => {
                let (since, before) = self.window;
                self.too_slow(received - before, since.elapsed())
            }
            t => self.network(format!("timeout ({t}) after {received} bytes")),
        }
    }

    fn network(&self, message: String) -> DataError {
        DataError::Network {
            url: self.url.into(),
            message,
        }
    }

    fn too_large(&self, found: String) -> DataError {
        DataError::DownloadTooLarge {
            url: self.url.into(),
            limit: self.max.0,
            found,
            bound: self.max.1.clone(),
        }
    }

    fn deadline(&self, received: u64) -> DataError {
        DataError::DownloadDeadline {
            url: self.url.into(),
            deadline: self.limits.deadline,
            received,
        }
    }

    fn too_slow(&self, received: u64, window: Duration) -> DataError {
        DataError::DownloadTooSlow {
            url: self.url.into(),
            received,
            window,
            min_rate: self.limits.min_rate,
        }
    }
}

/// GETs the URL of `meter`: the response of a success status, else [`DataError::HttpStatus`]
/// or the error of [`Meter::failed`]. Plain bytes: ureq is built without gzip, so no
/// transparent decoding ever changes what is hashed, and the Content-Length (when sent) is the
/// length of those bytes. The whole exchange, body included, ends by the deadline; with a
/// minimum rate, a read waits a rate window at most.
fn request(meter: &Meter) -> Result<ureq::http::Response<ureq::Body>, DataError> {
    let (url, limits) = (meter.url, meter.limits);
    let per_read = (limits.min_rate > 0).then_some(limits.rate_window);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_global(Some(limits.deadline))
        .timeout_per_read(per_read)
        .http_status_as_error(false)
        .build()
        .into();
    let response = (agent.get(url))
        .header("Accept-Encoding", "identity")
        .call()
        .map_err(|e| meter.failed(0, e.into_io()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(DataError::HttpStatus {
            url: url.into(),
            status: status.as_u16(),
            status_text: status.canonical_reason().unwrap_or_default().to_string(),
        });
    }
    Ok(response)
}
