//! What the Matrix front end keeps in `matrix.store_path` across restarts.
//!
//! - `session.json`: the homeserver, the account and the device's access token (mode 0600). It is
//!   written right after the first login and read on every later start, so the bot stays one
//!   device — a fresh login is a new device, which the people in encrypted rooms have not shared
//!   their room keys with.
//! - `sdk/`: the matrix-sdk state and end-to-end crypto store (SQLite) of that device.
//! - `sync-position`: the `next_batch` token of the last sync whose commands were stored. A sync
//!   starts from it, so no message is executed twice (a message seen again after a crash is
//!   recognised by its event id) and none is missed; without it (the first start) the rooms'
//!   history is read once and nothing in it is executed.
//!
//! Every file is replaced atomically (written beside, then renamed), so a crash never leaves half
//! a session.

use std::io::Write;
use std::path::{Path, PathBuf};

use matrix_sdk::authentication::matrix::MatrixSession;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a session shepherd wrote ({source}); move it away to log in again")]
    Unreadable {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The session as saved.
#[derive(Serialize, Deserialize)]
pub struct Saved {
    pub homeserver: String,
    pub session: MatrixSession,
}

pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the folder (only its owner may read it: it holds an access token and keys).
    pub fn prepare(&self) -> Result<(), SessionError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| self.io(&self.dir, source))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    pub fn sdk_store(&self) -> PathBuf {
        self.dir.join("sdk")
    }

    fn session_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    fn sync_path(&self) -> PathBuf {
        self.dir.join("sync-position")
    }

    fn io(&self, path: &Path, source: std::io::Error) -> SessionError {
        SessionError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The saved session, if there is one.
    pub fn load_session(&self) -> Result<Option<Saved>, SessionError> {
        let path = self.session_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| SessionError::Unreadable { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io(&path, source)),
        }
    }

    pub fn save_session(&self, saved: &Saved) -> Result<(), SessionError> {
        let bytes =
            serde_json::to_vec_pretty(saved).map_err(|source| SessionError::Unreadable {
                path: self.session_path(),
                source,
            })?;
        self.replace(&self.session_path(), &bytes, true)
    }

    /// Moves the session and the device's store aside (after the homeserver forgot the device),
    /// so the next start logs in as a new device instead of failing on the old store forever.
    pub fn retire(&self) -> Result<PathBuf, SessionError> {
        let aside = self.dir.join(format!(
            "retired-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
        ));
        std::fs::create_dir_all(&aside).map_err(|source| self.io(&aside, source))?;
        for name in ["session.json", "sdk", "sync-position"] {
            let from = self.dir.join(name);
            if from.exists() {
                std::fs::rename(&from, aside.join(name))
                    .map_err(|source| self.io(&from, source))?;
            }
        }
        Ok(aside)
    }

    /// Before a first login: a device store without a session belongs to a device whose token is
    /// lost (a login that failed, or a crash before its session was saved). Nobody can use that
    /// device again and its keys cannot serve the new one, so the store and its sync position go.
    pub fn clear_orphaned_store(&self) -> Result<(), SessionError> {
        if self.session_path().exists() {
            return Ok(());
        }
        let sdk = self.sdk_store();
        if sdk.exists() {
            std::fs::remove_dir_all(&sdk).map_err(|source| self.io(&sdk, source))?;
        }
        let sync = self.sync_path();
        if sync.exists() {
            std::fs::remove_file(&sync).map_err(|source| self.io(&sync, source))?;
        }
        Ok(())
    }

    pub fn load_sync_position(&self) -> Result<Option<String>, SessionError> {
        let path = self.sync_path();
        match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_string())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io(&path, source)),
        }
    }

    pub fn save_sync_position(&self, token: &str) -> Result<(), SessionError> {
        self.replace(&self.sync_path(), token.as_bytes(), false)
    }

    /// Writes `bytes` beside `path`, flushes them to disk, then renames over `path`.
    fn replace(&self, path: &Path, bytes: &[u8], private: bool) -> Result<(), SessionError> {
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if private {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options.open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| self.io(path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_positions_survive_and_orphaned_stores_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::new(&dir.path().join("store"));
        files.prepare().expect("prepare");
        assert_eq!(files.load_sync_position().expect("read"), None);
        files.save_sync_position("s72594_4483_1934").expect("save");
        files
            .save_sync_position("s72595_4483_1934")
            .expect("save again");
        assert_eq!(
            files.load_sync_position().expect("read").as_deref(),
            Some("s72595_4483_1934")
        );
        assert!(files.load_session().expect("no session").is_none());
        std::fs::create_dir_all(files.sdk_store()).expect("a store");
        files.clear_orphaned_store().expect("clear");
        assert!(
            !files.sdk_store().exists(),
            "the store of a lost device is moved aside"
        );
        assert_eq!(files.load_sync_position().expect("read"), None);
    }

    #[test]
    fn a_broken_session_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::new(dir.path());
        std::fs::write(dir.path().join("session.json"), "{ half").expect("write");
        let e = files.load_session().err().expect("an error");
        assert!(
            e.to_string().contains("move it away to log in again"),
            "{e}"
        );
    }
}
