//! Data-parallel building blocks: the same start on every rank ([`broadcast_variables`]) and
//! gradients averaged over the ranks after every backward pass ([`GradientBuckets`]), as
//! PyTorch's `DistributedDataParallel` does, in flat buckets of about
//! [`DEFAULT_BUCKET_BYTES`] so that a model of hundreds of tensors costs a few collectives.
use tch::{nn, Device, Kind, TchError, Tensor};

use super::{DistError, ProcessGroup};

/// The default size of one flat buffer (bucket): 25 MiB, as PyTorch's DDP (`bucket_cap_mb`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Where one tensor lies in a bucket.
#[derive(Debug, Clone)]
struct Slot {
    /// Index of the tensor in the list the buckets were planned from.
    index: usize,
    /// First element in the bucket.
    offset: i64,
    /// Elements.
    numel: i64,
    /// The tensor's shape.
    shape: Vec<i64>,
}

/// One flat buffer's plan: tensors of one device and kind, one after another.
#[derive(Debug)]
struct Bucket {
    slots: Vec<Slot>,
    numel: i64,
    kind: Kind,
    device: Device,
}

impl Bucket {
    /// A buffer for this bucket, uninitialised.
    fn allocate(&self) -> Result<Tensor, TchError> {
        Tensor::f_empty([self.numel], (self.kind, self.device))
    }
}

/// `buffer`'s view of `slot`, shaped as its tensor (contiguous).
fn slot_view(buffer: &Tensor, slot: &Slot) -> Result<Tensor, TchError> {
    buffer
        .f_narrow(0, slot.offset, slot.numel)?
        .f_view(slot.shape.as_slice())
}

/// Splits `tensors` into buckets: grouped by device and kind (in order of first appearance),
/// each group in list order, a new bucket whenever the next tensor would take the current one
/// past `bucket_bytes` (a tensor larger than that gets a bucket of its own).
fn plan_buckets(tensors: &[(String, Tensor)], bucket_bytes: usize) -> Vec<Bucket> {
    let mut groups: Vec<((Device, Kind), Vec<usize>)> = Vec::new();
    for (i, (_, t)) in tensors.iter().enumerate() {
        let key = (t.device(), t.kind());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let mut buckets = Vec::new();
    for ((device, kind), members) in groups {
        let cap = (bucket_bytes / kind.elt_size_in_bytes().max(1)).max(1) as i64;
        let mut bucket = Bucket {
            slots: Vec::new(),
            numel: 0,
            kind,
            device,
        };
        for index in members {
            let t = &tensors[index].1;
            let numel = t.numel() as i64;
            if bucket.numel > 0 && bucket.numel + numel > cap {
                let slots = std::mem::take(&mut bucket.slots);
                let numel = std::mem::replace(&mut bucket.numel, 0);
                buckets.push(Bucket {
                    slots,
                    numel,
                    kind,
                    device,
                });
            }
            bucket.slots.push(Slot {
                index,
                offset: bucket.numel,
                numel,
                shape: t.size(),
            });
            bucket.numel += numel;
        }
        if !bucket.slots.is_empty() {
            buckets.push(bucket);
        }
    }
    buckets
}

/// A libtorch failure while packing or unpacking buckets, as a [`DistError`].
fn torch_error(pg: &ProcessGroup, op: &'static str, e: TchError) -> DistError {
    DistError::Failed {
        rank: pg.rank(),
        op,
        detail: e.to_string(),
    }
}

/// A 64-bit FNV-1a fingerprint of the names, shapes and kinds of `tensors`, the same on every
/// rank with the same model (whatever the values and memory layout).
fn fingerprint(tensors: &[(String, Tensor)]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, t) in tensors {
        eat(name.as_bytes());
        eat(&[0]);
        for d in t.size() {
            eat(&d.to_le_bytes());
        }
        eat(format!("{:?};", t.kind()).as_bytes());
    }
    h as i64
}

/// Checks that every rank has the same tensors (names, shapes, kinds) with one small
/// all-gather, so that a mismatch is an error naming the rank rather than collectives of
/// different sizes. A collective: every rank must call it.
fn check_same_on_all_ranks(
    pg: &ProcessGroup,
    tensors: &[(String, Tensor)],
    what: &str,
) -> Result<(), DistError> {
    let mine = Tensor::from_slice(&[fingerprint(tensors), tensors.len() as i64]);
    let all = pg.all_gather(&mine)?;
    for (r, t) in all.iter().enumerate() {
        if !t.equal(&mine) {
            return Err(DistError::InvalidArgument(format!(
                "rank {r}'s {what} differ from rank {}'s ({} tensors here): every rank must \
                 build the same model",
                pg.rank(),
                tensors.len()
            )));
        }
    }
    Ok(())
}

/// Sets every variable of `vs` (parameters and buffers such as batch-norm running statistics)
/// to rank `root`'s values, in place: the common start of data-parallel training. A
/// collective: every rank must call it, with the same model.
///
/// Variables go in sorted name order through flat buckets of [`DEFAULT_BUCKET_BYTES`] (one
/// per device and kind at least), under `tch::no_grad`; channels-last variables keep their
/// layout. The variables stay the same tensors, so optimisers holding them see the new values.
///
/// # Errors
/// [`DistError::InvalidArgument`] when `root` is not a rank or the ranks' models differ
/// (names, shapes, kinds), or the collective's error.
pub fn broadcast_variables(
    pg: &ProcessGroup,
    vs: &nn::VarStore,
    root: usize,
) -> Result<(), DistError> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    broadcast_tensors(pg, &vars, root, DEFAULT_BUCKET_BYTES)
}

/// Sets every tensor of `tensors` to rank `root`'s values, in place, through flat buckets of
/// about `bucket_bytes` (see [`broadcast_variables`], which calls it for a whole model). Every
/// rank must pass the same names, shapes and kinds, in the same order.
///
/// # Errors
/// As [`broadcast_variables`].
pub fn broadcast_tensors(
    pg: &ProcessGroup,
    tensors: &[(String, Tensor)],
    root: usize,
    bucket_bytes: usize,
) -> Result<(), DistError> {
    if root >= pg.world_size() {
        return Err(DistError::InvalidArgument(format!(
            "broadcast root {root} is not a rank (world size {})",
            pg.world_size()
        )));
    }
    check_same_on_all_ranks(pg, tensors, "variables")?;
    let op = "broadcast variables";
    let is_root = pg.rank() == root;
    tch::no_grad(|| {
        for bucket in plan_buckets(tensors, bucket_bytes) {
            let mut buffer = bucket.allocate().map_err(|e| torch_error(pg, op, e))?;
            if is_root {
                for slot in &bucket.slots {
                    slot_view(&buffer, slot)
                        .and_then(|mut v| v.f_copy_(&tensors[slot.index].1))
                        .map_err(|e| torch_error(pg, op, e))?;
                }
            }
            pg.broadcast(&mut buffer, root)?;
            if !is_root {
                for slot in &bucket.slots {
                    // copy_ writes through the variable's own strides (channels-last stays).
                    let mut var = tensors[slot.index].1.shallow_clone();
                    slot_view(&buffer, slot)
                        .and_then(|v| var.f_copy_(&v))
                        .map_err(|e| torch_error(pg, op, e))?;
                }
            }
        }
        Ok(())
    })
}

/// Averages the gradients of a model's trainable parameters over every rank of a group, as
/// PyTorch's `DistributedDataParallel`: built once from the parameters, it packs their
/// gradients into a few flat buffers (buckets) of about `bucket_bytes` per device and kind,
/// averages each bucket with one [`ProcessGroup::all_reduce_mean`], and copies the averages
/// back into the gradients.
///
/// Call [`GradientBuckets::average`] on every rank after backward and before the optimiser
/// step: in the trainer that is the gradient hook ([`crate::trainer::Trainer::on_gradients`],
/// [`crate::trainer::GradientHook`]), which receives exactly the list this is built from
/// ([`crate::trainer::Sgd::parameters`]). Averaging is linear, so it may run on scaled (fp16
/// loss scaling) or unscaled gradients alike; the trainer's hook sees them unscaled.
///
/// Every parameter must have a gradient on every step, as DDP requires without
/// `find_unused_parameters`: a parameter without one is an error (before any collective; the
/// other ranks then get an error from theirs), because a silent zero would change the update
/// of a parameter that one rank used and another did not. Gradients of any memory layout
/// (channels-last convolution weights) are handled and keep their layout.
///
/// ```no_run
/// use resnext::distributed::{broadcast_variables, GradientBuckets, ProcessGroup, DEFAULT_TIMEOUT};
/// use resnext::trainer::{Sgd, SgdConfig};
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::nn::ModuleT;
/// use tch::{nn, Device, Kind, Tensor};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = ProcessGroup::from_env(DEFAULT_TIMEOUT)?;
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// broadcast_variables(&pg, &vs, 0)?;
/// let mut sgd = Sgd::new(&vs, SgdConfig::default());
/// let mut buckets = GradientBuckets::new(sgd.parameters())?;
/// // This rank's share of the batch:
/// let images = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
/// let labels = Tensor::zeros([8], (Kind::Int64, Device::Cpu));
/// sgd.zero_grad();
/// net.forward_t(&images, true).cross_entropy_for_logits(&labels).backward();
/// buckets.average(&pg, sgd.parameters())?;
/// sgd.step(0.1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct GradientBuckets {
    /// The plan of each bucket.
    buckets: Vec<Bucket>,
    /// Each bucket's buffer, allocated on the first average.
    buffers: Vec<Tensor>,
    /// Names of the parameters, in the order given.
    names: Vec<String>,
    /// Whether the ranks' parameter lists have been compared (on the first average).
    checked: bool,
}

impl GradientBuckets {
    /// Buckets of [`DEFAULT_BUCKET_BYTES`] for `params` (see [`GradientBuckets::with_bucket_bytes`]).
    ///
    /// # Errors
    /// As [`GradientBuckets::with_bucket_bytes`].
    pub fn new(params: &[(String, Tensor)]) -> Result<Self, DistError> {
        Self::with_bucket_bytes(params, DEFAULT_BUCKET_BYTES)
    }

    /// Buckets of about `bucket_bytes` for the gradients of `params`, grouped by device and
    /// kind, in the order given (a parameter larger than `bucket_bytes` gets a bucket of its
    /// own). The buffers, as much memory again as the parameters, are allocated on the first
    /// [`GradientBuckets::average`].
    ///
    /// # Errors
    /// [`DistError::InvalidArgument`] when a name is listed twice.
    pub fn with_bucket_bytes(
        params: &[(String, Tensor)],
        bucket_bytes: usize,
    ) -> Result<Self, DistError> {
        let mut names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(DistError::InvalidArgument(format!(
                "parameter `{}` is listed twice",
                w[0]
            )));
        }
        Ok(GradientBuckets {
            buckets: plan_buckets(params, bucket_bytes),
            buffers: Vec::new(),
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            checked: false,
        })
    }

    /// The number of buckets: collectives per [`GradientBuckets::average`].
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Replaces the gradient of every parameter of `params` with its average over all ranks
    /// of `pg`, in place, under `tch::no_grad`. `params` must be the list the buckets were
    /// built from (same names, shapes, kinds, devices, order). A collective: every rank must
    /// call it on the same step. The first call also checks, with one small all-gather, that
    /// every rank has the same parameters.
    ///
    /// # Errors
    /// [`DistError::InvalidArgument`] when `params` is not the list the buckets were built
    /// from, a parameter has no gradient, or the ranks' parameters differ; otherwise the
    /// collective's error ([`DistError::PeerGone`], [`DistError::Timeout`], ...), after which
    /// the gradients are unspecified and the group unusable.
    pub fn average(
        &mut self,
        pg: &ProcessGroup,
        params: &[(String, Tensor)],
    ) -> Result<(), DistError> {
        let op = "average gradients";
        self.check_params(params)?;
        if !self.checked {
            check_same_on_all_ranks(pg, params, "parameters")?;
            self.checked = true;
        }
        if self.buffers.len() != self.buckets.len() {
            self.buffers = (self.buckets.iter().map(Bucket::allocate))
                .collect::<Result<_, _>>()
                .map_err(|e| torch_error(pg, op, e))?;
        }
        tch::no_grad(|| {
            for (bucket, buffer) in self.buckets.iter().zip(&mut self.buffers) {
                for slot in &bucket.slots {
                    let grad = params[slot.index].1.grad();
                    slot_view(buffer, slot)
                        .and_then(|mut v| v.f_copy_(&grad))
                        .map_err(|e| torch_error(pg, op, e))?;
                }
                pg.all_reduce_mean(buffer)?;
                for slot in &bucket.slots {
                    // copy_ writes through the gradient's own strides (channels-last stays).
                    let mut grad = params[slot.index].1.grad();
                    slot_view(buffer, slot)
                        .and_then(|v| grad.f_copy_(&v))
                        .map_err(|e| torch_error(pg, op, e))?;
                }
            }
            Ok(())
        })
    }

    /// Checks that `params` is the list the buckets were built from and that every parameter
    /// has a gradient of its shape.
    fn check_params(&self, params: &[(String, Tensor)]) -> Result<(), DistError> {
        if params.len() != self.names.len()
            || params.iter().zip(&self.names).any(|((n, _), m)| n != m)
        {
            return Err(DistError::InvalidArgument(format!(
                "average got {} parameters, not the {} the gradient buckets were built from \
                 (in the same order)",
                params.len(),
                self.names.len()
            )));
        }
        for bucket in &self.buckets {
            for slot in &bucket.slots {
                let (name, p) = &params[slot.index];
                let grad = p.grad();
                if !grad.defined() {
                    return Err(DistError::InvalidArgument(format!(
                        "parameter `{name}` has no gradient: every parameter must take part in \
                         the loss on every rank (data-parallel training averages all of them)"
                    )));
                }
                if grad.size() != slot.shape
                    || grad.kind() != bucket.kind
                    || grad.device() != bucket.device
                {
                    return Err(DistError::InvalidArgument(format!(
                        "the gradient of `{name}` is {:?} {:?} on {:?}; the buckets were built \
                         for {:?} {:?} on {:?}",
                        grad.size(),
                        grad.kind(),
                        grad.device(),
                        slot.shape,
                        bucket.kind,
                        bucket.device
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(sizes: &[(i64, Kind)]) -> Vec<(String, Tensor)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &(n, k))| (format!("t{i}"), Tensor::zeros([n], (k, Device::Cpu))))
            .collect()
    }

    #[test]
    fn buckets_split_by_size_and_kind() {
        // 4-byte floats: cap 100 bytes = 25 elements.
        let t = named(&[
            (10, Kind::Float),
            (10, Kind::Float),
            (3, Kind::Int64),
            (10, Kind::Float),
            (40, Kind::Float),
            (1, Kind::Float),
        ]);
        let b = plan_buckets(&t, 100);
        let layout: Vec<(Kind, Vec<usize>, i64)> = b
            .iter()
            .map(|b| (b.kind, b.slots.iter().map(|s| s.index).collect(), b.numel))
            .collect();
        assert_eq!(
            layout,
            vec![
                (Kind::Float, vec![0, 1], 20),
                (Kind::Float, vec![3], 10),
                (Kind::Float, vec![4], 40),
                (Kind::Float, vec![5], 1),
                (Kind::Int64, vec![2], 3),
            ]
        );
        assert_eq!(plan_buckets(&t, 1 << 20).len(), 2);
        assert!(plan_buckets(&[], 100).is_empty());
    }

    #[test]
    fn fingerprint_sees_names_shapes_kinds_not_values() {
        let a = named(&[(3, Kind::Float), (2, Kind::Float)]);
        let mut b = named(&[(3, Kind::Float), (2, Kind::Float)]);
        let _ = b[0].1.fill_(7.0);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&named(&[(3, Kind::Float)])));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&named(&[(3, Kind::Float), (2, Kind::Double)]))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&named(&[(3, Kind::Float), (4, Kind::Float)]))
        );
    }

    #[test]
    fn gradient_buckets_reject_duplicate_names() {
        let p = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let dup = vec![("w".to_string(), p.shallow_clone()), ("w".to_string(), p)];
        let err = GradientBuckets::new(&dup).unwrap_err();
        assert!(err.to_string().contains("`w` is listed twice"), "{err}");
    }

    #[test]
    fn average_on_one_rank_checks_its_parameters() {
        let pg = ProcessGroup::single(std::time::Duration::from_secs(10)).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::zeros([3], opts).set_requires_grad(true);
        let params = vec![("w".to_string(), w.shallow_clone())];
        let mut buckets = GradientBuckets::new(&params).unwrap();
        assert_eq!(buckets.num_buckets(), 1);
        let err = buckets.average(&pg, &params).unwrap_err();
        assert!(err.to_string().contains("`w` has no gradient"), "{err}");
        (&w * Tensor::from_slice(&[1f32, 2.0, 3.0]))
            .sum(Kind::Float)
            .backward();
        buckets.average(&pg, &params).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&w.grad()).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        let err = buckets.average(&pg, &[]).unwrap_err();
        assert!(matches!(err, DistError::InvalidArgument(_)), "{err:?}");
        let other = vec![("w".to_string(), Tensor::zeros([4], opts))];
        let err = buckets.average(&pg, &other).unwrap_err();
        assert!(matches!(err, DistError::InvalidArgument(_)), "{err:?}");
    }
}
