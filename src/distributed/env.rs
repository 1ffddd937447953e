//! The torchrun environment: where a process learns its rank and how to reach the others.
//!
//! `torchrun` (`python -m torch.distributed.run --no-python --nproc-per-node=N ./binary`) starts
//! each process with `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and
//! `MASTER_PORT`, and hosts the rendezvous store itself (`TORCHELASTIC_USE_AGENT_STORE=True`,
//! restarts counted in `TORCHELASTIC_RESTART_COUNT`). The same variables set by hand (or by
//! another launcher) work too.
//!
//! The `--nproc` launcher of the examples ([`LocalRendezvous`](super::LocalRendezvous)) sets the
//! same variables but `MASTER_ADDR` / `MASTER_PORT`, and [`RENDEZVOUS_DIR_VAR`] instead: the
//! ranks meet in a c10d `FileStore` in that private directory, with no network socket for the
//! rendezvous (see the [module docs](super)). torchrun never sets it, so its runs keep the TCP
//! store.
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The variable naming the private directory of a one-machine rendezvous (a c10d `FileStore`
/// inside it), set by [`DistEnv::vars`] for [`Rendezvous::File`]; when set, `MASTER_ADDR` and
/// `MASTER_PORT` are not read.
pub const RENDEZVOUS_DIR_VAR: &str = "RESNEXT_RENDEZVOUS_DIR";

/// What is wrong with the torchrun environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    /// A variable needed for a distributed run is not set.
    #[error(
        "environment variable {var} is not set ({hint}); launch with torchrun \
         (python -m torch.distributed.run --no-python ...) or set RANK, WORLD_SIZE, MASTER_ADDR \
         and MASTER_PORT"
    )]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// What the variable is for.
        hint: &'static str,
    },
    /// A variable is set to something that does not parse as what it must be.
    #[error("environment variable {var}={value:?} is not {expected}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `RANK` is not below `WORLD_SIZE`.
    #[error("RANK={rank} is not below WORLD_SIZE={world_size} (ranks are 0..WORLD_SIZE-1)")]
    RankOutOfRange {
        /// `RANK`.
        rank: usize,
        /// `WORLD_SIZE`.
        world_size: usize,
    },
    /// `LOCAL_RANK` is not below `LOCAL_WORLD_SIZE`.
    #[error(
        "LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size} \
         (local ranks are 0..LOCAL_WORLD_SIZE-1)"
    )]
    LocalRankOutOfRange {
        /// `LOCAL_RANK`.
        local_rank: usize,
        /// `LOCAL_WORLD_SIZE`.
        local_world_size: usize,
    },
    /// `LOCAL_WORLD_SIZE` is larger than `WORLD_SIZE`.
    #[error("LOCAL_WORLD_SIZE={local_world_size} is larger than WORLD_SIZE={world_size}")]
    LocalWorldTooLarge {
        /// `LOCAL_WORLD_SIZE`.
        local_world_size: usize,
        /// `WORLD_SIZE`.
        world_size: usize,
    },
}

/// Where the ranks of a run meet to exchange their addresses (c10d's store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    /// A c10d `TCPStore` at `MASTER_ADDR:MASTER_PORT`, hosted by rank 0 (bound to that address
    /// only) or by torchrun's agent: runs over several machines, and torchrun's.
    Tcp {
        /// `MASTER_ADDR`: the host of the store (rank 0's machine).
        addr: String,
        /// `MASTER_PORT`: the store's TCP port.
        port: u16,
    },
    /// A c10d `FileStore` in this directory ([`RENDEZVOUS_DIR_VAR`]), which must be private to
    /// this user (mode 0700): every rank on this machine, no network socket for the
    /// rendezvous, and Gloo on the loopback interface only.
    File {
        /// The directory (absolute).
        dir: PathBuf,
    },
}

/// A process's place in a distributed run, as the torchrun variables describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// `RANK`: this process's rank among all processes, `0..world_size`.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of processes.
    pub world_size: usize,
    /// `LOCAL_RANK`: the rank among the processes of this machine (the GPU to use). Defaults to
    /// `rank` when unset (every process on one machine).
    pub local_rank: usize,
    /// `LOCAL_WORLD_SIZE`: the number of processes on this machine. Defaults to `world_size`
    /// when unset.
    pub local_world_size: usize,
    /// Where the ranks meet: `MASTER_ADDR:MASTER_PORT`, or the directory of
    /// [`RENDEZVOUS_DIR_VAR`].
    pub rendezvous: Rendezvous,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent already hosts the store, so every
    /// rank (rank 0 included) connects to it as a client.
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT` (0 when unset): keys of each restart are kept apart in the
    /// agent's store, as torch.distributed does.
    pub restart_count: u64,
}

impl DistEnv {
    /// Rank `rank` of `world_size` processes on this machine, meeting in a `FileStore` in the
    /// private directory `dir` (what a local launcher gives each process it starts; see
    /// [`LocalRendezvous`](super::LocalRendezvous), which creates such a directory).
    pub fn local(rank: usize, world_size: usize, dir: &Path) -> Self {
        DistEnv {
            rank,
            world_size,
            local_rank: rank,
            local_world_size: world_size,
            rendezvous: Rendezvous::File {
                dir: dir.to_path_buf(),
            },
            agent_store: false,
            restart_count: 0,
        }
    }

    /// The variables that describe this place (every one [`DistEnv::from_env`] reads), for the
    /// environment of a process to start: the torchrun variables, with `MASTER_ADDR` and
    /// `MASTER_PORT` for [`Rendezvous::Tcp`] or [`RENDEZVOUS_DIR_VAR`] for
    /// [`Rendezvous::File`].
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let agent = if self.agent_store { "True" } else { "False" };
        let mut vars = vec![
            ("RANK", self.rank.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
        ];
        match &self.rendezvous {
            Rendezvous::Tcp { addr, port } => {
                vars.push(("MASTER_ADDR", addr.clone()));
                vars.push(("MASTER_PORT", port.to_string()));
            }
            Rendezvous::File { dir } => {
                vars.push((RENDEZVOUS_DIR_VAR, dir.display().to_string()));
            }
        }
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", agent.into()));
        vars.push(("TORCHELASTIC_RESTART_COUNT", self.restart_count.to_string()));
        vars
    }

    /// Reads the torchrun variables of this process's environment.
    ///
    /// `Ok(None)` when `WORLD_SIZE` is unset: not a distributed launch. Otherwise every needed
    /// variable must be present and consistent.
    pub fn from_env() -> Result<Option<Self>, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`DistEnv::from_env`], with the variables looked up through `get` (for tests and for
    /// launchers that build a child's environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, EnvError> {
        let get = |name: &str| get(name).map(|v| v.trim().to_string());
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let mut env = ranks(&get, parse_count("WORLD_SIZE", &world)?)?;
        (env.agent_store, env.restart_count) = elastic(&get)?;
        env.rendezvous = rendezvous(&get, env.agent_store)?;
        Ok(Some(env))
    }
}

/// The ranks of a run of `world_size` processes (`RANK`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`),
/// checked against each other; the rendezvous fields are left empty.
fn ranks(get: &dyn Fn(&str) -> Option<String>, world_size: usize) -> Result<DistEnv, EnvError> {
    let rank = get("RANK").ok_or(EnvError::Missing {
        var: "RANK",
        hint: "this process's rank, 0..WORLD_SIZE-1",
    })?;
    let rank = parse_index("RANK", &rank)?;
    if rank >= world_size {
        return Err(EnvError::RankOutOfRange { rank, world_size });
    }
    let local_world_size = match get("LOCAL_WORLD_SIZE") {
        Some(v) => parse_count("LOCAL_WORLD_SIZE", &v)?,
        None => world_size,
    };
    if local_world_size > world_size {
        return Err(EnvError::LocalWorldTooLarge {
            local_world_size,
            world_size,
        });
    }
    let local_rank = match get("LOCAL_RANK") {
        Some(v) => parse_index("LOCAL_RANK", &v)?,
        None => rank,
    };
    if local_rank >= local_world_size {
        return Err(EnvError::LocalRankOutOfRange {
            local_rank,
            local_world_size,
        });
    }
    Ok(DistEnv {
        rank,
        world_size,
        local_rank,
        local_world_size,
        rendezvous: Rendezvous::Tcp {
            addr: String::new(),
            port: 0,
        },
        agent_store: false,
        restart_count: 0,
    })
}

/// [`RENDEZVOUS_DIR_VAR`] (an absolute path, not under torchrun's agent store) when set, else
/// `MASTER_ADDR` and `MASTER_PORT`, both required.
fn rendezvous(
    get: &dyn Fn(&str) -> Option<String>,
    agent_store: bool,
) -> Result<Rendezvous, EnvError> {
    if let Some(dir) = get(RENDEZVOUS_DIR_VAR).filter(|d| !d.is_empty()) {
        let expected = if agent_store {
            "unset under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True): torchrun \
             runs meet at MASTER_ADDR:MASTER_PORT"
        } else {
            "an absolute path (the private directory the --nproc launcher creates)"
        };
        if agent_store || !Path::new(&dir).is_absolute() {
            return Err(EnvError::Invalid {
                var: RENDEZVOUS_DIR_VAR,
                value: dir,
                expected,
            });
        }
        return Ok(Rendezvous::File { dir: dir.into() });
    }
    let addr = get("MASTER_ADDR")
        .filter(|a| !a.is_empty())
        .ok_or(EnvError::Missing {
            var: "MASTER_ADDR",
            hint: "the host name or IP address of rank 0's machine",
        })?;
    let port = get("MASTER_PORT").ok_or(EnvError::Missing {
        var: "MASTER_PORT",
        hint: "the TCP port of the rendezvous store on MASTER_ADDR",
    })?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Rendezvous::Tcp { addr, port }),
        _ => Err(EnvError::Invalid {
            var: "MASTER_PORT",
            value: port,
            expected: "a TCP port number (1..65535)",
        }),
    }
}

/// torchrun's agent settings: `TORCHELASTIC_USE_AGENT_STORE` (default false) and
/// `TORCHELASTIC_RESTART_COUNT` (default 0).
fn elastic(get: &dyn Fn(&str) -> Option<String>) -> Result<(bool, u64), EnvError> {
    let agent_store = match get("TORCHELASTIC_USE_AGENT_STORE") {
        None => false,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            _ => {
                return Err(EnvError::Invalid {
                    var: "TORCHELASTIC_USE_AGENT_STORE",
                    value: v,
                    expected: "True or False",
                })
            }
        },
    };
    let restart_count = match get("TORCHELASTIC_RESTART_COUNT") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| EnvError::Invalid {
            var: "TORCHELASTIC_RESTART_COUNT",
            value: v,
            expected: "a non-negative integer",
        })?,
    };
    Ok((agent_store, restart_count))
}

fn parse_index(var: &'static str, value: &str) -> Result<usize, EnvError> {
    value.parse::<usize>().map_err(|_| EnvError::Invalid {
        var,
        value: value.to_string(),
        expected: "a non-negative integer",
    })
}

fn parse_count(var: &'static str, value: &str) -> Result<usize, EnvError> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(EnvError::Invalid {
            var,
            value: value.to_string(),
            expected: "a positive integer",
        }),
    }
}
