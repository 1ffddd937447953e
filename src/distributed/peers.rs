//! Who is at the other end of Gloo's connections: Gloo has no authentication, and its listening
//! socket hands a connection to whichever process first names the right sequence number, so
//! once a group's pairs are connected every connection that Gloo's listener accepted from this
//! machine must come from a process of this user (read from `/proc/net/tcp{,6}`, where the
//! kernel lists every socket of this network namespace with its owner).
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::DistError;

/// `TCP_ESTABLISHED`, `TCP_CLOSE_WAIT` and `TCP_LISTEN` of the kernel's `st` column.
const ESTABLISHED: u8 = 0x01;
const CLOSE_WAIT: u8 = 0x08;
const LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpRow {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    uid: u32,
    inode: u64,
}

/// `ADDR:PORT` as the kernel prints it: the address as native-endian 32-bit words in hex (one
/// for IPv4, four for IPv6), the port in hex. IPv4-mapped IPv6 addresses come back as IPv4.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..]).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?)).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One line of the table (`None` for the header and anything malformed).
fn parse_row(line: &str) -> Option<TcpRow> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 {
        return None;
    }
    Some(TcpRow {
        local: parse_endpoint(fields[1])?,
        remote: parse_endpoint(fields[2])?,
        state: u8::from_str_radix(fields[3], 16).ok()?,
        uid: fields[7].parse().ok()?,
        inode: fields[9].parse().ok()?,
    })
}

/// Every TCP socket of this network namespace (IPv4 and IPv6; a kernel without IPv6 has no
/// `tcp6` table).
fn tcp_table() -> std::io::Result<Vec<TcpRow>> {
    let mut rows = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(path) {
            Ok(text) => rows.extend(text.lines().filter_map(parse_row)),
            Err(e) if path.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
    }
    Ok(rows)
}

/// The inodes of this process's sockets (`/proc/self/fd/*` linking to `socket:[N]`).
pub(crate) fn own_sockets() -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        // A descriptor closed while the folder is read is simply gone.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(n) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.extend(n.parse::<u64>().ok());
        }
    }
    Ok(inodes)
}

/// Checks the connections that listening sockets opened by this process since `before` (a
/// snapshot of [`own_sockets`]: Gloo's, when taken just before its set-up) accepted: each one
/// from this machine must come from a live socket of this process's user.
///
/// # Errors
/// [`DistError::ForeignPeer`] naming the connection otherwise; [`DistError::Failed`] when the
/// tables cannot be read.
pub(crate) fn check_accepted(before: &HashSet<u64>, rank: usize) -> Result<(), DistError> {
    let failed = |e: std::io::Error| DistError::Failed {
        rank,
        op: "check who connected to Gloo's listening socket",
        detail: e.to_string(),
    };
    let ours = own_sockets().map_err(failed)?;
    let table = tcp_table().map_err(failed)?;
    let new = |row: &&TcpRow| ours.contains(&row.inode) && !before.contains(&row.inode);
    let listeners: Vec<SocketAddr> = (table.iter().filter(new))
        .filter(|r| r.state == LISTEN)
        .map(|r| r.local)
        .collect();
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let accepted = table.iter().filter(new).filter(|r| {
        matches!(r.state, ESTABLISHED | CLOSE_WAIT) && accepted_by(&listeners, r.local)
    });
    // Connections of other users first: they name the intruder best.
    let mut refused: Vec<(SocketAddr, Option<u32>)> = Vec::new();
    for conn in accepted {
        let peer = table
            .iter()
            .find(|p| p.inode != 0 && p.local == conn.remote && p.remote == conn.local);
        let local_peer = conn.remote.ip().is_loopback() || conn.remote.ip() == conn.local.ip();
        match peer {
            Some(p) if p.uid == euid => {}
            Some(p) => refused.insert(0, (conn.remote, Some(p.uid))),
            None if local_peer => refused.push((conn.remote, None)),
            // Another machine's: its user cannot be known (see the module docs).
            None => {}
        }
    }
    let Some(&(peer, uid)) = refused.first() else {
        return Ok(());
    };
    let who = match uid {
        Some(uid) => format!("a process of user {uid} (the ranks run as user {euid})"),
        None => "a process of this machine that has closed it since (an intruder, or a rank \
                 that died)"
            .into(),
    };
    Err(DistError::ForeignPeer {
        rank,
        peer,
        detail: format!("{who}; {} such connection(s) in all", refused.len()),
    })
}

/// Whether a connection with local end `local` came in through one of `listeners`.
fn accepted_by(listeners: &[SocketAddr], local: SocketAddr) -> bool {
    listeners
        .iter()
        .any(|l| l.port() == local.port() && (l.ip() == local.ip() || l.ip().is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rows as a little-endian kernel prints them.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_the_kernel_rows() {
        let v4 = "   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0";
        let row = parse_row(v4).unwrap();
        assert_eq!(row.local, "127.0.0.1:40001".parse().unwrap());
        assert_eq!(row.remote, "0.0.0.0:0".parse().unwrap());
        assert_eq!((row.state, row.uid, row.inode), (LISTEN, 1000, 123456));
        let v6 = "   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 777 1";
        let row = parse_row(v6).unwrap();
        assert_eq!(row.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(row.remote, "[::1]:54321".parse().unwrap());
        assert_eq!((row.state, row.uid, row.inode), (ESTABLISHED, 0, 777));
        assert_eq!(
            parse_row("  sl  local_address rem_address   st tx_queue"),
            None
        );
    }

    #[test]
    fn own_sockets_sees_a_listener_in_the_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = own_sockets().unwrap();
        let table = tcp_table().unwrap();
        let row = table.iter().find(|r| r.local == addr && r.state == LISTEN);
        let row = row.expect("the listener is in /proc/net/tcp");
        assert!(ours.contains(&row.inode));
        // SAFETY: geteuid(2) has no preconditions.
        assert_eq!(row.uid, unsafe { libc::geteuid() });
        assert!(accepted_by(&[addr], addr));
        assert!(!accepted_by(&[addr], "127.0.0.2:1".parse().unwrap()));
    }
}
