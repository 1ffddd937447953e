//! [`ImageFolder`]: a [`Dataset`] of JPEG/PNG files in class folders, decoded and augmented
//! on worker threads.
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use image::RgbImage;
use rand::Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::augmentation::UNIT_AFFINE;
use super::decode::{decode_rgb8, MAX_PIXELS};
use super::folder::FolderIndex;
use super::transform::{prepare_with_crop, Draw, Recipe};
use super::{
    augmentation_rng, crop_flip_params, image_draws, BatchRequest, DataError, DataSplits, Dataset,
    ImageDraws,
};

/// How an [`ImageFolder`] reads and prepares its pictures.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolderOptions {
    /// The transforms (and the side of the images made).
    pub recipe: Recipe,
    /// Threads that decode and augment the pictures of a batch; 0 for one per core.
    pub workers: usize,
    /// Keep every decoded picture in memory after its first use (for datasets that fit: a
    /// 32x32 picture takes 3 KiB, a 500x375 one 550 KiB).
    pub cache: bool,
    /// Pictures whose header claims more pixels are refused ([`MAX_PIXELS`] by default).
    pub max_pixels: u64,
    /// Decode every file once when the folder is opened and leave out those that fail, listed
    /// in [`ImageFolder::bad_images`]; otherwise the first bad file met during training is an
    /// error naming it.
    pub skip_bad_images: bool,
}

impl ImageFolderOptions {
    /// Options for `recipe`: a worker per core, no cache, Pillow's pixel limit, bad images are
    /// errors.
    pub fn new(recipe: Recipe) -> Self {
        ImageFolderOptions {
            recipe,
            workers: 0,
            cache: false,
            max_pixels: MAX_PIXELS,
            skip_bad_images: false,
        }
    }
}

/// Which images of a folder dataset [`ImageFolder::open_splits`] uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderSplit {
    /// For a folder without `train/` and `val/`: the fraction of each class held out for
    /// validation.
    pub val_fraction: Option<f64>,
    /// Seed of the held-out draw and of the subsets.
    pub seed: u64,
    /// Use a stratified subset of this many training images.
    pub limit_train: Option<usize>,
    /// Use a stratified subset of this many validation images.
    pub limit_test: Option<usize>,
}

/// A labelled set of image files, as torchvision's `ImageFolder` (see [`FolderIndex`]), that
/// makes its batches on a pool of worker threads: batch `k` of an epoch is a pure function
/// of the seed, the epoch and `k` (the [`Recipe::Small`] draws are those of the CIFAR-10
/// pipeline; each [`Recipe::ImageNet`] picture has its own generator seeded from them), so
/// runs on it resume exactly.
pub struct ImageFolder {
    index: FolderIndex,
    options: ImageFolderOptions,
    pool: rayon::ThreadPool,
    cache: Vec<OnceLock<Arc<RgbImage>>>,
    bad: Vec<(PathBuf, String)>,
}

impl std::fmt::Debug for ImageFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFolder")
            .field("root", &self.index.root)
            .field("images", &self.index.samples.len())
            .field("classes", &self.index.classes.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ImageFolder {
    /// Scans `root` (see [`FolderIndex::scan`]) and opens it.
    ///
    /// # Errors
    /// As [`FolderIndex::scan`] and [`ImageFolder::from_index`].
    pub fn open(root: &Path, options: ImageFolderOptions) -> Result<Self, DataError> {
        Self::from_index(FolderIndex::scan(root)?, options)
    }

    /// The images of `index`. With `options.skip_bad_images`, every file is decoded here once
    /// (on the workers) and those that fail are left out.
    ///
    /// # Errors
    /// [`DataError::Worker`] when the threads cannot start, [`DataError::InvalidConfig`] for a
    /// recipe of size 0, [`DataError::EmptyFolder`] when no image is left.
    pub fn from_index(index: FolderIndex, options: ImageFolderOptions) -> Result<Self, DataError> {
        if options.recipe.size() == 0 {
            return Err(DataError::InvalidConfig {
                field: "recipe size",
                value: "0".into(),
                expected: "at least 1 pixel".into(),
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.workers)
            .thread_name(|i| format!("resnext-decode-{i}"))
            .build()
            .map_err(|e| DataError::Worker {
                message: format!("cannot start the image decoding threads: {e}"),
            })?;
        let mut folder = ImageFolder {
            cache: Vec::new(),
            index,
            options,
            pool,
            bad: Vec::new(),
        };
        if folder.options.skip_bad_images {
            folder.leave_out_bad_images()?;
        }
        if folder.options.cache {
            folder.cache = (0..folder.index.samples.len())
                .map(|_| OnceLock::new())
                .collect();
        }
        Ok(folder)
    }

    /// Decodes every file and drops those that fail.
    fn leave_out_bad_images(&mut self) -> Result<(), DataError> {
        let max_pixels = self.options.max_pixels;
        let failures: Vec<Option<String>> = self.pool.install(|| {
            self.index
                .samples
                .par_iter()
                .map(|(path, _)| decode_rgb8(path, max_pixels).err().map(|e| one_line(&e)))
                .collect()
        });
        let mut kept = Vec::with_capacity(self.index.samples.len());
        for (sample, failure) in self.index.samples.drain(..).zip(failures) {
            match failure {
                Some(reason) => self.bad.push((sample.0, reason)),
                None => kept.push(sample),
            }
        }
        self.index.samples = kept;
        if self.index.samples.is_empty() {
            return Err(DataError::EmptyFolder {
                path: self.index.root.clone(),
                expected: "at least one image that decodes",
            });
        }
        Ok(())
    }

    /// The training and validation sets of `dir`: its `train/` and `val/` folders, which must
    /// have the same classes, or, when it has no `train/` and `split.val_fraction` is set,
    /// a seeded stratified split of `dir` itself; then each cut to a stratified subset of
    /// `split.limit_train` / `split.limit_test` images when set. Both are prepared with
    /// `options` (the training set is augmented when its batches ask for it).
    ///
    /// # Errors
    /// As [`ImageFolder::open`]; [`DataError::ClassMismatch`] when the two folders have other
    /// classes; [`DataError::MissingSplit`] when `dir` has no `train/` and no fraction is set.
    pub fn open_splits(
        dir: &Path,
        options: &ImageFolderOptions,
        split: &FolderSplit,
    ) -> Result<(ImageFolder, ImageFolder), DataError> {
        let train_dir = dir.join("train");
        let (train, val) = match split.val_fraction {
            _ if train_dir.is_dir() => {
                let train = FolderIndex::scan(&train_dir)?;
                let val = FolderIndex::scan(&dir.join("val"))?;
                check_same_classes(&train, &val)?;
                (train, val)
            }
            Some(fraction) => FolderIndex::scan(dir)?.split(fraction, split.seed)?,
            None => {
                // A folder that cannot be read says so first.
                FolderIndex::scan(dir)?;
                return Err(DataError::MissingSplit {
                    path: dir.to_path_buf(),
                });
            }
        };
        let cut = |index: FolderIndex, limit: Option<usize>| match limit {
            Some(n) => index.stratified_subset(n, split.seed),
            None => index,
        };
        Ok((
            Self::from_index(cut(train, split.limit_train), options.clone())?,
            Self::from_index(cut(val, split.limit_test), options.clone())?,
        ))
    }

    /// [`ImageFolder::open_splits`] of `dir` with its `train/` and `val/` folders, whole, as
    /// the trainer takes them.
    ///
    /// # Errors
    /// As [`ImageFolder::open_splits`].
    pub fn splits(dir: &Path, options: &ImageFolderOptions) -> Result<DataSplits, DataError> {
        let (train, val) = Self::open_splits(dir, options, &FolderSplit::default())?;
        Ok(DataSplits::new(train, val))
    }

    /// The files and labels.
    pub fn index(&self) -> &FolderIndex {
        &self.index
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ImageFolderOptions {
        &self.options
    }

    /// Files left out by `skip_bad_images`, with the reason.
    pub fn bad_images(&self) -> &[(PathBuf, String)] {
        &self.bad
    }

    /// The decoded picture of sample `i` (from the cache when there is one).
    fn picture(&self, i: usize) -> Result<Arc<RgbImage>, DataError> {
        let path = &self.index.samples[i].0;
        let decode = || decode_rgb8(path, self.options.max_pixels).map(Arc::new);
        match self.cache.get(i) {
            None => decode(),
            Some(slot) => {
                if let Some(picture) = slot.get() {
                    return Ok(Arc::clone(picture));
                }
                let picture = decode()?;
                Ok(Arc::clone(slot.get_or_init(|| picture)))
            }
        }
    }

    /// The random choice of every image of the batch `request` asks for.
    ///
    /// Errors: crop settings the recipe cannot honour (see [`Recipe::check_crop`]).
    fn draws(&self, request: &BatchRequest<'_>) -> Result<Vec<Draw>, DataError> {
        let n = request.indices.len();
        let cfg = request.config;
        if !cfg.augment {
            return Ok(vec![Draw::None; n]);
        }
        let crop = &cfg.augmentation.crop_flip;
        self.options.recipe.check_crop(crop)?;
        let stream = request.augmentation_stream();
        Ok(match self.options.recipe {
            Recipe::Small { .. } => {
                crop_flip_params(crop, cfg.seed, request.epoch, stream, request.indices)
                    .into_iter()
                    .map(Draw::Small)
                    .collect()
            }
            Recipe::ImageNet { .. } => {
                let mut rng = augmentation_rng(cfg.seed, request.epoch, stream);
                (0..n).map(|_| Draw::Seed(rng.gen())).collect()
            }
        })
    }
}

impl ImageFolder {
    /// The draws of the stages after crop and flip for every image of `request` (each a
    /// no-op when the configuration has none).
    fn stage_draws(
        &self,
        request: &BatchRequest<'_>,
        side: usize,
    ) -> Result<Vec<ImageDraws>, DataError> {
        let cfg = request.config;
        let n = request.indices.len();
        if !cfg.augmentation.has_image_stages() {
            return Ok(vec![ImageDraws::default(); n]);
        }
        let stream = request.augmentation_stream();
        image_draws(&cfg.augmentation, cfg.seed, request.epoch, stream, n, side)
    }
}

/// `e`'s message on one line (decoders end theirs with blank lines).
fn one_line(e: &DataError) -> String {
    let text = e.to_string();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Refuses a validation folder whose classes differ from the training folder's.
fn check_same_classes(train: &FolderIndex, val: &FolderIndex) -> Result<(), DataError> {
    if train.classes == val.classes {
        return Ok(());
    }
    let only = |a: &FolderIndex, b: &FolderIndex| -> Vec<String> {
        a.classes
            .iter()
            .filter(|c| !b.classes.contains(c))
            .take(5)
            .cloned()
            .collect()
    };
    let (t, v) = (only(train, val), only(val, train));
    let mut difference = Vec::new();
    if !t.is_empty() {
        difference.push(format!("only in the training folder: {}", t.join(", ")));
    }
    if !v.is_empty() {
        difference.push(format!("only in the validation folder: {}", v.join(", ")));
    }
    Err(DataError::ClassMismatch {
        train: train.root.clone(),
        val: val.root.clone(),
        difference: difference.join("; "),
    })
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.index.samples.len()
    }

    fn classes(&self) -> &[String] {
        &self.index.classes
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError> {
        let recipe = self.options.recipe;
        let side = recipe.size() as usize;
        let plane = 3 * side * side;
        let n = request.indices.len();
        let affine = request.config.normalization.affine();
        let draws = self.draws(request)?;
        let crop = request.config.augmentation.crop_flip;
        let stages = self.stage_draws(request, side)?;
        let dims = [n as i64, 3, side as i64, side as i64];
        let images = Tensor::f_empty(dims, (Kind::Float, Device::Cpu))?;
        if n == 0 {
            return Ok((images, Tensor::f_empty([0], (Kind::Int64, Device::Cpu))?));
        }
        // The pictures are written straight into the batch tensor (no copy of the batch).
        // SAFETY: `images` is a new, contiguous CPU f32 tensor of `n * plane` elements (n > 0,
        // so its data pointer is valid) that nothing else references; the slice is dropped
        // before the tensor is returned.
        let out =
            unsafe { std::slice::from_raw_parts_mut(images.data_ptr() as *mut f32, n * plane) };
        self.pool.install(|| {
            out.par_chunks_mut(plane)
                .zip(request.indices.par_iter().zip(&draws).zip(&stages))
                .try_for_each(|(chunk, ((&i, &draw), stage))| {
                    let picture = self.picture(i)?;
                    let pixels = stage.needs_pixels();
                    let first = if pixels { &UNIT_AFFINE } else { &affine };
                    prepare_with_crop(&picture, recipe, draw, &crop, first, chunk)?;
                    stage.finish(chunk, side, &affine)
                })
        })?;
        let labels: Vec<i64> = request
            .indices
            .iter()
            .map(|&i| self.index.samples[i].1 as i64)
            .collect();
        Ok((images, Tensor::from_slice(&labels)))
    }
}
