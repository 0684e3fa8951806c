//! The network between a relay and ngIRCd in the restart phase: a TCP proxy that can be shut
//! (every connection cut, new ones accepted and dropped at once) and opened again, like
//! `shepherd_tests::proxy::Proxy`, which can also fix one thing in transit.
//!
//! The peer (alertmanager-irc-relay 0.4.2 with its IRC library, goirc) takes the user name the
//! server reported (`~amrelay`: ngIRCd prefixes `~` when it has no ident answer) as its own,
//! and registers with `USER ~amrelay` on every reconnection; ngIRCd refuses that ("Invalid user
//! name") and closes the connection, so the peer never gets back on ngIRCd after a disconnect.
//! With `fix_user` the proxy strips the leading `~` from the user name of `USER` lines going to
//! the server, to look at the peer's behaviour across a restart apart from that bug (it only
//! matters when the peer does try to reconnect: with a backlog of more lines than its IRC
//! library queues, the peer deadlocks at the disconnect and never tries). Lines to the server
//! are forwarded one by one (read up to `\n`); lines from the server are copied as they come.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CutProxy {
    port: u16,
    open: watch::Sender<bool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

/// `USER ~name ...` -> `USER name ...`; any other line unchanged.
fn fixed(line: &[u8]) -> Vec<u8> {
    match line.strip_prefix(b"USER ~") {
        Some(rest) => [b"USER ".as_slice(), rest].concat(),
        None => line.to_vec(),
    }
}

async fn link(client: TcpStream, upstream: String, fix_user: bool) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_server = async move {
        let mut reader = BufReader::new(client_read);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let out = if fix_user { fixed(&line) } else { line.clone() };
            if server_write.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    let to_client = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    tokio::select! {
        _ = to_server => {}
        _ = to_client => {}
    }
}

impl CutProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` ("127.0.0.1:PORT").
    pub async fn start(upstream: &str, fix_user: bool) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (open, open_rx) = watch::channel(true);
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let acceptor = {
            let links = links.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !*open_rx.borrow() {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(link(client, upstream.clone(), fix_user));
                    links.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                }
            })
        };
        CutProxy {
            port,
            open,
            links,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection and refuses new ones.
    pub fn shut(&self) {
        self.open.send_replace(false);
        for task in self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for task in self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixed;

    #[test]
    fn only_a_user_name_with_a_tilde_changes() {
        assert_eq!(
            fixed(b"USER ~amrelay 12 * :Relay\r\n"),
            b"USER amrelay 12 * :Relay\r\n"
        );
        assert_eq!(
            fixed(b"USER shepherd 0 * :x\r\n"),
            b"USER shepherd 0 * :x\r\n"
        );
        assert_eq!(
            fixed(b"PRIVMSG #a :USER ~x\r\n"),
            b"PRIVMSG #a :USER ~x\r\n"
        );
    }
}
