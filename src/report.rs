//! One-line error reports for command-line tools.

/// `err` and its chain of causes ([`std::error::Error::source`]) joined with `": "`, leaving
/// out a cause whose text the report already holds: this crate's errors (and `anyhow`'s
/// context) name their cause in their own message and also return it as their source, so
/// anyhow's `{:#}` would print it twice.
///
/// ```
/// use std::path::PathBuf;
/// let os = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
/// let err = resnext::io::IoError::Io { action: "writing", path: PathBuf::from("runs/a"), source: os };
/// assert_eq!(resnext::error_report(&err), "writing runs/a: permission denied");
/// let wrapped = anyhow::Error::new(err).context("saving the checkpoint");
/// assert_eq!(
///     resnext::error_report(wrapped.as_ref()),
///     "saving the checkpoint: writing runs/a: permission denied"
/// );
/// ```
pub fn error_report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
