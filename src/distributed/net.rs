//! The addresses a TCP rendezvous binds: rank 0's store on `MASTER_ADDR`'s address only, and
//! Gloo on the address that reaches `MASTER_ADDR` (unless `GLOO_SOCKET_IFNAME` says otherwise).
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};

use super::DistError;

/// The addresses `addr:port` resolves to, or the error that says it does not.
fn resolve(addr: &str, port: u16) -> Result<Vec<SocketAddr>, DistError> {
    let bad = |detail: String| DistError::StoreAddress {
        addr: addr.to_string(),
        port,
        detail,
    };
    let addrs: Vec<SocketAddr> = (addr, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("the name does not resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("the name resolves to no address".into()));
    }
    Ok(addrs)
}

/// A socket bound to `addr:port` and listening, for rank 0 to host the TCP store on: bound to
/// the first address `addr` resolves to that this machine has, not to every interface, and
/// bound before the store starts, so that no other process can take the port in between.
///
/// # Errors
/// [`DistError::PortInUse`] when the port is taken there; [`DistError::StoreAddress`] when the
/// name does not resolve or none of its addresses is this machine's.
pub(crate) fn store_listener(addr: &str, port: u16) -> Result<TcpListener, DistError> {
    let mut in_use = None;
    let mut other = Vec::new();
    for sa in resolve(addr, port)? {
        match TcpListener::bind(sa) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == ErrorKind::AddrInUse => in_use = Some(format!("{sa}: {e}")),
            Err(e) => other.push(format!("{sa}: {e}")),
        }
    }
    if let Some(detail) = in_use {
        return Err(DistError::PortInUse { port, detail });
    }
    Err(DistError::StoreAddress {
        addr: addr.to_string(),
        port,
        detail: format!(
            "cannot listen there ({}): it is not an address of this machine",
            other.join("; ")
        ),
    })
}

/// The address for Gloo to bind in a TCP rendezvous with the store at `addr:port`: `None`
/// (torch.distributed's own choice: `GLOO_SOCKET_IFNAME`, else the address of this host's name)
/// when `GLOO_SOCKET_IFNAME` is set or no local address reaches `addr`; otherwise the local
/// address that the system's routes use to reach `addr` (the loopback when `addr` is
/// 127.0.0.1 or `localhost`), found by connecting a UDP socket, which sends nothing.
pub(crate) fn gloo_address(addr: &str, port: u16) -> Option<IpAddr> {
    if std::env::var_os("GLOO_SOCKET_IFNAME").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let targets = resolve(addr, port).ok()?;
    targets.into_iter().find_map(|target| {
        let any = match target {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = UdpSocket::bind((any, 0)).ok()?;
        socket.connect(target).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        // A link-local IPv6 address needs its interface, which an address string for Gloo
        // does not carry: leave those to torch.distributed's choice.
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        (!ip.is_unspecified() && !link_local).then_some(ip)
    })
}
