//! `ensure_cifar10` against a tiny HTTP server on 127.0.0.1, `file://` URLs and plain paths,
//! with synthetic archives built here: success, reuse without a request, wrong checksum,
//! truncated archive and transfer, HTTP errors, missing or wrong-size files, path traversal,
//! environment overrides, endless, oversized, slow and silent servers against the
//! `DownloadLimits`; after every failure the root holds nothing new.
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// What "stopped, not hung" means in the timing checks below: the servers stall for 1000 s, the
/// limits are 0.5 to 1 s, and a loaded CI machine may take several seconds more (a bound on a
/// hang, not a speed measurement).
const HANG: Duration = Duration::from_secs(20);

use flate2::write::GzEncoder;
use flate2::Compression;
use md5::{Digest, Md5};
use resnext::data::{
    ensure_cifar10, ensure_cifar10_with, Cifar10, DataError, DownloadLimits, DownloadOptions,
    BATCHES_DIR, CIFAR10_BYTES, CIFAR10_MD5, CIFAR10_URL, RECORD_BYTES,
};

const BINS: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
const META: &str = "n0\nn1\nn2\nn3\nn4\nn5\nn6\nn7\nn8\nn9\n\n";

/// A batch file of `records` zero images with labels `(r + shift) % 10`.
fn bin_file(records: usize, shift: usize) -> Vec<u8> {
    let mut v = vec![0u8; records * RECORD_BYTES];
    for r in 0..records {
        v[r * RECORD_BYTES] = ((r + shift) % 10) as u8;
    }
    v
}

enum Entry {
    File(String, Vec<u8>),
    Symlink(String, String),
    Dir(String),
}

/// A `tar.gz` of `entries`, names written raw (so `..` and absolute names are possible).
fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for entry in entries {
        let mut h = tar::Header::new_old();
        let (name, data, kind): (&str, &[u8], tar::EntryType) = match entry {
            Entry::File(n, d) => (n, d, tar::EntryType::Regular),
            Entry::Symlink(n, _) => (n, &[], tar::EntryType::Symlink),
            Entry::Dir(n) => (n, &[], tar::EntryType::Directory),
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Entry::Symlink(_, target) = entry {
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn dataset_entries(skip: Option<&str>, short: Option<&str>) -> Vec<Entry> {
    let mut e = vec![
        Entry::Symlink(
            format!("{BATCHES_DIR}/data_batch_1.bin"),
            "/etc/passwd".into(),
        ),
        Entry::Dir(format!("{BATCHES_DIR}/")),
        Entry::File("../evil-parent.txt".into(), b"evil".to_vec()),
        Entry::File(format!("{BATCHES_DIR}/../../evil-up.txt"), b"evil".to_vec()),
        Entry::File(format!("{BATCHES_DIR}/sub/evil-sub.txt"), b"evil".to_vec()),
        Entry::File(format!("{BATCHES_DIR}/batches.meta.txt"), META.into()),
    ];
    for (i, name) in BINS.iter().enumerate() {
        if Some(*name) == skip {
            continue;
        }
        let records = if Some(*name) == short { 9_999 } else { 10_000 };
        e.push(Entry::File(
            format!("{BATCHES_DIR}/{name}"),
            bin_file(records, i),
        ));
    }
    e
}

/// The valid archive and its MD5, built once per test binary.
fn archive() -> &'static (Arc<Vec<u8>>, String) {
    static ARCHIVE: OnceLock<(Arc<Vec<u8>>, String)> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let bytes = tar_gz(&dataset_entries(None, None));
        let md5 = md5_hex(&bytes);
        (Arc::new(bytes), md5)
    })
}

#[derive(Clone)]
enum Reply {
    Body(Arc<Vec<u8>>),
    Status(u16, &'static str),
    /// Announces the full length and sends only `sent` bytes.
    CutShort(Arc<Vec<u8>>, usize),
    /// The bytes, labelled `Content-Encoding: gzip` (as some servers label a `.tar.gz`).
    GzipLabelled(Arc<Vec<u8>>),
    /// No Content-Length, and bytes for ever (until the client hangs up).
    Endless,
    /// Announces the length of the bytes, sends them, then bytes for ever.
    Overlong(Arc<Vec<u8>>),
    /// Announces this many bytes and sends none, until the client hangs up.
    Silent(u64),
    /// Announces a megabyte and sends one byte at each of these intervals.
    Trickle(Duration),
}

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
}

/// Serves `reply` to every request on a free port of 127.0.0.1, one connection at a time.
fn serve(reply: Reply) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            respond(&mut s, &reply);
        }
    });
    Server {
        url: format!("http://{addr}/cifar-10-binary.tar.gz"),
        hits,
    }
}

/// Writes `reply` to the client of `s`.
fn respond(s: &mut TcpStream, reply: &Reply) {
    let encoding = match reply {
        Reply::GzipLabelled(_) => "Content-Encoding: gzip\r\n",
        _ => "",
    };
    let (status, body, declared): (String, &[u8], Option<u64>) = match reply {
        Reply::Body(b) | Reply::GzipLabelled(b) | Reply::Overlong(b) => {
            ("200 OK".into(), b, Some(b.len() as u64))
        }
        Reply::Status(code, text) => (format!("{code} {text}"), b"error page", Some(10)),
        Reply::CutShort(b, sent) => ("200 OK".into(), &b[..*sent], Some(b.len() as u64)),
        Reply::Endless => ("200 OK".into(), &[], None),
        Reply::Silent(n) => ("200 OK".into(), &[], Some(*n)),
        Reply::Trickle(_) => ("200 OK".into(), &[], Some(1 << 20)),
    };
    let length = declared.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/gzip\r\n{encoding}{length}\
         Connection: close\r\n\r\n"
    );
    let _ = s.write_all(header.as_bytes());
    let _ = s.write_all(body);
    let _ = s.flush();
    match reply {
        Reply::Endless | Reply::Overlong(_) => {
            let junk = vec![b'x'; 1 << 16];
            while s.write_all(&junk).is_ok() {}
        }
        Reply::Silent(_) => {
            let _ = s.read(&mut [0u8; 1]);
        }
        Reply::Trickle(every) => loop {
            thread::sleep(*every);
            if s.write_all(b"x").and_then(|()| s.flush()).is_err() {
                break;
            }
        },
        _ => {}
    }
}

fn opts(url: &str, md5: &str) -> DownloadOptions {
    DownloadOptions {
        url: Some(url.into()),
        md5: Some(md5.into()),
        quiet: true,
    }
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every path under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A fresh root two levels below a temporary folder (so escapes would be visible).
fn fresh_root() -> (tempfile::TempDir, PathBuf) {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("inner").join("root");
    fs::create_dir_all(&root).unwrap();
    (top, root)
}

fn assert_valid(dir: &Path, root: &Path) {
    assert_eq!(dir, root.join(BATCHES_DIR));
    let data = Cifar10::load(root).unwrap();
    assert_eq!(data.train_images.size(), [50_000, 3, 32, 32]);
    assert_eq!(data.test_images.size(), [10_000, 3, 32, 32]);
    let labels = Vec::<i64>::try_from(&data.train_labels).unwrap();
    assert_eq!(&labels[..3], &[0, 1, 2]);
    assert_eq!(labels[10_000], 1); // second file, shift 1
    assert_eq!(data.test_labels.int64_value(&[0]), 5);
    assert_eq!(data.classes[9], "n9");
    let mut files = listing(dir);
    files.sort();
    let mut want: Vec<String> = BINS.iter().map(|s| s.to_string()).collect();
    want.push("batches.meta.txt".into());
    want.sort();
    assert_eq!(files, want, "only the expected files are extracted");
    for f in &want {
        let meta = fs::symlink_metadata(dir.join(f)).unwrap();
        assert!(meta.file_type().is_file(), "{f} is a regular file");
    }
}

fn assert_no_escape(top: &Path) {
    for p in walk(top) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("evil"),
            "escaped entry written: {}",
            p.display()
        );
    }
}

#[test]
fn http_download_extracts_and_a_second_call_makes_no_request() {
    let (archive, md5) = archive();
    let server = serve(Reply::Body(Arc::clone(archive)));
    let (top, root) = fresh_root();
    let dir = ensure_cifar10(&root, &opts(&server.url, md5)).unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert_valid(&dir, &root);
    assert_eq!(
        listing(&root),
        [BATCHES_DIR, "cifar-10-binary.tar.gz"],
        "the archive is kept, nothing else"
    );
    assert_no_escape(top.path());
    // Already there: no new request, same folder.
    assert_eq!(ensure_cifar10(&root, &opts(&server.url, md5)).unwrap(), dir);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // Folder removed but archive kept (right checksum): extracted again without a request.
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ensure_cifar10(&root, &opts(&server.url, md5)).unwrap(), dir);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert!(Cifar10::is_present(&root));
}

#[test]
fn an_archive_served_with_content_encoding_gzip_arrives_as_its_raw_bytes() {
    // The MD5 is that of the .tar.gz itself: a client that decoded the transfer encoding
    // would hash the tar inside and refuse a good download.
    let (archive, md5) = archive();
    let server = serve(Reply::GzipLabelled(Arc::clone(archive)));
    let (_top, root) = fresh_root();
    let dir = ensure_cifar10(&root, &opts(&server.url, md5)).unwrap();
    assert_valid(&dir, &root);
    let kept = fs::read(root.join("cifar-10-binary.tar.gz")).unwrap();
    assert!(
        kept == **archive,
        "the kept archive is not the bytes served"
    );
}

#[test]
fn leftovers_of_an_interrupted_download_are_removed_on_the_next_one() {
    let (archive, md5) = archive();
    let server = serve(Reply::Body(Arc::clone(archive)));
    let (_top, root) = fresh_root();
    // What a kill during a download and during an extraction leaves behind.
    fs::write(
        root.join(".cifar-10-binary.Ab12Cd.tar.gz.partial"),
        vec![7u8; 1 << 20],
    )
    .unwrap();
    fs::create_dir_all(root.join(".cifar-10-batches-bin.Xy34Zw.partial/sub")).unwrap();
    fs::write(root.join("mine.partial"), "not ours").unwrap();
    let dir = ensure_cifar10(&root, &opts(&server.url, md5)).unwrap();
    assert_valid(&dir, &root);
    assert_eq!(
        listing(&root),
        [BATCHES_DIR, "cifar-10-binary.tar.gz", "mine.partial"],
        "the leftovers are gone, the user's file is not"
    );
}

#[test]
fn an_existing_valid_dataset_is_used_without_a_request() {
    let server = serve(Reply::Status(500, "Internal Server Error"));
    let (_top, root) = fresh_root();
    let dir = root.join(BATCHES_DIR);
    fs::create_dir_all(&dir).unwrap();
    for (i, name) in BINS.iter().enumerate() {
        fs::write(dir.join(name), bin_file(10_000, i)).unwrap();
    }
    assert_eq!(
        ensure_cifar10(&root, &opts(&server.url, CIFAR10_MD5)).unwrap(),
        dir
    );
    // Also when the root itself is the batches folder.
    assert_eq!(
        ensure_cifar10(&dir, &opts(&server.url, CIFAR10_MD5)).unwrap(),
        dir
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn an_invalid_existing_folder_is_reported_and_left_alone() {
    let server = serve(Reply::Status(500, "Internal Server Error"));
    let (_top, root) = fresh_root();
    let dir = root.join(BATCHES_DIR);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("data_batch_1.bin"), b"junk").unwrap();
    match ensure_cifar10(&root, &opts(&server.url, CIFAR10_MD5)) {
        Err(DataError::InvalidExisting { path, reason }) => {
            assert_eq!(path, dir);
            assert!(reason.contains("data_batch_1.bin"), "{reason}");
        }
        other => panic!("expected InvalidExisting, got {other:?}"),
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
    assert_eq!(listing(&dir), ["data_batch_1.bin"]);
}

#[test]
fn wrong_checksum_names_both_sums_and_the_override() {
    let (archive, md5) = archive();
    let server = serve(Reply::Body(Arc::clone(archive)));
    let (_top, root) = fresh_root();
    let wrong = "0123456789abcdef0123456789abcdef";
    let err = ensure_cifar10(&root, &opts(&server.url, wrong)).unwrap_err();
    match &err {
        DataError::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, md5);
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(wrong) && msg.contains(md5.as_str()), "{msg}");
    assert!(msg.contains("RESNEXT_CIFAR10_MD5"), "{msg}");
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );
    // Malformed checksums are refused before any request.
    assert!(matches!(
        ensure_cifar10(&root, &opts(&server.url, "xyz")),
        Err(DataError::InvalidConfig { field: "md5", .. })
    ));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_truncated_archive_is_corrupt_and_leaves_nothing() {
    let (archive, _) = archive();
    let half = Arc::new(archive[..archive.len() / 2].to_vec());
    let half_md5 = md5_hex(&half);
    let server = serve(Reply::Body(Arc::clone(&half)));
    let (_top, root) = fresh_root();
    let err = ensure_cifar10(&root, &opts(&server.url, &half_md5)).unwrap_err();
    assert!(
        matches!(err, DataError::CorruptArchive { .. }),
        "expected CorruptArchive, got {err:?}"
    );
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );

    // The same from a local path (nothing downloaded, so nothing to remove either).
    let file = root.parent().unwrap().join("half.tar.gz");
    fs::write(&file, &*half).unwrap();
    let err = ensure_cifar10(&root, &opts(file.to_str().unwrap(), &half_md5)).unwrap_err();
    assert!(matches!(err, DataError::CorruptArchive { .. }), "{err:?}");
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );
}

#[test]
fn a_transfer_cut_short_is_a_network_error_and_leaves_nothing() {
    let (archive, md5) = archive();
    let server = serve(Reply::CutShort(Arc::clone(archive), archive.len() / 3));
    let (_top, root) = fresh_root();
    let err = ensure_cifar10(&root, &opts(&server.url, md5)).unwrap_err();
    assert!(matches!(err, DataError::Network { .. }), "{err:?}");
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );
}

#[test]
fn server_errors_report_the_status() {
    for (code, text) in [(500, "Internal Server Error"), (404, "Not Found")] {
        let server = serve(Reply::Status(code, text));
        let (_top, root) = fresh_root();
        let err = ensure_cifar10(&root, &opts(&server.url, CIFAR10_MD5)).unwrap_err();
        match &err {
            DataError::HttpStatus {
                url,
                status,
                status_text,
            } => {
                assert_eq!(*url, server.url);
                assert_eq!(*status, code);
                assert_eq!(status_text, text);
            }
            other => panic!("expected HttpStatus, got {other:?}"),
        }
        assert!(err.to_string().contains(&code.to_string()));
        assert!(
            listing(&root).is_empty(),
            "left behind: {:?}",
            listing(&root)
        );
    }
    // Nobody listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_top, root) = fresh_root();
    let url = format!("http://{closed}/x.tar.gz");
    assert!(matches!(
        ensure_cifar10(&root, &opts(&url, CIFAR10_MD5)),
        Err(DataError::Network { .. })
    ));
    assert!(listing(&root).is_empty());
}

#[test]
fn archives_missing_files_or_with_wrong_sizes_are_refused() {
    let missing = Arc::new(tar_gz(&dataset_entries(Some("test_batch.bin"), None)));
    let server = serve(Reply::Body(Arc::clone(&missing)));
    let (_top, root) = fresh_root();
    match ensure_cifar10(&root, &opts(&server.url, &md5_hex(&missing))) {
        Err(DataError::ArchiveMissingFiles { missing, .. }) => {
            assert_eq!(missing, [format!("{BATCHES_DIR}/test_batch.bin")]);
        }
        other => panic!("expected ArchiveMissingFiles, got {other:?}"),
    }
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );

    let short = Arc::new(tar_gz(&dataset_entries(None, Some("data_batch_2.bin"))));
    let server = serve(Reply::Body(Arc::clone(&short)));
    match ensure_cifar10(&root, &opts(&server.url, &md5_hex(&short))) {
        Err(DataError::ArchiveInvalidFile { source, .. }) => match *source {
            DataError::BadSize { actual, .. } => assert_eq!(actual, 9_999 * 3073),
            other => panic!("expected BadSize inside, got {other:?}"),
        },
        other => panic!("expected ArchiveInvalidFile, got {other:?}"),
    }
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );

    // Not an archive at all.
    let junk = Arc::new(b"<html>not found</html>".to_vec());
    let server = serve(Reply::Body(Arc::clone(&junk)));
    let err = ensure_cifar10(&root, &opts(&server.url, &md5_hex(&junk))).unwrap_err();
    assert!(matches!(err, DataError::CorruptArchive { .. }), "{err:?}");
    assert!(
        listing(&root).is_empty(),
        "left behind: {:?}",
        listing(&root)
    );
}

#[test]
fn file_urls_and_plain_paths_work_without_copying_the_archive() {
    let (archive, md5) = archive();
    let (top, _) = fresh_root();
    let file = top.path().join("mirror dir").join("cifar-10-binary.tar.gz");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, &**archive).unwrap();
    let encoded = file.to_str().unwrap().replace(' ', "%20");
    for url in [
        format!("file://{encoded}"),
        file.to_str().unwrap().to_string(),
    ] {
        let root = top.path().join(format!("root-{}", url.len()));
        let dir = ensure_cifar10(&root, &opts(&url, md5)).unwrap();
        assert_valid(&dir, &root);
        assert_eq!(listing(&root), [BATCHES_DIR]);
    }
    assert_no_escape(top.path());

    let root = top.path().join("root-missing");
    let gone = top.path().join("gone.tar.gz");
    assert!(matches!(
        ensure_cifar10(&root, &opts(gone.to_str().unwrap(), md5)),
        Err(DataError::MissingFile { .. })
    ));
    assert!(matches!(
        ensure_cifar10(&root, &opts("ftp://example.com/x.tar.gz", md5)),
        Err(DataError::InvalidUrl { .. })
    ));
    assert!(matches!(
        ensure_cifar10(&root, &opts("file://relative/x.tar.gz", md5)),
        Err(DataError::InvalidUrl { .. })
    ));
}

#[test]
fn environment_overrides_defaults_and_options_override_the_environment() {
    // The only test of this binary that touches these variables; every other test sets both
    // options explicitly, which win over the environment.
    assert_eq!(DownloadOptions::default().resolved_url(), CIFAR10_URL);
    assert_eq!(
        DownloadOptions::default().resolved_md5().unwrap(),
        CIFAR10_MD5
    );
    let (archive, md5) = archive();
    let server = serve(Reply::Body(Arc::clone(archive)));
    std::env::set_var("RESNEXT_CIFAR10_URL", &server.url);
    std::env::set_var("RESNEXT_CIFAR10_MD5", md5.to_uppercase());
    let quiet = DownloadOptions {
        quiet: true,
        ..DownloadOptions::default()
    };
    assert_eq!(quiet.resolved_url(), server.url);
    assert_eq!(quiet.resolved_md5().unwrap(), *md5);
    let explicit = opts("file:///x", "ffffffffffffffffffffffffffffffff");
    assert_eq!(explicit.resolved_url(), "file:///x");
    assert_eq!(
        explicit.resolved_md5().unwrap(),
        "ffffffffffffffffffffffffffffffff"
    );

    let (_top, root) = fresh_root();
    let result = ensure_cifar10(&root, &quiet);
    std::env::remove_var("RESNEXT_CIFAR10_URL");
    std::env::remove_var("RESNEXT_CIFAR10_MD5");
    assert_eq!(result.unwrap(), root.join(BATCHES_DIR));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

/// Limits for a test: `max_bytes`, and the deadline, minimum rate and rate window.
fn limits(max_bytes: u64, deadline_ms: u64, min_rate: u64, window_ms: u64) -> DownloadLimits {
    DownloadLimits {
        max_bytes,
        deadline: Duration::from_millis(deadline_ms),
        min_rate,
        rate_window: Duration::from_millis(window_ms),
    }
}

/// After a failed download into `root`: nothing is left there, the folder's lock is free, and
/// a second download into it succeeds.
fn assert_clean_and_free(root: &Path) {
    assert!(listing(root).is_empty(), "left behind: {:?}", listing(root));
    let folder = fs::File::open(root).unwrap();
    assert!(folder.try_lock().is_ok(), "the folder is still locked");
    drop(folder);
    let (archive, md5) = archive();
    let server = serve(Reply::Body(Arc::clone(archive)));
    let dir = ensure_cifar10(root, &opts(&server.url, md5)).unwrap();
    assert_valid(&dir, root);
}

const MIRROR_MD5: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn an_endless_body_stops_at_the_cap_and_leaves_nothing() {
    let server = serve(Reply::Endless);
    let (_top, root) = fresh_root();
    let cap = 3 << 20;
    let start = Instant::now();
    let err = ensure_cifar10_with(
        &root,
        &opts(&server.url, MIRROR_MD5),
        &limits(cap, 60_000, 0, 1000),
    )
    .unwrap_err();
    match &err {
        DataError::DownloadTooLarge { limit, found, .. } => {
            assert_eq!(*limit, cap);
            assert!(found.contains("goes on past"), "{found}");
        }
        other => panic!("expected DownloadTooLarge, got {other:?}"),
    }
    assert!(
        err.to_string().contains("DownloadLimits::max_bytes"),
        "{err}"
    );
    eprintln!("stopped after {:?}: {err}", start.elapsed());
    assert_clean_and_free(&root);
}

#[test]
fn a_content_length_above_the_bound_is_refused_before_the_body() {
    // A mirror announcing more than the cap.
    let server = serve(Reply::Silent(10 << 20));
    let (_top, root) = fresh_root();
    let l = limits(1 << 20, 60_000, 0, 1000);
    let err = ensure_cifar10_with(&root, &opts(&server.url, MIRROR_MD5), &l).unwrap_err();
    match &err {
        DataError::DownloadTooLarge { limit, found, .. } => {
            assert_eq!(*limit, 1 << 20);
            assert!(
                found.contains("10485760") && found.contains("Content-Length"),
                "{found}"
            );
        }
        other => panic!("expected DownloadTooLarge, got {other:?}"),
    }
    assert_clean_and_free(&root);

    // The official checksum at a mirror: the official size is the bound, whatever the cap.
    let server = serve(Reply::Silent(CIFAR10_BYTES + 1));
    let (_top, root) = fresh_root();
    let err = ensure_cifar10_with(
        &root,
        &opts(&server.url, CIFAR10_MD5),
        &DownloadLimits::default(),
    )
    .unwrap_err();
    match &err {
        DataError::DownloadTooLarge { limit, bound, .. } => {
            assert_eq!(*limit, CIFAR10_BYTES);
            assert!(bound.contains("official"), "{bound}");
        }
        other => panic!("expected DownloadTooLarge, got {other:?}"),
    }
    assert_clean_and_free(&root);

    // A re-encoded mirror with its own checksum may be larger than the official archive (the
    // workspace's copy is 173,795,192 bytes): not refused for its size (this one then sends
    // nothing and runs into its deadline).
    let server = serve(Reply::Silent(173_795_192));
    let (_top, root) = fresh_root();
    let l = limits(1 << 30, 500, 0, 1000);
    let err = ensure_cifar10_with(&root, &opts(&server.url, MIRROR_MD5), &l).unwrap_err();
    assert!(
        matches!(err, DataError::DownloadDeadline { received: 0, .. }),
        "{err:?}"
    );
    assert_clean_and_free(&root);
}

#[test]
fn a_body_longer_than_its_content_length_stops_at_that_length() {
    let (archive, md5) = archive();
    let server = serve(Reply::Overlong(Arc::clone(archive)));
    let (_top, root) = fresh_root();
    let dir = ensure_cifar10_with(
        &root,
        &opts(&server.url, md5),
        &limits(1 << 30, 60_000, 0, 1000),
    )
    .unwrap();
    assert_valid(&dir, &root);
    let kept = fs::read(root.join("cifar-10-binary.tar.gz")).unwrap();
    assert!(
        kept == **archive,
        "kept {} bytes, not the {} announced",
        kept.len(),
        archive.len()
    );
}

#[test]
fn a_slow_server_is_stopped_by_the_minimum_rate_within_a_second() {
    // One byte every 200 ms is 5 bytes/s, below 1000 bytes/s over a 500 ms window.
    let server = serve(Reply::Trickle(Duration::from_millis(200)));
    let (_top, root) = fresh_root();
    let start = Instant::now();
    let err = ensure_cifar10_with(
        &root,
        &opts(&server.url, MIRROR_MD5),
        &limits(1 << 30, 60_000, 1000, 500),
    )
    .unwrap_err();
    let took = start.elapsed();
    match &err {
        DataError::DownloadTooSlow {
            received,
            window,
            min_rate,
            ..
        } => {
            assert!(*received <= 5, "{received} bytes");
            assert!(*window >= Duration::from_millis(500), "{window:?}");
            assert_eq!(*min_rate, 1000);
        }
        other => panic!("expected DownloadTooSlow, got {other:?}"),
    }
    assert!(
        err.to_string().contains("DownloadLimits::min_rate"),
        "{err}"
    );
    assert!(took < HANG, "stopped after {took:?}");
    assert_clean_and_free(&root);

    // A server that sends nothing at all: the read waits one window.
    let server = serve(Reply::Silent(1000));
    let (_top, root) = fresh_root();
    let start = Instant::now();
    let err = ensure_cifar10_with(
        &root,
        &opts(&server.url, MIRROR_MD5),
        &limits(1 << 30, 60_000, 1000, 500),
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::DownloadTooSlow { received: 0, .. }),
        "{err:?}"
    );
    assert!(start.elapsed() < HANG, "{:?}", start.elapsed());
    assert_clean_and_free(&root);
}

#[test]
fn a_download_past_its_deadline_is_stopped_there() {
    // No minimum rate: only the deadline stops a trickle, checked as bytes arrive...
    let server = serve(Reply::Trickle(Duration::from_millis(200)));
    let (_top, root) = fresh_root();
    let start = Instant::now();
    let err = ensure_cifar10_with(
        &root,
        &opts(&server.url, MIRROR_MD5),
        &limits(1 << 30, 1000, 0, 1000),
    )
    .unwrap_err();
    let took = start.elapsed();
    match &err {
        DataError::DownloadDeadline {
            deadline, received, ..
        } => {
            assert_eq!(*deadline, Duration::from_secs(1));
            assert!((1..=6).contains(received), "{received} bytes");
        }
        other => panic!("expected DownloadDeadline, got {other:?}"),
    }
    assert!(
        err.to_string().contains("DownloadLimits::deadline"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(950) && took < HANG,
        "stopped after {took:?}"
    );
    assert_clean_and_free(&root);

    // ...and while a read waits on a silent server.
    let server = serve(Reply::Silent(1000));
    let (_top, root) = fresh_root();
    let start = Instant::now();
    let err = ensure_cifar10_with(
        &root,
        &opts(&server.url, MIRROR_MD5),
        &limits(1 << 30, 800, 0, 1000),
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::DownloadDeadline { received: 0, .. }),
        "{err:?}"
    );
    assert!(start.elapsed() < HANG, "{:?}", start.elapsed());
    assert_clean_and_free(&root);

    // Limits that can never be met are refused before any request.
    for l in [
        limits(0, 1000, 0, 1000),
        limits(1, 0, 0, 1000),
        limits(1, 1000, 1, 0),
    ] {
        let err = ensure_cifar10_with(&root.join("x"), &opts(&server.url, MIRROR_MD5), &l);
        assert!(
            matches!(err, Err(DataError::InvalidConfig { .. })),
            "{l:?}: {err:?}"
        );
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_data_folder_this_process_holds_as_its_run_directory_is_an_error_not_a_wait() {
    let (archive, md5) = archive();
    let server = serve(Reply::Body(Arc::clone(archive)));
    let (_top, root) = fresh_root();
    let held = resnext::io::lock_dir(&root).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, sum, folder) = (server.url.clone(), md5.clone(), root.clone());
    thread::spawn(move || tx.send(ensure_cifar10(&folder, &opts(&url, &sum))));
    let err = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("still waiting for a lock this very process holds")
        .unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("run directory"),
        "{err}"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
    drop(held);
    let dir = ensure_cifar10(&root, &opts(&server.url, md5)).unwrap();
    assert_valid(&dir, &root);
}
