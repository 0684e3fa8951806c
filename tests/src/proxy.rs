//! A TCP proxy a test can shut and open: the network between shepherd and a server.
//!
//! While shut, new connections are accepted and dropped at once and existing ones are cut,
//! as a broken network would. Tests use it to decide *when* shepherd may reach a server
//! again (for example only after a human has rejoined a channel), without sleeping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    port: u16,
    open: watch::Sender<bool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
    /// Connections that went silent on a poison marker (see [`Proxy::start_poisoned`]).
    poisoned: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("127.0.0.1:PORT").
    pub async fn start(upstream: &str) -> Proxy {
        Self::start_inner(upstream, None).await
    }

    /// Like `start`, but a connection on which the client sends `marker` goes silent from that
    /// point on, both ways, while staying open — a server that never answers what follows a
    /// line it could not handle (ngIRCd after a NUL byte, for one). Later connections work.
    pub async fn start_poisoned(upstream: &str, marker: &str) -> Proxy {
        Self::start_inner(upstream, Some(marker.as_bytes().to_vec())).await
    }

    /// How many connections went silent on the marker so far.
    pub fn poisoned(&self) -> usize {
        self.poisoned.load(Ordering::SeqCst)
    }

    async fn start_inner(upstream: &str, marker: Option<Vec<u8>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (open, open_rx) = watch::channel(true);
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let poisoned = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let links = links.clone();
            let poisoned = poisoned.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !*open_rx.borrow() {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let marker = marker.clone();
                    let poisoned = poisoned.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            match marker {
                                None => {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server)
                                        .await;
                                }
                                Some(marker) => {
                                    forward_until(client, server, &marker, &poisoned).await;
                                }
                            }
                        }
                    });
                    links.lock().expect("links").push(link);
                }
            })
        };
        Proxy {
            port,
            open,
            links,
            acceptor,
            poisoned,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection and refuses new ones.
    pub fn shut(&self) {
        self.open.send_replace(false);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Forwards both ways until the client sends `marker`; from then on nothing more is forwarded
/// either way (what the client sends is read and dropped), and the connection stays open.
async fn forward_until(
    client: TcpStream,
    server: TcpStream,
    marker: &[u8],
    poisoned: &AtomicUsize,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (silent_tx, mut silent_rx) = watch::channel(false);
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = server_read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if *silent_rx.borrow() {
                            continue;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                _ = silent_rx.changed() => {}
            }
        }
    });
    let mut seen: Vec<u8> = Vec::new();
    let mut silent = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent {
            continue;
        }
        seen.extend_from_slice(&buf[..n]);
        match seen.windows(marker.len()).position(|w| w == marker) {
            Some(at) => {
                // Everything before the marker's line still reaches the server.
                let line_start = seen[..at]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                let before = seen.len() - n;
                if line_start > before {
                    let _ = server_write.write_all(&seen[before..line_start]).await;
                }
                silent = true;
                poisoned.fetch_add(1, Ordering::SeqCst);
                let _ = silent_tx.send(true);
            }
            None => {
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                // Keep only what a marker split across reads could still need.
                let keep = marker.len().saturating_sub(1);
                if seen.len() > keep {
                    seen.drain(..seen.len() - keep);
                }
            }
        }
    }
    down.abort();
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }
}
