//! TCP_NODELAY on the IRC connection.
//!
//! The `irc` crate opens its own socket and never sets TCP_NODELAY, so Nagle's algorithm holds a
//! line back while an earlier small segment waits for the server's delayed ACK (~40 ms on Linux):
//! every back-to-back alert line paid that. The crate offers no way to reach its socket, so once
//! it has connected we find the socket among this process's descriptors by its peer address and
//! set the option there. Linux only (`/proc/self/fd`); elsewhere nothing changes.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use socket2::SockRef;

/// Sets TCP_NODELAY on every TCP socket of this process connected to one of `peers`; returns how
/// many it set. Setting it on another connection to the same server does no harm.
pub fn set_towards(peers: &[SocketAddr]) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for the two system calls below, while this
        // function runs. Were it closed meanwhile, they fail (EBADF); were its number reused by
        // another file, `peer_addr` fails or names another peer, and nothing is changed.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let towards_peer = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| peers.contains(&a));
        if towards_peer && socket.set_tcp_nodelay(true).is_ok() {
            set += 1;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_sets_nodelay_on_the_connection_to_the_peer_only() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let other = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let to_server = tokio::net::TcpStream::connect(server.local_addr().expect("addr"))
            .await
            .expect("connect");
        let to_other = tokio::net::TcpStream::connect(other.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(!to_server.nodelay().expect("nodelay"));

        let n = set_towards(&[server.local_addr().expect("addr")]);

        assert_eq!(n, 1);
        assert!(to_server.nodelay().expect("nodelay"));
        assert!(
            !to_other.nodelay().expect("nodelay"),
            "another peer's socket is left alone"
        );
    }
}
