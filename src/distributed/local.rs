//! [`LocalRendezvous`]: the private directory in which the ranks of a one-machine run meet (a
//! c10d `FileStore`), and the checks a rank makes on such a directory before trusting it.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::env::DistEnv;
use super::DistError;

/// The name of the store file inside a rendezvous directory.
const STORE_FILE: &str = "store";

/// A new private directory (mode 0700, under the system's temporary folder) for the rendezvous
/// of ranks on this machine, removed when dropped: what the `--nproc` launcher creates before it
/// starts the ranks, and hands them with [`LocalRendezvous::env`].
///
/// The ranks meet in a c10d `FileStore` in it, so the rendezvous has no network socket at all
/// (nothing to connect to, no port to choose), and only this user (and root) can read or write
/// it. Keep it alive until every rank has exited.
///
/// ```no_run
/// use resnext::distributed::LocalRendezvous;
/// # fn main() -> std::io::Result<()> {
/// let rendezvous = LocalRendezvous::new()?;
/// let mut ranks = Vec::new();
/// for rank in 0..2 {
///     let vars = rendezvous.env(rank, 2).vars();
///     ranks.push(std::process::Command::new("./train").envs(vars).spawn()?);
/// }
/// for mut rank in ranks {
///     rank.wait()?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LocalRendezvous {
    dir: tempfile::TempDir,
}

impl LocalRendezvous {
    /// Creates the directory, with mode 0700 from its creation on.
    ///
    /// # Errors
    /// When the temporary folder cannot hold a new directory.
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("resnext-rendezvous-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        Ok(LocalRendezvous { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The place of rank `rank` of `world_size` processes meeting here (set its
    /// [`DistEnv::vars`] in the rank's environment).
    pub fn env(&self, rank: usize, world_size: usize) -> DistEnv {
        DistEnv::local(rank, world_size, self.path())
    }
}

/// The store file of the rendezvous directory `dir`, once `dir` is checked to be a directory
/// of this user that no one else may read, write or enter (mode 0700 or narrower), so that no
/// other user can read the ranks' addresses or write keys of their own.
pub(crate) fn store_file(dir: &Path) -> Result<PathBuf, DistError> {
    let bad = |problem: String| DistError::RendezvousDir {
        dir: dir.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(dir).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !meta.is_dir() {
        return Err(bad("it is not a directory".into()));
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(bad(format!(
            "it belongs to user {}, not to this process's user {euid}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "its mode is {mode:04o}: other users may use it (it must be 0700)"
        )));
    }
    Ok(dir.join(STORE_FILE))
}
