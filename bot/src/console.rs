//! The console front end: the terminal is a chat room.
//!
//! One command per stdin line (a pipe works as well as a terminal; invalid UTF-8 is
//! replaced, not fatal; a line longer than [`MAX_LINE_BYTES`] is read to its end without being
//! kept, and answered with a refusal — so `shepherd serve < /dev/zero` holds 64 KiB, not
//! everything it was sent), replies on stdout from the outbox room `console:<room>`. In
//! `shepherd console`, after EOF the process exits once every command it read has been
//! answered and every pipeline those commands started has reported its end — including
//! work left over by an earlier run that crashed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shepherd_commands::Frontend;
use shepherd_config::Config;
use shepherd_core::outbox::Outbox;
use shepherd_core::queue::Queue;
use shepherd_core::store::{Store, StoreError};
use shepherd_core::watcher;
use shepherd_core::{Capabilities, CommandStyle, Formatting, Origin};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::dispatch::{Dispatcher, Inbound};
use crate::frontend::{Context, FrontEnd};

pub const FRONTEND: &str = "console";

/// The longest console line kept as a command: far above any real command (a `retrigger`
/// with a 20,000-byte value is one), far below what would cost memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What one bounded read of a line found.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// End of input, nothing read.
    Eof,
    /// A line (without its newline) is in the buffer.
    Line,
    /// A line of this many bytes (without its newline) was read and dropped.
    TooLong(usize),
}

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes of it; a longer
/// line is consumed up to its newline without being kept. The last line may lack its newline.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut seen = 0usize;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(match seen {
                0 => LineRead::Eof,
                n if n > max => LineRead::TooLong(n),
                _ => LineRead::Line,
            });
        }
        let (take, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let content = if newline {
            &chunk[..take - 1]
        } else {
            &chunk[..take]
        };
        seen = seen.saturating_add(content.len());
        if seen <= max {
            buf.extend_from_slice(content);
        } else {
            buf.clear();
        }
        reader.consume(take);
        if newline {
            return Ok(if seen > max {
                LineRead::TooLong(seen)
            } else {
                LineRead::Line
            });
        }
    }
}

/// The console as one of `serve`'s front ends: stdin is one more chat, stdout shows its room.
pub struct ConsoleFrontend {
    identity: String,
    room: String,
}

impl ConsoleFrontend {
    pub fn new(config: &Config) -> Self {
        Self {
            identity: config.console.identity().to_string(),
            room: config.console.room.clone(),
        }
    }

    /// The console of a running app.
    pub fn console(&self, ctx: &Context) -> Console {
        Console {
            dispatcher: ctx.dispatcher().clone(),
            outbox: ctx.outbox().clone(),
            queue: ctx.queue().clone(),
            store: ctx.store().clone(),
            identity: self.identity.clone(),
            room: self.room.clone(),
        }
    }
}

#[async_trait]
impl FrontEnd for ConsoleFrontend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: FRONTEND,
            edits: false,
            formatting: Formatting::Plain,
            style: CommandStyle::Bare,
            max_message_bytes: None,
            messages_per_second: None,
        }
    }

    async fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let console = Arc::new(self.console(&ctx));
        // EOF just ends this chat, the service goes on. Not awaited: a pending read of stdin
        // cannot be cancelled, and it must not hold a shutdown.
        let reader = console.clone();
        tokio::spawn(async move {
            if let Err(e) = reader.read_stdin().await {
                tracing::error!(error = %e, "console: store error; console input stopped");
            }
        });
        console.deliver(shutdown).await;
        Ok(())
    }
}

pub struct Console {
    pub dispatcher: Arc<Dispatcher>,
    pub outbox: Outbox,
    pub queue: Queue,
    pub store: Store,
    pub identity: String,
    pub room: String,
}

impl Console {
    /// Reads stdin until EOF, handing each line to the dispatcher.
    pub async fn read_stdin(&self) -> Result<(), StoreError> {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            eprintln!(
                "shepherd console — you are {}. Type `help`; Ctrl-D ends the input.",
                self.identity
            );
        }
        let mut lines = BufReader::new(tokio::io::stdin());
        let mut buf = Vec::new();
        loop {
            let too_long = match read_line_bounded(&mut lines, &mut buf, MAX_LINE_BYTES).await {
                Ok(LineRead::Eof) => return Ok(()),
                Ok(LineRead::Line) => None,
                Ok(LineRead::TooLong(n)) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "console: stdin closed with an error");
                    return Ok(());
                }
            };
            let text = String::from_utf8_lossy(&buf).trim().to_string();
            if text.is_empty() && too_long.is_none() {
                continue;
            }
            let inbound = Inbound {
                frontend: Frontend::Console,
                origin: Origin::new(FRONTEND, self.room.clone()),
                identity: self.identity.clone(),
                text,
                mr: None,
                dedup: None,
                rate_room: None,
                bot_user_id: None,
            };
            match too_long {
                Some(n) => {
                    tracing::warn!(
                        bytes = n,
                        "console: a line too long to be a command was dropped"
                    );
                    let why = format!(
                        "that line was {n} bytes long; a command is at most {MAX_LINE_BYTES} bytes, so I dropped it unread. Type `help` for the commands."
                    );
                    self.dispatcher.decline(&inbound, &why).await?;
                }
                None => self.dispatcher.handle(&inbound).await?,
            }
        }
    }

    /// Prints outbox messages for the console as they come, until `shutdown`.
    pub async fn deliver(&self, mut shutdown: watch::Receiver<bool>) {
        let mut stdout = tokio::io::stdout();
        loop {
            let waiter = self.outbox.notified().notified();
            match self.outbox.pending(FRONTEND, 100).await {
                Ok(batch) if !batch.is_empty() => {
                    for m in batch {
                        let line = format!("{}\n", crate::safe_text::plain(&m.body));
                        if let Err(e) = stdout.write_all(line.as_bytes()).await {
                            tracing::error!(error = %e, "console: stdout is gone");
                            return;
                        }
                        let _ = stdout.flush().await;
                        if let Err(e) = self.outbox.mark_delivered(&m.id).await {
                            tracing::warn!(error = %e, "console: cannot mark a reply delivered");
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "console: outbox unavailable"),
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = waiter => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// True when no console request, watch or reply is outstanding.
    pub async fn idle(&self) -> Result<bool, StoreError> {
        Ok(self.queue.unfinished_for(FRONTEND).await? == 0
            && watcher::active_for(&self.store, FRONTEND).await? == 0
            && self.outbox.pending_count(FRONTEND).await? == 0)
    }

    /// Waits until `idle()`.
    pub async fn drain(&self) {
        loop {
            match self.idle().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "console: cannot check outstanding work"),
            }
            let waiter = self.outbox.notified().notified();
            tokio::select! {
                _ = waiter => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], max: usize) -> Vec<(LineRead, Vec<u8>)> {
        // A tiny buffer, so lines span many fills.
        let mut reader = BufReader::with_capacity(3, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let r = read_line_bounded(&mut reader, &mut buf, max).await.unwrap();
            if r == LineRead::Eof {
                return out;
            }
            out.push((r, buf.clone()));
        }
    }

    #[tokio::test]
    async fn lines_up_to_the_bound_are_kept_longer_ones_dropped_whole() {
        let got = read_all(b"ping\n12345678\n123456789\nhelp", 8).await;
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"ping".to_vec()),
                (LineRead::Line, b"12345678".to_vec()),
                (LineRead::TooLong(9), Vec::new()),
                (LineRead::Line, b"help".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn an_overlong_last_line_and_empty_lines() {
        let got = read_all(b"\n\nabcdefghijk", 4).await;
        assert_eq!(
            got,
            vec![
                (LineRead::Line, Vec::new()),
                (LineRead::Line, Vec::new()),
                (LineRead::TooLong(11), Vec::new()),
            ]
        );
        assert!(read_all(b"", 4).await.is_empty());
    }
}
