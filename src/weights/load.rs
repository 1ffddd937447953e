//! The check-then-copy loader: a file's tensors compared by name, shape and element type with
//! a model's variables before any data is read, then only the tensors the model has read and
//! copied in ([`load_weights_with`]).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use tch::{nn, Kind, Tensor};

use super::{
    expected_shapes, FileFit, KindMismatch, ShapeMismatch, TensorSource, WeightsError,
    NUM_BATCHES_TRACKED,
};
use crate::resnext::ResNeXtConfig;

/// How [`load_weights_with`] treats a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse a file that holds tensors the model does not have, as PyTorch's
    /// `load_state_dict(strict=True)` does. Off by default: such tensors are only listed in
    /// [`LoadReport::unexpected`]. (Missing tensors are always an error.)
    pub strict: bool,
}

/// What [`load_weights`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Number of variables set from the file (every variable of the store).
    pub loaded: usize,
    /// Tensors stored in another floating-point kind than their variable (f16, bf16, f64 for an
    /// f32 model, …), with the kind in the file; they were converted to the variable's kind.
    pub converted: Vec<(String, Kind)>,
    /// Tensors of the file that match no variable of the model and were ignored (sorted).
    /// `num_batches_tracked` counters of the model's BN layers are not listed here.
    pub unexpected: Vec<String>,
    /// The largest BN `num_batches_tracked` counter in the file (PyTorch's count of training
    /// batches), `None` when the file has none. tch does not keep it, so it is only reported.
    pub num_batches_tracked: Option<i64>,
    /// The file's string metadata (`__metadata__`), empty when it has none.
    pub metadata: HashMap<String, String>,
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    )
}

/// Loads a safetensors `state_dict` into the variables of `vs`, with the default
/// [`LoadOptions`] (tensors the model does not have are reported, not refused). See
/// [`load_weights_with`].
///
/// # Errors
/// See [`load_weights_with`].
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<LoadReport, WeightsError> {
    load_weights_with(vs, path, LoadOptions::default())
}

/// Loads a safetensors `state_dict` (written by [`save_weights`](super::save_weights), or by
/// PyTorch with `safetensors.torch.save_file(model.state_dict(), path)`) into the variables of
/// `vs`.
///
/// Every variable of `vs` must be in the file under its name with its shape. Floating-point
/// tensors of another kind (f16, bf16, f64) are converted to the variable's kind, and moved to
/// its device. BN `num_batches_tracked` counters may be present or absent. The names, shapes
/// and kinds in the file's header are checked before any tensor data is read, and only the
/// tensors the model has are read; on error `vs` is unchanged. Then the values are copied in
/// under `no_grad`.
///
/// # Errors
/// * [`WeightsError::Io`] when the file cannot be read or is not a valid safetensors file;
/// * [`WeightsError::Incompatible`] listing every missing tensor, every shape mismatch (name
///   and both shapes), every tensor of an unconvertible kind and, with
///   [`LoadOptions::strict`], every tensor the model does not have;
/// * [`WeightsError::Torch`] if libtorch fails converting a tensor.
pub fn load_weights_with(
    vs: &mut nn::VarStore,
    path: &Path,
    options: LoadOptions,
) -> Result<LoadReport, WeightsError> {
    load_tensors(vs, TensorSource::safetensors(path)?, options)
}

/// What a model expects of each tensor: its shape and element kind.
type Expected = BTreeMap<String, (Vec<i64>, Kind)>;

fn expected_of(vars: &BTreeMap<String, Tensor>) -> Expected {
    (vars.iter())
        .map(|(n, t)| (n.clone(), (t.size(), t.kind())))
        .collect()
}

/// The one check-then-copy loader of the crate, used for weights files and for the model part
/// of training checkpoints: checks the tensors of `source` (by name, shape and kind, before any
/// data is read) against the variables of `vs` under the rules of [`load_weights_with`] and,
/// only if everything fits, reads the tensors the model has and copies them in.
pub(crate) fn load_tensors(
    vs: &mut nn::VarStore,
    mut source: TensorSource,
    options: LoadOptions,
) -> Result<LoadReport, WeightsError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let (found, mut report) = check_tensors(&expected_of(&vars), &source, options)?;
    report.num_batches_tracked = read_batch_counters(&mut source, &vars)?;
    let path = source.path().to_path_buf();
    // Read and convert everything first, so that a failure still leaves the model untouched.
    let torch_err = |name: &str| {
        let name = name.to_string();
        let path = path.clone();
        move |source| WeightsError::Torch { path, name, source }
    };
    let mut ready = Vec::with_capacity(found.len());
    for (name, index) in found {
        let var = &vars[&name];
        let src = source
            .read(index)?
            .f_to_kind(var.kind())
            .and_then(|s| s.f_to_device(var.device()))
            .map_err(torch_err(&name))?;
        ready.push((name, var, src));
    }
    tch::no_grad(|| -> Result<(), WeightsError> {
        for (name, var, src) in &ready {
            var.shallow_clone().f_copy_(src).map_err(torch_err(name))?;
        }
        Ok(())
    })?;
    report.loaded = ready.len();
    Ok(report)
}

/// The largest BN `num_batches_tracked` counter of the model's BN layers in `source` (each a
/// tensor of at most one element; larger ones are not read).
fn read_batch_counters(
    source: &mut TensorSource,
    vars: &BTreeMap<String, Tensor>,
) -> Result<Option<i64>, WeightsError> {
    let counters: Vec<usize> = (0..source.entries.len())
        .filter(|&i| {
            let e = &source.entries[i];
            e.numel() == 1
                && e.kind.is_some_and(|k| !is_float(k))
                && e.name
                    .strip_suffix(NUM_BATCHES_TRACKED)
                    .is_some_and(|bn| vars.contains_key(&format!("{bn}.running_mean")))
        })
        .collect();
    let mut largest = None;
    for i in counters {
        let t = source.read(i)?;
        if let Ok(n) = t.f_view([-1]).and_then(|v| v.f_int64_value(&[0])) {
            largest = largest.max(Some(n));
        }
    }
    Ok(largest)
}

/// The tensors of a file sorted against a model's variables by [`sort_tensors`].
#[derive(Default)]
struct Sorted {
    /// Loadable: in the model, with its shape and a compatible kind; with its entry's index.
    found: Vec<(String, usize)>,
    /// In the model with another shape.
    mismatched: Vec<ShapeMismatch>,
    /// In the model with a kind that does not convert (integer against float).
    wrong_kind: Vec<KindMismatch>,
}

/// Sorts the tensors of a file against `expected`; notes in `report` the tensors the model does
/// not have (BN batch counters aside) and the float kinds that will be converted. Entries of a
/// kind libtorch has none for count as found: reading them names the type.
fn sort_tensors(expected: &Expected, source: &TensorSource, report: &mut LoadReport) -> Sorted {
    let mut sorted = Sorted::default();
    for (index, entry) in source.entries.iter().enumerate() {
        let name = entry.name.clone();
        let Some((shape, kind)) = expected.get(&name) else {
            let counter_of_bn = name
                .strip_suffix(NUM_BATCHES_TRACKED)
                .is_some_and(|bn| expected.contains_key(&format!("{bn}.running_mean")));
            if !counter_of_bn {
                report.unexpected.push(name);
            }
            continue;
        };
        if &entry.shape != shape {
            let m = ShapeMismatch {
                name,
                in_file: entry.shape.clone(),
                in_model: shape.clone(),
            };
            sorted.mismatched.push(m);
            continue;
        }
        match entry.kind {
            Some(k) if k != *kind && !(is_float(k) && is_float(*kind)) => {
                let m = KindMismatch {
                    name,
                    in_file: k,
                    in_model: *kind,
                };
                sorted.wrong_kind.push(m);
                continue;
            }
            Some(k) if k != *kind => report.converted.push((name.clone(), k)),
            _ => {}
        }
        sorted.found.push((name, index));
    }
    report.unexpected.sort();
    sorted
}

/// Checks the tensors of `source` against `expected` and returns those to load (name and
/// entry) with the report so far, or [`WeightsError::Incompatible`] listing every problem.
fn check_tensors(
    expected: &Expected,
    source: &TensorSource,
    options: LoadOptions,
) -> Result<(Vec<(String, usize)>, LoadReport), WeightsError> {
    let mut report = LoadReport {
        metadata: source.metadata.clone(),
        ..LoadReport::default()
    };
    let Sorted {
        found,
        mismatched,
        wrong_kind,
    } = sort_tensors(expected, source, &mut report);
    let present: BTreeSet<&str> = (found.iter().map(|(n, _)| n.as_str()))
        .chain(mismatched.iter().map(|m| m.name.as_str()))
        .chain(wrong_kind.iter().map(|w| w.name.as_str()))
        .collect();
    let missing: Vec<String> = (expected.keys())
        .filter(|k| !present.contains(k.as_str()))
        .cloned()
        .collect();
    let refuse_unexpected = options.strict && !report.unexpected.is_empty();
    if missing.is_empty() && mismatched.is_empty() && wrong_kind.is_empty() && !refuse_unexpected {
        return Ok((found, report));
    }
    Err(WeightsError::Incompatible {
        path: source.path().to_path_buf(),
        missing,
        mismatched,
        wrong_kind: wrong_kind.into_boxed_slice(),
        unexpected: if options.strict {
            report.unexpected
        } else {
            Vec::new()
        },
        fit: FileFit::of(&source.shapes()),
    })
}

/// Checks the tensors of `source` against the variables `config` describes (names, shapes;
/// f32), without building the network, under the rules of [`load_weights_with`].
pub(crate) fn check_fits_config(
    config: &ResNeXtConfig,
    source: &TensorSource,
    options: LoadOptions,
) -> Result<(), WeightsError> {
    let expected: Expected = (expected_shapes(config).into_iter())
        .map(|(n, shape)| (n, (shape, Kind::Float)))
        .collect();
    check_tensors(&expected, source, options).map(drop)
}
