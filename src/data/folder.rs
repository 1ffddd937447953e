//! The files of an image folder (`root/<class>/<image>`, as torchvision's `ImageFolder`):
//! scanning, and seeded stratified subsets and splits. No image is decoded here.
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::DataError;

/// File extensions read as images, compared without case (torchvision's `ImageFolder` reads
/// more; these are the ones this crate decodes).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The labelled files of an image folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderIndex {
    /// The folder scanned.
    pub root: PathBuf,
    /// Class names (the sub-folder names), sorted: label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Every image file with its label, sorted by class, then by file name, as torchvision.
    pub samples: Vec<(PathBuf, usize)>,
    /// Files skipped: hidden ones (name starting with `.`) and other extensions.
    pub ignored: Ignored,
}

/// What a scan skipped (see [`FolderIndex::ignored`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Hidden files and folders (name starting with `.`).
    pub hidden: usize,
    /// Files with an extension other than [`IMAGE_EXTENSIONS`], and plain files directly in
    /// the root.
    pub other: usize,
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The sorted entries of `dir`.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let read = std::fs::read_dir(dir).map_err(|e| io_error("read the folder", dir, e))?;
    let mut paths = Vec::new();
    for entry in read {
        paths.push(
            entry
                .map_err(|e| io_error("read the folder", dir, e))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

impl FolderIndex {
    /// Scans `root`: every non-hidden sub-folder is a class, every `.jpg`/`.jpeg`/`.png` file
    /// (any case) directly inside it an image of that class. Hidden entries and other files are
    /// counted in [`ignored`](Self::ignored).
    ///
    /// # Errors
    /// [`DataError::Io`] for an unreadable folder, [`DataError::EmptyFolder`] when `root` has
    /// no class folder or a class folder has no image.
    pub fn scan(root: &Path) -> Result<FolderIndex, DataError> {
        let mut index = FolderIndex {
            root: root.to_path_buf(),
            classes: Vec::new(),
            samples: Vec::new(),
            ignored: Ignored::default(),
        };
        for class_dir in sorted_entries(root)? {
            if is_hidden(&class_dir) {
                index.ignored.hidden += 1;
            } else if class_dir.is_dir() {
                index.add_class(&class_dir)?;
            } else {
                index.ignored.other += 1;
            }
        }
        if index.classes.is_empty() {
            return Err(DataError::EmptyFolder {
                path: root.to_path_buf(),
                expected: "one sub-folder per class (root/<class>/<image>.jpg)",
            });
        }
        Ok(index)
    }

    fn add_class(&mut self, dir: &Path) -> Result<(), DataError> {
        let label = self.classes.len();
        let before = self.samples.len();
        for path in sorted_entries(dir)? {
            if is_hidden(&path) {
                self.ignored.hidden += 1;
            } else if path.is_file() && is_image(&path) {
                self.samples.push((path, label));
            } else {
                self.ignored.other += 1;
            }
        }
        if self.samples.len() == before {
            return Err(DataError::EmptyFolder {
                path: dir.to_path_buf(),
                expected: "at least one .jpg, .jpeg or .png image in every class folder",
            });
        }
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        self.classes.push(name.into_owned());
        Ok(())
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &(_, label) in &self.samples {
            counts[label] += 1;
        }
        counts
    }

    /// The same classes with the samples at `positions` (in that order).
    fn with_samples(&self, positions: impl IntoIterator<Item = usize>) -> FolderIndex {
        FolderIndex {
            root: self.root.clone(),
            classes: self.classes.clone(),
            samples: positions
                .into_iter()
                .map(|i| self.samples[i].clone())
                .collect(),
            ignored: self.ignored.clone(),
        }
    }

    /// A seeded, stratified split: from each class, `round(fraction * count)` images (at
    /// least one and at most all but one when the class has two or more) go to the second
    /// part, drawn with `seed`; the rest to the first. Both keep the folder order.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when `fraction` is not in `(0, 1)`.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(FolderIndex, FolderIndex), DataError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DataError::InvalidConfig {
                field: "split fraction",
                value: fraction.to_string(),
                expected: "a number between 0 and 1, exclusive".into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut second = vec![false; self.samples.len()];
        for members in self.members_by_class() {
            let n = members.len();
            let take = match n {
                0 | 1 => 0,
                _ => ((fraction * n as f64).round() as usize).clamp(1, n - 1),
            };
            for &i in members.choose_multiple(&mut rng, take) {
                second[i] = true;
            }
        }
        let first = (0..second.len()).filter(|&i| !second[i]);
        let other = (0..second.len()).filter(|&i| second[i]);
        Ok((self.with_samples(first), self.with_samples(other)))
    }

    /// A seeded subset of `n` images with the classes in proportion (largest remainders), in
    /// folder order; the whole index when `n` is not below its size.
    pub fn stratified_subset(&self, n: usize, seed: u64) -> FolderIndex {
        let total = self.samples.len();
        if n >= total {
            return self.clone();
        }
        let members = self.members_by_class();
        let exact: Vec<f64> = members
            .iter()
            .map(|m| m.len() as f64 * n as f64 / total as f64)
            .collect();
        let mut quota: Vec<usize> = exact.iter().map(|q| q.floor() as usize).collect();
        let mut by_remainder: Vec<usize> = (0..quota.len()).collect();
        by_remainder.sort_by(|&a, &b| {
            let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let missing = n - quota.iter().sum::<usize>();
        for &c in by_remainder.iter().take(missing) {
            quota[c] += 1;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut keep: Vec<usize> = Vec::with_capacity(n);
        for (m, &q) in members.iter().zip(&quota) {
            keep.extend(m.choose_multiple(&mut rng, q).copied());
        }
        keep.sort_unstable();
        self.with_samples(keep)
    }

    /// Positions of the samples of each class, in folder order.
    fn members_by_class(&self) -> Vec<Vec<usize>> {
        let mut members = vec![Vec::new(); self.classes.len()];
        for (i, &(_, label)) in self.samples.iter().enumerate() {
            members[label].push(i);
        }
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(classes: &[(&str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, n) in classes {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            for i in 0..*n {
                std::fs::write(dir.path().join(name).join(format!("{i:03}.JPG")), b"x").unwrap();
            }
        }
        dir
    }

    #[test]
    fn scan_sorts_classes_and_files_and_counts_what_it_skips() {
        let dir = folder(&[("zebra", 2), ("ant", 3)]);
        std::fs::write(dir.path().join("ant/.DS_Store"), b"x").unwrap();
        std::fs::write(dir.path().join("ant/notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("README"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".cache")).unwrap();
        let index = FolderIndex::scan(dir.path()).unwrap();
        assert_eq!(index.classes, ["ant", "zebra"]);
        assert_eq!(index.class_counts(), [3, 2]);
        assert_eq!(index.samples[0].0, dir.path().join("ant/000.JPG"));
        assert_eq!(index.samples[4], (dir.path().join("zebra/001.JPG"), 1));
        assert_eq!(
            index.ignored,
            Ignored {
                hidden: 2,
                other: 2
            }
        );
    }

    #[test]
    fn empty_class_and_empty_root_are_errors_naming_the_folder() {
        let dir = folder(&[("a", 1), ("b", 0)]);
        let err = FolderIndex::scan(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().join("b").display().to_string()),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = FolderIndex::scan(empty.path()).unwrap_err().to_string();
        assert!(err.contains("one sub-folder per class"), "{err}");
        let err = FolderIndex::scan(&empty.path().join("nope")).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }

    #[test]
    fn split_is_stratified_seeded_and_complete() {
        let index = FolderIndex::scan(folder(&[("a", 10), ("b", 20), ("c", 1)]).path()).unwrap();
        let (train, val) = index.split(0.2, 3).unwrap();
        assert_eq!(val.class_counts(), [2, 4, 0]);
        assert_eq!(train.class_counts(), [8, 16, 1]);
        let mut all: Vec<_> = train.samples.iter().chain(&val.samples).cloned().collect();
        all.sort();
        assert_eq!(all, index.samples);
        assert_eq!(index.split(0.2, 3).unwrap().1, val);
        assert_ne!(index.split(0.2, 4).unwrap().1, val);
        assert!(index.split(1.0, 3).is_err());
    }

    #[test]
    fn subsets_keep_class_proportions() {
        let index = FolderIndex::scan(folder(&[("a", 30), ("b", 10)]).path()).unwrap();
        let sub = index.stratified_subset(8, 1);
        assert_eq!(sub.class_counts(), [6, 2]);
        assert!(sub.samples.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(index.stratified_subset(100, 1), index);
    }
}
