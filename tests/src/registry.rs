//! A real Distribution registry per test (Debian's `docker-registry`, 2.8), test images pushed
//! through its HTTP API without docker, and a fault proxy in front of it.
//!
//! `TestRegistry::start` writes a config into a temporary folder (filesystem storage there,
//! deletes enabled, health checks of the storage off, `127.0.0.1:<free port>`) and waits until
//! `GET /v2/` answers. With `start_with_htpasswd` the registry asks for basic auth (a bcrypt
//! htpasswd file made with `htpasswd -Bbn` from apache2-utils). `restart` stops the process and
//! starts it again on the same port and folder: the content survives, as it does in production.
//!
//! Images: `push_image` makes a unique small image (a random layer, its config, a manifest) of
//! one of three kinds — an OCI manifest, a Docker schema 2 manifest, or an OCI index over two
//! platform manifests — pushing blobs (`POST /v2/<name>/blobs/uploads/`, then `PUT ?digest=`)
//! and the manifest (`PUT /v2/<name>/manifests/<tag>`). The digest is the sha256 of the
//! manifest's exact bytes, which the test keeps to compare with what shepherd moved.
//!
//! Registry facts this relies on: it answers MANIFEST_UNKNOWN for an OCI manifest unless the
//! request's `Accept` lists the OCI types (`ACCEPT_ALL` lists all four); it keeps the Content-Type
//! a manifest was pushed with and serves it back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use rand::RngCore;
use tokio::process::{Child, Command};

use crate::harness::free_port;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What kind of image `push_image` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    OciManifest,
    DockerManifest,
    /// An OCI index over linux/amd64 and linux/arm64 manifests.
    OciIndex,
}

/// A running registry.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    auth: Option<(String, String)>,
    token: Option<TokenServer>,
    http: reqwest::Client,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        Self::start_inner(None).await
    }

    /// A registry that asks for basic auth with this user and password.
    pub async fn start_with_htpasswd(user: &str, password: &str) -> TestRegistry {
        Self::start_inner(Some((user.to_string(), password.to_string()))).await
    }

    /// A registry that takes only Bearer tokens from its own token service (Distribution's
    /// `auth: token`), which hands them to `user`/`password` for `repositories`.
    pub async fn start_with_token_auth(
        user: &str,
        password: &str,
        repositories: &[&str],
    ) -> TestRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = TokenServer::start(dir.path(), user, password, repositories).await;
        let mut registry = TestRegistry {
            dir,
            port: free_port(),
            child: None,
            auth: None,
            token: Some(token),
            http: reqwest::Client::new(),
        };
        registry.write_config();
        registry.spawn().await;
        registry
    }

    /// Tokens the token service handed to clients other than this helper (shepherd).
    pub fn tokens_issued(&self) -> usize {
        self.token
            .as_ref()
            .map_or(0, |t| t.state.issued.load(Ordering::SeqCst))
    }

    async fn start_inner(auth: Option<(String, String)>) -> TestRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut registry = TestRegistry {
            dir,
            port: free_port(),
            child: None,
            auth,
            token: None,
            http: reqwest::Client::new(),
        };
        registry.write_config();
        registry.spawn().await;
        registry
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn write_config(&self) {
        let root = self.dir.path().join("storage");
        std::fs::create_dir_all(&root).expect("storage dir");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: test-secret\nhealth:\n  storagedriver:\n    enabled: false\n",
            root.display(),
            self.port
        );
        if let Some((user, password)) = &self.auth {
            let out = std::process::Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = self.dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                file.display()
            ));
        }
        if let Some(token) = &self.token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                token.url(),
                token.state.cert_pem.display()
            ));
        }
        std::fs::write(self.config_path(), config).expect("registry config");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.http.get(format!("{}/v2/", self.url())).send().await;
            if let Ok(r) = answer
                && (r.status().is_success() || r.status() == StatusCode::UNAUTHORIZED)
            {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "docker-registry did not answer within 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the registry (SIGKILL) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port and storage.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the registry is running");
        self.spawn().await;
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url()));
        self.authorize(r)
    }

    /// The helper's own credentials: basic auth, or a token it mints for itself.
    fn authorize(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some((user, password)) = &self.auth {
            return r.basic_auth(user, Some(password));
        }
        if let Some(token) = &self.token {
            return r.bearer_auth(token.state.mint(&token.state.repositories, "helper"));
        }
        r
    }

    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let started = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("blob upload starts");
        assert_eq!(started.status(), StatusCode::ACCEPTED, "{:?}", started);
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload location")
            .to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.url())
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = self
            .http
            .put(format!("{url}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec());
        let done = self.authorize(put).send().await.expect("blob upload");
        assert_eq!(
            done.status(),
            StatusCode::CREATED,
            "{:?}",
            done.text().await
        );
        digest
    }

    /// Puts manifest bytes under `reference` with `media_type`; returns the digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let r = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("manifest put");
        let status = r.status();
        assert_eq!(status, StatusCode::CREATED, "{:?}", r.text().await);
        sha256(bytes)
    }

    /// One platform's image: a random layer, a config, a manifest of `media_type`. Returns the
    /// manifest's bytes (not yet pushed).
    async fn image_manifest(&self, repo: &str, media_type: &str, arch: &str) -> Vec<u8> {
        let mut layer = vec![0u8; 256];
        rand::rng().fill_bytes(&mut layer);
        let layer_digest = self.push_blob(repo, &layer).await;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {}
        }))
        .expect("config json");
        let config_digest = self.push_blob(repo, &config).await;
        let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
            (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
            )
        };
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": layer.len()}]
        }))
        .expect("manifest json")
    }

    /// Pushes a new, unique image of `kind` as `repo:tag`; returns its digest.
    pub async fn push_image(&self, repo: &str, tag: &str, kind: ImageKind) -> String {
        match kind {
            ImageKind::OciManifest | ImageKind::DockerManifest => {
                let media_type = if kind == ImageKind::OciManifest {
                    OCI_MANIFEST
                } else {
                    DOCKER_MANIFEST
                };
                let bytes = self.image_manifest(repo, media_type, "amd64").await;
                self.put_manifest(repo, tag, media_type, &bytes).await
            }
            ImageKind::OciIndex => {
                let mut entries = Vec::new();
                for arch in ["amd64", "arm64"] {
                    let bytes = self.image_manifest(repo, OCI_MANIFEST, arch).await;
                    let digest = self
                        .put_manifest(repo, &sha256(&bytes), OCI_MANIFEST, &bytes)
                        .await;
                    entries.push(serde_json::json!({
                        "mediaType": OCI_MANIFEST,
                        "digest": digest,
                        "size": bytes.len(),
                        "platform": {"architecture": arch, "os": "linux"}
                    }));
                }
                let index = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": entries
                }))
                .expect("index json");
                self.put_manifest(repo, tag, OCI_INDEX, &index).await
            }
        }
    }

    /// The manifest `reference` of `repo`: its Content-Type and bytes, `None` when missing.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let r = self
            .request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .expect("manifest get");
        if r.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(r.status().is_success(), "manifest get: {}", r.status());
        let media_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((media_type, r.bytes().await.expect("manifest body").to_vec()))
    }

    /// The digest `repo:reference` points at, `None` when missing.
    pub async fn digest(&self, repo: &str, reference: &str) -> Option<String> {
        self.manifest(repo, reference)
            .await
            .map(|(_, bytes)| sha256(&bytes))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

const TOKEN_SERVICE: &str = "test-registry";
const TOKEN_ISSUER: &str = "test-token-issuer";

/// A token service as Distribution's `auth: token` expects one: `GET /token?service=&scope=`
/// with basic auth answers `{"token": JWT}`, the JWT signed RS256 by a key whose self-signed
/// certificate (made with the `openssl` command) is the registry's `rootcertbundle` and travels
/// in the header's `x5c`.
struct TokenServer {
    addr: SocketAddr,
    state: Arc<TokenState>,
    task: tokio::task::JoinHandle<()>,
}

struct TokenState {
    user: String,
    password: String,
    repositories: Vec<String>,
    key_pem: PathBuf,
    cert_pem: PathBuf,
    cert_der_b64: String,
    issued: AtomicUsize,
}

impl TokenServer {
    async fn start(
        dir: &std::path::Path,
        user: &str,
        password: &str,
        repositories: &[&str],
    ) -> TokenServer {
        let key_pem = dir.join("token-key.pem");
        let cert_pem = dir.join("token-cert.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=test-token-issuer",
                "-keyout",
            ])
            .arg(&key_pem)
            .arg("-out")
            .arg(&cert_pem)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "openssl req: {made:?}");
        let der = std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert_pem)
            .output()
            .expect("openssl x509");
        assert!(der.status.success(), "openssl x509: {der:?}");
        use base64::Engine as _;
        let state = Arc::new(TokenState {
            user: user.to_string(),
            password: password.to_string(),
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
            key_pem,
            cert_pem,
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(&der.stdout),
            issued: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("token service listens");
        let addr = listener.local_addr().expect("token address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenServer { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenState {
    /// A JWT granting pull and push on `repositories`, signed with the service's key.
    fn mint(&self, repositories: &[String], subject: &str) -> String {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = chrono::Utc::now().timestamp();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64]});
        let access: Vec<serde_json::Value> = repositories
            .iter()
            .map(|r| serde_json::json!({"type": "repository", "name": r, "actions": ["pull", "push"]}))
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": uuid::Uuid::now_v7().to_string(), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key_pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl dgst");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(signing_input.as_bytes())
                .expect("sign input");
        }
        let out = child.wait_with_output().expect("signature");
        assert!(out.status.success(), "openssl dgst failed");
        format!("{signing_input}.{}", b64(&out.stdout))
    }
}

/// `GET /token?service=...&scope=repository:<name>:<actions>` with basic auth.
async fn token(State(state): State<Arc<TokenState>>, headers: HeaderMap, uri: Uri) -> Response {
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", state.user, state.password))
    );
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if given != expected {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"details":"incorrect username or password"}"#,
            ))
            .expect("response");
    }
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let names: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, v)| v.split(':').nth(1).map(str::to_string))
        .filter(|name| state.repositories.contains(name))
        .collect();
    state.issued.fetch_add(1, Ordering::SeqCst);
    let jwt = tokio::task::block_in_place(|| state.mint(&names, &state.user));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({"token": jwt, "expires_in": 300}).to_string(),
        ))
        .expect("response")
}

/// An HTTP proxy in front of the registry that can answer the next requests with an error
/// status instead of forwarding them (`fail_next`), counting the answers it injected.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    /// (method, status, how many more) — the next matching requests get `status`.
    faults: Mutex<Vec<(Method, u16, usize)>>,
    failed: AtomicUsize,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            faults: Mutex::new(Vec::new()),
            failed: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `count` requests with `method` are answered `status` (not forwarded).
    pub fn fail_next(&self, method: Method, status: u16, count: usize) {
        self.state
            .faults
            .lock()
            .expect("faults")
            .push((method, status, count));
    }

    /// Requests answered with an injected status so far.
    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let injected = {
        let mut faults = state.faults.lock().expect("faults");
        let hit = faults
            .iter_mut()
            .find(|(m, _, left)| *m == method && *left > 0)
            .map(|f| {
                f.2 -= 1;
                f.1
            });
        faults.retain(|f| f.2 > 0);
        hit
    };
    if let Some(status) = injected {
        state.failed.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"errors":[{"code":"UNAVAILABLE","message":"injected by the test","detail":{}}]}"#,
            ))
            .expect("response");
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut request = state
        .http
        .request(method, format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(r) => {
            let mut out = Response::builder().status(r.status());
            for (name, value) in r.headers() {
                if name != "transfer-encoding" && name != "content-length" {
                    out = out.header(name, value);
                }
            }
            let bytes = r.bytes().await.unwrap_or_default();
            out.body(Body::from(bytes)).expect("response")
        }
        Err(_) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .expect("response"),
    }
}
