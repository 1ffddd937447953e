//! resnext::distributed on CPU with Gloo: two processes of this test binary (re-executed with
//! `RESNEXT_DIST_ROLE` naming what a child does) join a group as the `--nproc` launcher starts
//! them (a private rendezvous directory) and check every collective the shim calls; a rank that
//! leaves or stalls gives the other a typed error within a short timeout; the ranks listen on
//! 127.0.0.1 only, and a foreign process that connects to them (as another user when the tests
//! run as root) cannot change a sum; a TCP rendezvous on this machine's own address binds
//! there only; the environment parsing and the set-up errors (port in use, no store, a rank
//! missing, a rendezvous directory others may use, NCCL in a build without it) are checked in
//! this process.
//!
//! A plain `main` (harness = false): the scenarios run one after another (two processes each,
//! on a shared 2-core machine). `cargo test --test distributed -- NAME` runs those whose name
//! contains NAME.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use resnext::distributed::{
    broadcast_tensors, broadcast_variables, Backend, DistEnv, DistError, EnvError, GradientBuckets,
    ProcessGroup, Rendezvous, RENDEZVOUS_DIR_VAR,
};
use resnext::trainer::{Sgd, SgdConfig};
use resnext::{layout, ResNeXt, ResNeXtConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

#[path = "common/ranks.rs"]
mod ranks;
use ranks::{
    child_timeout, free_port, listening_sockets, spawn_places, spawn_ranks, spawn_ranks_with,
    wait_for_file, wait_for_listening, wait_within, Listening,
};

fn main() {
    let tests: &[(&str, fn())] = &[
        ("env_parsing", env_parsing),
        ("collectives_two_ranks", collectives_two_ranks),
        ("peer_exits_gives_typed_error", peer_exits_gives_typed_error),
        ("peer_stalls_gives_timeout", peer_stalls_gives_timeout),
        (
            "single_rank_group_and_nccl_unavailable",
            single_rank_group_and_nccl_unavailable,
        ),
        (
            "broadcast_variables_two_ranks",
            broadcast_variables_two_ranks,
        ),
        (
            "data_parallel_matches_single_process",
            data_parallel_matches_single_process,
        ),
        (
            "data_parallel_peer_dies_gives_typed_error",
            data_parallel_peer_dies_gives_typed_error,
        ),
        ("listens_on_loopback_only", listens_on_loopback_only),
        ("foreign_process_cannot_join", foreign_process_cannot_join),
        ("explicit_address_binds_there", explicit_address_binds_there),
        ("port_in_use", port_in_use),
        (
            "untrusted_rendezvous_dir_is_refused",
            untrusted_rendezvous_dir_is_refused,
        ),
        ("no_store_gives_connect_error", no_store_gives_connect_error),
        (
            "missing_rank_gives_join_timeout",
            missing_rank_gives_join_timeout,
        ),
    ];
    ranks::main("distributed", tests, child);
}

// ---------------------------------------------------------------------------------------------
// Helpers

type Res = Result<(), Box<dyn std::error::Error>>;

fn check(cond: bool, what: impl FnOnce() -> String) -> Res {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

// ---------------------------------------------------------------------------------------------
// Children

fn child(role: &str) -> Res {
    let timeout = child_timeout();
    match role {
        "collectives" => child_collectives(timeout),
        "exit_early" => child_exit_early(timeout),
        "stall" => child_stall(timeout),
        "broadcast_variables" => child_broadcast_variables(timeout),
        "ddp_peer_dies" => child_ddp_peer_dies(timeout),
        "hold" => child_hold(timeout),
        "guarded_sum" => child_guarded_sum(timeout),
        other => match other.split(':').collect::<Vec<_>>()[..] {
            // ddp_equivalence:<bucket bytes>:<cl|nchw>
            ["ddp_equivalence", bytes, layout] => {
                child_ddp_equivalence(timeout, bytes.parse()?, layout == "cl")
            }
            _ => Err(format!("unknown role {other}").into()),
        },
    }
}

fn child_collectives(timeout: Duration) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    let (rank, world) = (group.rank() as i64, group.world_size() as i64);
    check(world == 2, || format!("world size {world}"))?;
    let opts = (Kind::Float, Device::Cpu);

    // all_reduce_sum / all_reduce_mean on f32 of several sizes, up to a 16 MB flat buffer.
    for &n in &[1i64, 7, 1000, 4 << 20] {
        let base = Tensor::arange(n, opts).remainder(1000.0);
        let mut t = &base * (rank + 1) as f64;
        group.all_reduce_sum(&mut t)?;
        let expected = &base * 3.0; // 1 + 2
        check(max_abs_diff(&t, &expected) == 0.0, || {
            format!("sum of {n} floats is wrong")
        })?;
        let mut m = &base * (rank + 1) as f64;
        group.all_reduce_mean(&mut m)?;
        let expected = &base * 1.5;
        check(max_abs_diff(&m, &expected) < 1e-6, || {
            format!("mean of {n} floats is wrong")
        })?;
    }
    // Other kinds: f64, i64, i32.
    let mut d = Tensor::from_slice(&[0.5f64 + rank as f64, 1e-12]);
    group.all_reduce_sum(&mut d)?;
    check(
        max_abs_diff(&d, &Tensor::from_slice(&[2.0f64, 2e-12])) == 0.0,
        || format!("f64 sum {d}"),
    )?;
    let mut l = Tensor::from_slice(&[rank + (1i64 << 40), -3]);
    group.all_reduce_sum(&mut l)?;
    check(
        Vec::<i64>::try_from(&l)? == vec![1 + (2i64 << 40), -6],
        || format!("i64 sum {l}"),
    )?;
    let mut i = Tensor::from_slice(&[rank as i32 * 5]);
    group.all_reduce_sum(&mut i)?;
    check(i.int64_value(&[0]) == 5, || format!("i32 sum {i}"))?;
    // Integers cannot be averaged.
    let mut li = Tensor::from_slice(&[1i64]);
    check(
        matches!(
            group.all_reduce_mean(&mut li),
            Err(DistError::InvalidArgument(_))
        ),
        || "mean of i64 accepted".into(),
    )?;
    // A non-contiguous tensor (a transposed view) is reduced in place as well.
    let mut nc = (Tensor::arange(6, opts).view([2, 3]) * (rank + 1) as f64).tr();
    check(!nc.is_contiguous(), || "view is contiguous".into())?;
    group.all_reduce_sum(&mut nc)?;
    let expected = (Tensor::arange(6, opts).view([2, 3]) * 3.0).tr();
    check(max_abs_diff(&nc, &expected) == 0.0, || {
        format!("non-contiguous sum {nc}")
    })?;

    // broadcast from each root, several sizes.
    for root in 0..2i64 {
        for &n in &[1i64, 1000, 1 << 20] {
            let mut t = Tensor::full([n], (rank * 10 + 1) as f64, opts);
            group.broadcast(&mut t, root as usize)?;
            let expected = Tensor::full([n], (root * 10 + 1) as f64, opts);
            check(max_abs_diff(&t, &expected) == 0.0, || {
                format!("broadcast of {n} from {root}")
            })?;
        }
    }
    // A parameter-like 4-d tensor, i64 buffer.
    let mut w = Tensor::randn([16, 3, 3, 3], opts);
    group.broadcast(&mut w, 0)?;
    let mut sum = w.copy();
    group.all_reduce_sum(&mut sum)?;
    check(max_abs_diff(&sum, &(&w * 2.0)) == 0.0, || {
        "ranks differ after broadcast".into()
    })?;
    let mut steps = Tensor::from_slice(&[rank * 7 + 100]);
    group.broadcast(&mut steps, 1)?;
    check(steps.int64_value(&[0]) == 107, || {
        format!("i64 broadcast {steps}")
    })?;
    check(
        matches!(
            group.broadcast(&mut steps, 2),
            Err(DistError::InvalidArgument(_))
        ),
        || "root 2 accepted".into(),
    )?;

    // all_gather of small values: f32 metrics, an i64 hash, a 2-d tensor.
    let metrics = Tensor::from_slice(&[rank as f32 + 0.25, 100.0 * (rank + 1) as f32]);
    let all = group.all_gather(&metrics)?;
    check(all.len() == 2, || format!("{} gathered", all.len()))?;
    for (r, t) in all.iter().enumerate() {
        let expected = Tensor::from_slice(&[r as f32 + 0.25, 100.0 * (r + 1) as f32]);
        check(max_abs_diff(t, &expected) == 0.0, || {
            format!("gathered[{r}] = {t}")
        })?;
    }
    let hash = Tensor::from_slice(&[0x1234_5678_9abc_def0u64 as i64 + rank]);
    let hashes: Vec<i64> = group
        .all_gather(&hash)?
        .iter()
        .map(|t| t.int64_value(&[0]))
        .collect();
    check(
        hashes
            == vec![
                0x1234_5678_9abc_def0u64 as i64,
                0x1234_5678_9abc_def1u64 as i64,
            ],
        || format!("hashes {hashes:?}"),
    )?;
    let grid = Tensor::arange(6, opts).view([2, 3]).tr() + rank as f64; // non-contiguous input
    let grids = group.all_gather(&grid)?;
    for (r, t) in grids.iter().enumerate() {
        let expected = Tensor::arange(6, opts).view([2, 3]).tr() + r as f64;
        check(
            t.size() == vec![3, 2] && max_abs_diff(t, &expected) == 0.0,
            || format!("gathered grid[{r}] = {t}"),
        )?;
    }

    // barrier: rank 1 arrives late; rank 0 must wait for it.
    let start = Instant::now();
    if rank == 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    group.barrier()?;
    if rank == 0 {
        check(start.elapsed() >= Duration::from_millis(400), || {
            format!(
                "barrier returned after {:?}, before rank 1 arrived",
                start.elapsed()
            )
        })?;
    }
    group.barrier()?;
    Ok(())
}

/// Rank 1 leaves right after joining; rank 0's next collectives must fail with a typed error
/// within the timeout.
fn child_exit_early(timeout: Duration) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    group.barrier()?;
    if group.rank() == 1 {
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut t = Tensor::ones([1 << 16], (Kind::Float, Device::Cpu));
    let err = match group.all_reduce_sum(&mut t) {
        Ok(()) => return Err("all_reduce with a rank gone succeeded".into()),
        Err(e) => e,
    };
    let took = start.elapsed();
    eprintln!("rank 0 got, after {took:?}: {err}");
    check(took < timeout + Duration::from_secs(3), || {
        format!("error after {took:?}")
    })?;
    check(
        matches!(err, DistError::PeerGone { .. } | DistError::Timeout { .. }),
        || format!("not PeerGone/Timeout: {err:?}"),
    )?;
    // Later calls fail too, and quickly.
    let start = Instant::now();
    check(group.barrier().is_err(), || {
        "barrier after a failure succeeded".into()
    })?;
    check(start.elapsed() < timeout + Duration::from_secs(3), || {
        "second error slow".into()
    })?;
    Ok(())
}

/// Rank 1 stays alive but takes part in nothing; rank 0 must get a Timeout naming the timeout.
fn child_stall(timeout: Duration) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    group.barrier()?;
    if group.rank() == 1 {
        std::thread::sleep(timeout * 4);
        return Ok(());
    }
    let start = Instant::now();
    let mut t = Tensor::ones([1000], (Kind::Float, Device::Cpu));
    let err = match group.all_reduce_sum(&mut t) {
        Ok(()) => return Err("all_reduce with a stalled rank succeeded".into()),
        Err(e) => e,
    };
    let took = start.elapsed();
    eprintln!("rank 0 got, after {took:?}: {err}");
    check(
        took >= timeout.mul_f64(0.9) && took < timeout + Duration::from_secs(5),
        || format!("error after {took:?} with timeout {timeout:?}"),
    )?;
    match err {
        DistError::Timeout { timeout: t, .. } if t == timeout => Ok(()),
        other => Err(format!("not a Timeout of {timeout:?}: {other:?}").into()),
    }
}

/// A tiny ResNeXt with weights from `seed`, channels-last if asked.
fn tiny_model(seed: i64, channels_last: bool) -> Result<(nn::VarStore, ResNeXt), tch::TchError> {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    if channels_last {
        layout::vars_to_channels_last(&vs)?;
    }
    Ok((vs, net))
}

fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Whether every rank's `t` is bitwise rank `root`'s (gathered).
fn same_as_rank(group: &ProcessGroup, t: &Tensor, root: usize) -> Result<bool, DistError> {
    let all = group.all_gather(t)?;
    Ok(all.iter().all(|x| x.equal(&all[root])))
}

/// Rank 1's tiny model (other seed, channels-last, other BN statistics) becomes rank 0's with
/// `broadcast_variables`; then tensors from root 1 through small buckets.
fn child_broadcast_variables(timeout: Duration) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    let rank = group.rank();
    let (vs, _net) = tiny_model(10 + rank as i64, rank == 1)?;
    let vars = sorted_variables(&vs);
    tch::no_grad(|| {
        for (name, v) in &vars {
            if name.ends_with("running_mean") {
                let _ = v.shallow_clone().fill_(rank as f64 + 0.5);
            }
        }
    });
    let conv1 = vs.variables()["conv1.weight"].shallow_clone();
    check(!same_as_rank(&group, &conv1, 0)?, || {
        "models equal before the broadcast".into()
    })?;
    broadcast_variables(&group, &vs, 0)?;
    for (name, v) in &vars {
        check(same_as_rank(&group, v, 0)?, || {
            format!("{name} differs from rank 0's")
        })?;
    }
    check(vars.iter().any(|(n, _)| n.ends_with("running_var")), || {
        "no BN buffers among the variables".into()
    })?;
    check(layout::is_channels_last(&conv1) == (rank == 1), || {
        "layout of conv1.weight changed".into()
    })?;
    // Root 1, several buckets of 4 KiB.
    tch::no_grad(|| {
        for (_, v) in &vars {
            if v.is_floating_point() {
                let _ = v.shallow_clone().g_add_scalar_(rank as f64);
            }
        }
    });
    broadcast_tensors(&group, &vars, 1, 4096)?;
    for (name, v) in &vars {
        check(same_as_rank(&group, v, 1)?, || {
            format!("{name} differs from rank 1's")
        })?;
    }
    // A different model on one rank is an error, not a broadcast of mismatched buffers.
    let short = &vars[..vars.len() - rank];
    let err = match broadcast_tensors(&group, short, 0, 4096) {
        Ok(()) => return Err("mismatched models broadcast".into()),
        Err(e) => e,
    };
    check(matches!(err, DistError::InvalidArgument(_)), || {
        format!("mismatch gave {err:?}")
    })?;
    group.barrier()?;
    Ok(())
}

/// Mean cross-entropy of `net` on `(images, labels)`, in train mode.
fn train_loss(net: &ResNeXt, images: &Tensor, labels: &Tensor) -> Tensor {
    net.forward_t(images, true).cross_entropy_for_logits(labels)
}

const DDP_STEPS: usize = 3;
const DDP_HALF: i64 = 8;
const DDP_LR: f64 = 0.1;

/// Batch `step` of the equivalence test (the same on every rank), split into two halves.
fn ddp_batch(channels_last: bool) -> Result<[(Tensor, Tensor); 2], tch::TchError> {
    let images = Tensor::randn([2 * DDP_HALF, 3, 32, 32], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(10, [2 * DDP_HALF], (Kind::Int64, Device::Cpu));
    let half = |h: i64| -> Result<(Tensor, Tensor), tch::TchError> {
        let x = images.narrow(0, h * DDP_HALF, DDP_HALF);
        let x = if channels_last {
            layout::channels_last(&x)?
        } else {
            x.contiguous()
        };
        Ok((x, labels.narrow(0, h * DDP_HALF, DDP_HALF)))
    };
    Ok([half(0)?, half(1)?])
}

/// One reference step in this process: the gradients of both halves computed separately and
/// averaged, then the SGD update.
fn reference_step(net: &ResNeXt, sgd: &mut Sgd, halves: &[(Tensor, Tensor); 2]) {
    sgd.zero_grad();
    train_loss(net, &halves[0].0, &halves[0].1).backward();
    let g0: Vec<Tensor> = sgd
        .parameters()
        .iter()
        .map(|(_, p)| p.grad().copy())
        .collect();
    sgd.zero_grad();
    train_loss(net, &halves[1].0, &halves[1].1).backward();
    tch::no_grad(|| {
        for ((_, p), g0) in sgd.parameters().iter().zip(&g0) {
            let mut g = p.grad();
            let avg = (g0 + &g) / 2.0;
            g.copy_(&avg);
        }
    });
    sgd.step(DDP_LR);
}

/// K SGD steps where rank r trains on half r of each batch, gradients averaged with
/// `GradientBuckets`, against the same steps in one process with the two halves' gradients
/// averaged by hand; parameters compared (BN running statistics differ by design).
fn child_ddp_equivalence(timeout: Duration, bucket_bytes: usize, channels_last: bool) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    let rank = group.rank();
    let (vs, net) = tiny_model(20 + rank as i64, channels_last)?;
    broadcast_variables(&group, &vs, 0)?;
    let (mut ref_vs, ref_net) = tiny_model(99, channels_last)?;
    ref_vs.copy(&vs)?;
    let mut sgd = Sgd::new(&vs, SgdConfig::default());
    let mut ref_sgd = Sgd::new(&ref_vs, SgdConfig::default());
    let mut buckets = GradientBuckets::with_bucket_bytes(sgd.parameters(), bucket_bytes)?;
    let want_buckets = if bucket_bytes < (1 << 20) { 3 } else { 1 };
    check(buckets.num_buckets() >= want_buckets, || {
        format!("{} buckets of {bucket_bytes} bytes", buckets.num_buckets())
    })?;
    tch::manual_seed(7);
    for step in 0..DDP_STEPS {
        let halves = ddp_batch(channels_last)?;
        let (x, y) = &halves[rank];
        sgd.zero_grad();
        train_loss(&net, x, y).backward();
        let (name, p0) = &sgd.parameters()[0];
        let local = p0.grad().copy();
        buckets.average(&group, sgd.parameters())?;
        check(!local.equal(&p0.grad()), || {
            format!("step {step}: the gradient of {name} did not change when averaged")
        })?;
        if channels_last {
            let g = vs.variables()["conv1.weight"].grad();
            check(layout::is_channels_last(&g), || {
                "conv1.weight's gradient is not channels-last".into()
            })?;
        }
        sgd.step(DDP_LR);
        reference_step(&ref_net, &mut ref_sgd, &halves);
    }
    compare_with_reference(&group, &sgd, &ref_sgd)
}

/// Every parameter equal on both ranks (bitwise) and within 1e-5 (relative to the largest
/// value of the tensor, at least 1) of the reference.
fn compare_with_reference(group: &ProcessGroup, sgd: &Sgd, ref_sgd: &Sgd) -> Res {
    let mut worst = (0.0f64, String::new());
    for ((name, p), (ref_name, r)) in sgd.parameters().iter().zip(ref_sgd.parameters()) {
        check(name == ref_name, || format!("{name} vs {ref_name}"))?;
        check(same_as_rank(group, p, 0)?, || {
            format!("{name} differs between the ranks")
        })?;
        let diff = max_abs_diff(p, r);
        let scale = r.abs().max().double_value(&[]).max(1.0);
        check(diff <= 1e-5 * scale, || {
            format!("{name}: max abs diff {diff:e} from the reference (scale {scale})")
        })?;
        if diff >= worst.0 {
            worst = (diff, name.clone());
        }
    }
    if group.rank() == 0 {
        eprintln!(
            "  {} parameters match the single-process reference; max abs diff {:e} ({})",
            sgd.parameters().len(),
            worst.0,
            worst.1
        );
    }
    group.barrier()?;
    Ok(())
}

/// Rank 1 takes part in one averaged step, then exits before the second all-reduce; rank 0's
/// second `average` must fail with a typed error within the timeout.
fn child_ddp_peer_dies(timeout: Duration) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    let (vs, net) = tiny_model(5, false)?;
    broadcast_variables(&group, &vs, 0)?;
    let mut sgd = Sgd::new(&vs, SgdConfig::default());
    let mut buckets = GradientBuckets::with_bucket_bytes(sgd.parameters(), 64 << 10)?;
    for step in 0..2 {
        if step == 1 && group.rank() == 1 {
            std::process::exit(0);
        }
        let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
        sgd.zero_grad();
        train_loss(&net, &images, &labels).backward();
        let start = Instant::now();
        match buckets.average(&group, sgd.parameters()) {
            Ok(()) if step == 0 => sgd.step(DDP_LR),
            Ok(()) => return Err("average with a rank gone succeeded".into()),
            Err(e) if step == 0 => return Err(e.into()),
            Err(err) => {
                let took = start.elapsed();
                eprintln!("  rank 0 got, after {took:?}: {err}");
                check(took < timeout + Duration::from_secs(3), || {
                    format!("error after {took:?}")
                })?;
                check(
                    matches!(err, DistError::PeerGone { .. } | DistError::Timeout { .. }),
                    || format!("not PeerGone/Timeout: {err:?}"),
                )?;
            }
        }
    }
    Ok(())
}

/// The folder a test shares with its children (`SYNC_DIR`): `ready<rank>`, `go`, `outcome<rank>`.
fn sync_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(PathBuf::from(std::env::var("SYNC_DIR")?))
}

/// Joins, sums 1 + 1, says it is ready, and holds the group (its sockets open) until the test
/// says `go`.
fn child_hold(timeout: Duration) -> Res {
    let sync = sync_dir()?;
    let group = ProcessGroup::from_env(timeout)?;
    let mut t = Tensor::from_slice(&[1.0f32]);
    group.all_reduce_sum(&mut t)?;
    check(t.double_value(&[0]) == 2.0, || format!("1 + 1 = {t}"))?;
    std::fs::write(sync.join(format!("ready{}", group.rank())), "")?;
    check(
        wait_for_file(&sync.join("go"), Duration::from_secs(120)),
        || "no go from the test".into(),
    )?;
    group.barrier()?;
    Ok(())
}

/// The name of a `DistError`'s variant.
fn variant(e: &DistError) -> String {
    format!("{e:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or("")
        .to_string()
}

/// Sums 1 + 1 while a foreign process tries to join (rank 1 joins only once the test says
/// `go`). Writes `outcome<rank>`: `sum 2`, or `error <variant>: <message>`; fails only when
/// the sum is anything but 2 (or the error is not a `DistError`).
fn child_guarded_sum(timeout: Duration) -> Res {
    let sync = sync_dir()?;
    let rank: usize = std::env::var("RANK")?.parse()?;
    if rank == 1 {
        check(
            wait_for_file(&sync.join("go"), Duration::from_secs(120)),
            || "no go from the test".into(),
        )?;
    }
    let result = ProcessGroup::from_env(timeout).and_then(|group| {
        let mut t = Tensor::from_slice(&[1.0f32]);
        group.all_reduce_sum(&mut t).map(|()| t.double_value(&[0]))
    });
    let outcome = match &result {
        Ok(sum) => format!("sum {sum}"),
        Err(e) => format!("error {}: {e}", variant(e)),
    };
    eprintln!("  rank {rank}: {outcome}");
    std::fs::write(sync.join(format!("outcome{rank}")), &outcome)?;
    match result {
        Ok(sum) => check(sum == 2.0, || format!("1 + 1 = {sum}: the sum was changed")),
        Err(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Waits for `ready0` .. `ready<n-1>` in `sync` (the ranks hold their group), at most `limit`;
/// kills the ranks and fails past that.
fn wait_ready(ranks: &mut [Child], sync: &Path, limit: Duration) {
    for r in 0..ranks.len() {
        if !wait_for_file(&sync.join(format!("ready{r}")), limit) {
            for c in ranks.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            panic!("rank {r} did not join within {limit:?}");
        }
    }
}

/// Releases ranks that hold their group and checks that all exit with success.
fn release(ranks: &mut [Child], sync: &Path) {
    std::fs::write(sync.join("go"), "").unwrap();
    for (r, c) in ranks.iter_mut().enumerate() {
        let status = wait_within(c, Duration::from_secs(60), &format!("rank {r}"));
        assert!(status.success(), "rank {r} failed: {status}");
    }
}

fn pids(ranks: &[Child]) -> Vec<u32> {
    ranks.iter().map(Child::id).collect()
}

/// During a 2-rank run started as `--nproc` starts it, every TCP socket the ranks listen on is
/// on 127.0.0.1 (the rendezvous is a FileStore: no socket; Gloo binds the loopback), even with
/// `GLOO_SOCKET_IFNAME` naming another interface (it is for runs over several machines).
fn listens_on_loopback_only() {
    let sync = tempfile::tempdir().unwrap();
    let mut env = vec![("SYNC_DIR", sync.path().display().to_string())];
    match own_address() {
        Some((name, ip)) => {
            eprintln!("  GLOO_SOCKET_IFNAME={name} ({ip}) for the ranks");
            env.push(("GLOO_SOCKET_IFNAME", name));
        }
        None => eprintln!("  (no interface but the loopback: GLOO_SOCKET_IFNAME left unset)"),
    }
    let mut ranks = spawn_ranks_with("hold", 2, Duration::from_secs(60), &env);
    wait_ready(&mut ranks, sync.path(), Duration::from_secs(120));
    let seen = listening_sockets(&pids(&ranks));
    release(&mut ranks, sync.path());
    eprintln!("  the ranks listen on: {seen:?}");
    assert!(
        !seen.is_empty(),
        "no listening socket found: the test cannot see Gloo's"
    );
    for pid in pids(&ranks) {
        assert!(
            seen.iter().any(|l| l.pid == pid),
            "rank {pid} listens on nothing: {seen:?}"
        );
    }
    for l in &seen {
        assert_eq!(
            l.addr.ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "listening on {l:?}"
        );
    }
}

/// What a forked intruder did.
struct Intruder {
    pid: libc::pid_t,
    /// Whether it runs as another user (nobody) than the ranks.
    other_user: bool,
    /// errno of opening the rendezvous directory (0: it could).
    dir_errno: i32,
    /// Connections it made to the ranks' ports.
    connected: i32,
}

impl Drop for Intruder {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) on the child this test forked.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks an intruder: user nobody (65534) when this test runs as root, else this user. It opens
/// the rendezvous directory `dir`, then 8 connections to each of `ports` on 127.0.0.1, each
/// naming a sequence number 0..7 first as Gloo's peers do (to be handed a pair of a rank), and
/// holds them open. Returns once it has connected.
fn start_intruder(dir: &Path, ports: &[u16]) -> Intruder {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let addrs: Vec<libc::sockaddr_in> = ports
        .iter()
        .map(|&port| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        })
        .collect();
    // SAFETY: geteuid(2) has no preconditions. RESNEXT_TEST_INTRUDER_SAME_USER: as a run
    // without root would (to try that case as root).
    let other_user = unsafe { libc::geteuid() } == 0
        && std::env::var_os("RESNEXT_TEST_INTRUDER_SAME_USER").is_none();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) with a valid two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child calls only async-signal-safe functions on data prepared above, then
    // _exit(2)s; it never returns into the test.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: see above.
        unsafe { intruder_main(other_user, &dir, &addrs, fds[1]) }
    }
    let mut report = [0u8; 8];
    // SAFETY: close(2) of our copy of the write end; read(2) into a buffer of 8 bytes from the
    // read end, which the child writes once (or closes by exiting).
    let n = unsafe {
        libc::close(fds[1]);
        let n = libc::read(fds[0], report.as_mut_ptr().cast(), 8);
        libc::close(fds[0]);
        n
    };
    let intruder = Intruder {
        pid,
        other_user,
        dir_errno: i32::from_ne_bytes(report[..4].try_into().unwrap()),
        connected: i32::from_ne_bytes(report[4..].try_into().unwrap()),
    };
    assert_eq!(
        n, 8,
        "the intruder did not report (it could not become user nobody?)"
    );
    intruder
}

/// The forked intruder (see [`start_intruder`]).
///
/// # Safety
/// Only in the child of fork(2): it calls async-signal-safe functions only, and never returns.
unsafe fn intruder_main(
    other_user: bool,
    dir: &std::ffi::CStr,
    addrs: &[libc::sockaddr_in],
    report: libc::c_int,
) -> ! {
    if other_user
        && (libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0)
    {
        libc::_exit(2);
    }
    let fd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
    let dir_errno = if fd >= 0 {
        0
    } else {
        *libc::__errno_location()
    };
    let mut connected = 0i32;
    for addr in addrs {
        for seq in 0u64..8 {
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let sa = (addr as *const libc::sockaddr_in).cast::<libc::sockaddr>();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if s >= 0 && libc::connect(s, sa, len) == 0 {
                let bytes = seq.to_le_bytes();
                libc::write(s, bytes.as_ptr().cast(), bytes.len());
                connected += 1;
            }
        }
    }
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&dir_errno.to_ne_bytes());
    msg[4..].copy_from_slice(&connected.to_ne_bytes());
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::sleep(120);
    libc::_exit(0)
}

/// A foreign process tries to join a 2-rank run (started as `--nproc` starts it) while rank 0
/// waits for rank 1: as rank 1 through every port the ranks listen on (the review's attack on
/// the TCP store; there is no store socket now), and by naming Gloo's sequence numbers to take
/// rank 1's place in rank 0's pair. The ranks get 1 + 1 = 2 or a typed error, never another
/// sum, within a time bound; an intruder of another user is refused by name and cannot open
/// the rendezvous directory.
fn foreign_process_cannot_join() {
    let sync = tempfile::tempdir().unwrap();
    let env = [("SYNC_DIR", sync.path().display().to_string())];
    let start = Instant::now();
    let mut ranks = spawn_ranks_with("guarded_sum", 2, Duration::from_secs(20), &env);
    let rank0 = [ranks[0].id()];
    let found = wait_for_listening(&rank0, Duration::from_secs(120), |f| !f.is_empty());
    eprintln!("  rank 0 listens on {found:?} while it waits for rank 1");
    assert!(
        !found.is_empty(),
        "rank 0 listens on nothing: the test cannot attack it"
    );
    assert!(found.iter().all(|l| l.addr.ip().is_loopback()), "{found:?}");
    let ports: Vec<u16> = found.iter().map(|l: &Listening| l.addr.port()).collect();
    // Joining as rank 1 blocks until rank 0 answers (libtorch's TCP client waits for the
    // store's reply past its timeout), so each attempt runs on a thread of its own.
    let (tx, joins) = std::sync::mpsc::channel();
    for &port in &ports {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let joined = ProcessGroup::new(1, 2, "127.0.0.1", port, Duration::from_secs(2));
            let _ = tx.send((port, joined.map(|_| ())));
        });
    }
    let intruder = start_intruder(ranks.rendezvous.path(), &ports);
    eprintln!(
        "  intruder (another user: {}): {} connection(s), opening the rendezvous directory: \
         errno {}",
        intruder.other_user, intruder.connected, intruder.dir_errno
    );
    assert!(intruder.connected > 0, "the intruder could not connect");
    std::fs::write(sync.path().join("go"), "").unwrap();
    for (r, c) in ranks.iter_mut().enumerate() {
        let status = wait_within(c, Duration::from_secs(90), &format!("rank {r}"));
        assert!(
            status.success(),
            "rank {r}: {status} (the sum was changed?)"
        );
    }
    for _ in &ports {
        let (port, joined) = joins
            .recv_timeout(Duration::from_secs(60))
            .expect("joining as rank 1 still blocked a minute after the ranks exited");
        let err = joined.expect_err("joined the run as rank 1 through a rank's port");
        eprintln!("  joining as rank 1 at 127.0.0.1:{port}: {err}");
    }
    intruder_checks(&intruder, sync.path());
    eprintln!(
        "  both ranks done {:.1} s after the start",
        start.elapsed().as_secs_f64()
    );
}

/// Each rank's outcome is `sum 2` or a typed error; with an intruder of another user, rank 0
/// refused it by its user and the intruder could not open the rendezvous directory.
fn intruder_checks(intruder: &Intruder, sync: &Path) {
    let outcomes: Vec<String> = (0..2)
        .map(|r| std::fs::read_to_string(sync.join(format!("outcome{r}"))).unwrap())
        .collect();
    for (r, o) in outcomes.iter().enumerate() {
        assert!(o == "sum 2" || o.starts_with("error "), "rank {r}: {o}");
    }
    if intruder.other_user {
        assert_eq!(
            intruder.dir_errno,
            libc::EACCES,
            "another user opened the directory"
        );
        assert!(
            outcomes[0].starts_with("error ForeignPeer") && outcomes[0].contains("user 65534"),
            "rank 0 did not refuse the intruder: {}",
            outcomes[0]
        );
    } else {
        eprintln!("  (not root: the intruder runs as this user, whom no check can tell apart)");
    }
}

/// A non-loopback IPv4 address of this machine and its interface (one that is up), if any.
fn own_address() -> Option<(String, Ipv4Addr)> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) fills `list`, read while it lives and freed once below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is a node of the list getifaddrs returned: its name is a C string, and
        // an AF_INET address is a sockaddr_in.
        unsafe {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            let addr = ifa.ifa_addr;
            if up && !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                found = (!ip.is_loopback()).then(|| (name.into_owned(), ip));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// A multi-machine style group (a TCP rendezvous, rank 0 hosting the store) given this
/// machine's own address listens there only: the store on that address and port, Gloo on that
/// address, nothing on 0.0.0.0 or the loopback.
fn explicit_address_binds_there() {
    let Some((_, ip)) = own_address() else {
        eprintln!(
            "SKIPPED explicit_address_binds_there: this machine has no non-loopback IPv4 address"
        );
        return;
    };
    // A port free a moment ago (a race that can only fail this test, not a run).
    let port = TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let places: Vec<DistEnv> = (0..2)
        .map(|rank| DistEnv {
            rendezvous: Rendezvous::Tcp {
                addr: ip.to_string(),
                port,
            },
            ..DistEnv::local(rank, 2, Path::new("/unused"))
        })
        .collect();
    let sync = tempfile::tempdir().unwrap();
    let env = [("SYNC_DIR", sync.path().display().to_string())];
    let mut ranks = spawn_places("hold", &places, Duration::from_secs(60), &env);
    wait_ready(&mut ranks, sync.path(), Duration::from_secs(120));
    let seen = listening_sockets(&pids(&ranks));
    release(&mut ranks, sync.path());
    eprintln!("  MASTER_ADDR={ip}, MASTER_PORT={port}: the ranks listen on {seen:?}");
    let store = SocketAddr::new(IpAddr::V4(ip), port);
    assert!(
        seen.iter()
            .any(|l| l.pid == ranks[0].id() && l.addr == store),
        "rank 0 does not host the store on {store}: {seen:?}"
    );
    for pid in pids(&ranks) {
        assert!(
            seen.iter().any(|l| l.pid == pid && l.addr != store),
            "no Gloo socket of {pid}"
        );
    }
    for l in &seen {
        assert_eq!(l.addr.ip(), IpAddr::V4(ip), "listening on {l:?}");
    }
}

/// A rendezvous directory that is missing, or that other users may enter, is refused with
/// a typed error naming it, before anything is read from it.
fn untrusted_rendezvous_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cases = [
        (open.clone(), "its mode is 0755"),
        (tmp.path().join("missing"), "cannot read it"),
    ];
    for (dir, what) in cases {
        let env = DistEnv::local(0, 2, &dir);
        let err = ProcessGroup::from_dist_env(&env, Duration::from_secs(2)).unwrap_err();
        eprintln!("  {}: {err}", dir.display());
        assert!(
            matches!(&err, DistError::RendezvousDir { dir: d, .. } if *d == dir),
            "{err:?}"
        );
        assert!(err.to_string().contains(what), "{err}");
        assert!(err.to_string().contains(RENDEZVOUS_DIR_VAR), "{err}");
    }
    // The group of one process meets in a private directory of its own.
    let group = ProcessGroup::single(Duration::from_secs(10)).unwrap();
    let mut t = Tensor::from_slice(&[3.0f32]);
    group.all_reduce_sum(&mut t).unwrap();
    assert_eq!(t.double_value(&[0]), 3.0);
}

fn collectives_two_ranks() {
    let mut ranks = spawn_ranks("collectives", 2, Duration::from_secs(60));
    for (r, c) in ranks.iter_mut().enumerate() {
        let status = wait_within(c, Duration::from_secs(120), &format!("rank {r}"));
        assert!(status.success(), "rank {r} failed: {status}");
    }
}

fn peer_exits_gives_typed_error() {
    let timeout = Duration::from_secs(5);
    let mut ranks = spawn_ranks("exit_early", 2, timeout);
    for (r, c) in ranks.iter_mut().enumerate() {
        let status = wait_within(c, Duration::from_secs(60), &format!("rank {r}"));
        assert!(status.success(), "rank {r} failed: {status}");
    }
}

fn peer_stalls_gives_timeout() {
    let timeout = Duration::from_secs(3);
    let mut ranks = spawn_ranks("stall", 2, timeout);
    let status = wait_within(&mut ranks[0], Duration::from_secs(60), "rank 0");
    let _ = ranks[1].kill();
    let _ = ranks[1].wait();
    assert!(status.success(), "rank 0 failed: {status}");
}

/// Runs `role` on two ranks with `timeout`; both must succeed within `limit`.
fn run_two_ranks(role: &str, timeout: Duration, limit: Duration) {
    let mut ranks = spawn_ranks(role, 2, timeout);
    for (r, c) in ranks.iter_mut().enumerate() {
        let status = wait_within(c, limit, &format!("{role} rank {r}"));
        assert!(status.success(), "{role} rank {r} failed: {status}");
    }
}

fn broadcast_variables_two_ranks() {
    run_two_ranks(
        "broadcast_variables",
        Duration::from_secs(60),
        Duration::from_secs(120),
    );
}

fn data_parallel_matches_single_process() {
    // One bucket of 25 MiB with contiguous weights; buckets of 64 KiB with channels-last ones.
    for role in [
        format!("ddp_equivalence:{}:nchw", 25 << 20),
        format!("ddp_equivalence:{}:cl", 64 << 10),
    ] {
        eprintln!("  {role}");
        run_two_ranks(&role, Duration::from_secs(60), Duration::from_secs(300));
    }
}

fn data_parallel_peer_dies_gives_typed_error() {
    run_two_ranks(
        "ddp_peer_dies",
        Duration::from_secs(5),
        Duration::from_secs(120),
    );
}

fn single_rank_group_and_nccl_unavailable() {
    let group = ProcessGroup::new(0, 1, "127.0.0.1", free_port(), Duration::from_secs(10)).unwrap();
    assert_eq!((group.rank(), group.world_size()), (0, 1));
    let mut t = Tensor::from_slice(&[1.5f32, 2.5]);
    group.all_reduce_mean(&mut t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.5, 2.5]);
    group.broadcast(&mut t, 0).unwrap();
    assert_eq!(group.all_gather(&t).unwrap().len(), 1);
    group.barrier().unwrap();
    assert_eq!(Backend::for_device(Device::Cpu), Backend::Gloo);
    assert_eq!(Backend::for_device(Device::Cuda(0)), Backend::Nccl);
    let nccl = group.init_backend(Backend::Nccl);
    if cfg!(feature = "nccl") {
        if !tch::Cuda::is_available() {
            assert!(matches!(nccl, Err(DistError::NoCuda)), "{nccl:?}");
        }
    } else {
        let err = nccl.unwrap_err();
        assert!(matches!(err, DistError::NcclUnavailable), "{err:?}");
        assert!(err.to_string().contains("--features nccl"), "{err}");
    }
    group.init_backend(Backend::Gloo).unwrap();
}

fn port_in_use() {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let start = Instant::now();
    let err = ProcessGroup::new(0, 2, "127.0.0.1", port, Duration::from_secs(5)).unwrap_err();
    eprintln!("  got after {:?}: {err}", start.elapsed());
    assert!(
        matches!(err, DistError::PortInUse { port: p, .. } if p == port),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

fn no_store_gives_connect_error() {
    let port = free_port();
    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let err = ProcessGroup::new(1, 2, "127.0.0.1", port, timeout).unwrap_err();
    let took = start.elapsed();
    eprintln!("  got after {took:?}: {err}");
    assert!(
        matches!(err, DistError::Connect { port: p, .. } if p == port),
        "{err:?}"
    );
    assert!(took < timeout + Duration::from_secs(5), "{took:?}");
    assert!(err.to_string().contains("MASTER_ADDR"), "{err}");
}

fn missing_rank_gives_join_timeout() {
    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let err = ProcessGroup::new(0, 2, "127.0.0.1", free_port(), timeout).unwrap_err();
    let took = start.elapsed();
    eprintln!("  got after {took:?}: {err}");
    assert!(
        matches!(err, DistError::Timeout { timeout: t, .. } if t == timeout),
        "{err:?}"
    );
    assert!(
        took >= timeout.mul_f64(0.9) && took < timeout + Duration::from_secs(5),
        "{took:?}"
    );
}

/// The torchrun variables `vars` read as `DistEnv::from_lookup` reads the environment.
fn parse(vars: &[(&str, &str)]) -> Result<Option<DistEnv>, EnvError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    DistEnv::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

/// `RESNEXT_RENDEZVOUS_DIR` beside the torchrun variables `full`.
fn env_rendezvous_dir(full: &[(&'static str, &'static str)]) {
    // The launcher's private directory: MASTER_ADDR / MASTER_PORT are neither set nor read.
    let local = DistEnv::local(0, 2, Path::new("/tmp/rdzv")).vars();
    assert!(local
        .iter()
        .any(|(k, v)| *k == RENDEZVOUS_DIR_VAR && v == "/tmp/rdzv"));
    assert!(
        !local.iter().any(|(k, _)| k.starts_with("MASTER_")),
        "{local:?}"
    );
    let mut with_dir = full.to_vec();
    with_dir.push((RENDEZVOUS_DIR_VAR, "/tmp/rdzv"));
    let env = parse(&with_dir).unwrap().unwrap();
    assert_eq!(
        env.rendezvous,
        Rendezvous::File {
            dir: "/tmp/rdzv".into()
        }
    );
    let mut relative = full.to_vec();
    relative.push((RENDEZVOUS_DIR_VAR, "rdzv"));
    assert!(matches!(
        parse(&relative),
        Err(EnvError::Invalid { var, .. }) if var == RENDEZVOUS_DIR_VAR
    ));
    // torchrun's runs meet at MASTER_ADDR:MASTER_PORT, never in a directory.
    with_dir.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    let err = parse(&with_dir).unwrap_err();
    assert!(err.to_string().contains("agent store"), "{err}");
    let mut empty = full.to_vec();
    empty.push((RENDEZVOUS_DIR_VAR, ""));
    assert!(matches!(
        parse(&empty).unwrap().unwrap().rendezvous,
        Rendezvous::Tcp { .. }
    ));
}

fn env_parsing() {
    let full = [
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ];
    let env = parse(&full).unwrap().unwrap();
    assert_eq!(
        env,
        DistEnv {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            local_world_size: 2,
            rendezvous: Rendezvous::Tcp {
                addr: "node0".into(),
                port: 29500
            },
            agent_store: false,
            restart_count: 0,
        }
    );
    // What a launcher sets reads back as the place it describes.
    for place in [env.clone(), DistEnv::local(1, 2, Path::new("/tmp/rdzv"))] {
        let vars = place.vars();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(parse(&vars).unwrap(), Some(place));
    }
    env_rendezvous_dir(&full);
    // Not a distributed launch.
    assert_eq!(parse(&[]).unwrap(), None);
    assert_eq!(parse(&[("RANK", "0")]).unwrap(), None);
    // torchrun's agent store.
    let mut agent = full.to_vec();
    agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    agent.push(("TORCHELASTIC_RESTART_COUNT", "2"));
    let env = parse(&agent).unwrap().unwrap();
    assert!(env.agent_store);
    assert_eq!(env.restart_count, 2);
    // Local values default to the global ones.
    let env = parse(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1234"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((env.local_rank, env.local_world_size), (1, 2));

    let with = |k: &'static str, v: &'static str| {
        let mut vars: Vec<(&str, &str)> = full.iter().copied().filter(|(n, _)| *n != k).collect();
        vars.push((k, v));
        parse(&vars)
    };
    let without = |k: &str| {
        let vars: Vec<(&str, &str)> = full.iter().copied().filter(|(n, _)| *n != k).collect();
        parse(&vars)
    };
    assert_eq!(
        with("RANK", "4"),
        Err(EnvError::RankOutOfRange {
            rank: 4,
            world_size: 4
        })
    );
    let err = with("RANK", "7").unwrap_err();
    assert!(
        err.to_string().contains("RANK=7 is not below WORLD_SIZE=4"),
        "{err}"
    );
    assert!(matches!(
        without("MASTER_PORT"),
        Err(EnvError::Missing {
            var: "MASTER_PORT",
            ..
        })
    ));
    let err = without("MASTER_PORT").unwrap_err().to_string();
    assert!(
        err.contains("MASTER_PORT is not set") && err.contains("torchrun"),
        "{err}"
    );
    assert!(matches!(
        without("MASTER_ADDR"),
        Err(EnvError::Missing {
            var: "MASTER_ADDR",
            ..
        })
    ));
    assert!(matches!(
        without("RANK"),
        Err(EnvError::Missing { var: "RANK", .. })
    ));
    assert!(matches!(
        with("MASTER_PORT", "http"),
        Err(EnvError::Invalid {
            var: "MASTER_PORT",
            ..
        })
    ));
    assert!(matches!(
        with("MASTER_PORT", "70000"),
        Err(EnvError::Invalid {
            var: "MASTER_PORT",
            ..
        })
    ));
    assert!(matches!(
        with("MASTER_PORT", "0"),
        Err(EnvError::Invalid {
            var: "MASTER_PORT",
            ..
        })
    ));
    assert!(matches!(
        with("WORLD_SIZE", "two"),
        Err(EnvError::Invalid {
            var: "WORLD_SIZE",
            ..
        })
    ));
    assert!(matches!(
        with("WORLD_SIZE", "0"),
        Err(EnvError::Invalid {
            var: "WORLD_SIZE",
            ..
        })
    ));
    assert!(matches!(
        with("RANK", "-1"),
        Err(EnvError::Invalid { var: "RANK", .. })
    ));
    assert_eq!(
        with("LOCAL_RANK", "2"),
        Err(EnvError::LocalRankOutOfRange {
            local_rank: 2,
            local_world_size: 2
        })
    );
    assert_eq!(
        with("LOCAL_WORLD_SIZE", "5"),
        Err(EnvError::LocalWorldTooLarge {
            local_world_size: 5,
            world_size: 4
        })
    );
    assert!(matches!(
        with("TORCHELASTIC_USE_AGENT_STORE", "maybe"),
        Err(EnvError::Invalid {
            var: "TORCHELASTIC_USE_AGENT_STORE",
            ..
        })
    ));
    // from_env without WORLD_SIZE: a typed error, not a hang or a panic.
    if std::env::var_os("WORLD_SIZE").is_none() {
        let err = ProcessGroup::from_env(Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                err,
                DistError::Env(EnvError::Missing {
                    var: "WORLD_SIZE",
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
