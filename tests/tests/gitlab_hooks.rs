//! `POST /hooks/gitlab` refuses what it must, with a clear status, and stores nothing it refuses:
//! a wrong or missing token (401), a body over the limit (413), garbage, truncated JSON and
//! payloads that do not match their event (400). Events shepherd does not use are acknowledged
//! and not stored; a store that cannot take the event answers 503 (GitLab retries).

use std::time::Duration;

use serde_json::json;
use shepherd_tests::gitlab::{GitLabDouble, send_hook};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret-token";

async fn start(extra: &str) -> (GitLabDouble, TestStore, Shepherd) {
    let gitlab = GitLabDouble::start().await;
    let store = TestStore::new(Backend::Sqlite).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = extra.to_string();
    config
        .env
        .push(("TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    let shepherd = Shepherd::serve(&config).await;
    shepherd.wait_http(WAIT).await;
    (gitlab, store, shepherd)
}

fn note_payload(text: &str) -> serde_json::Value {
    json!({
        "object_kind": "note",
        "event_type": "note",
        "user": {"id": 7, "name": "Alice", "username": "alice", "avatar_url": null, "email": "[REDACTED]"},
        "project_id": 3,
        "project": {"id": 3, "name": "p", "path_with_namespace": "g/p", "web_url": "https://gitlab.example/g/p"},
        "object_attributes": {"id": 11, "note": text, "noteable_type": "MergeRequest", "system": false, "action": "create"},
        "merge_request": {"id": 99, "iid": 4}
    })
}

async fn post(
    shepherd: &Shepherd,
    token: Option<&str>,
    event: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/gitlab", shepherd.base_url()))
        .header("Content-Type", "application/json")
        .header("X-Gitlab-Event", event)
        .body(body);
    if let Some(t) = token {
        req = req.header("X-Gitlab-Token", t);
    }
    let r = req.send().await.expect("shepherd answers");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_refused_and_nothing_is_stored() {
    let (_gitlab, store, shepherd) = start(
        "[gitlab_comments]\nwebhook_secret_env = \"TEST_WEBHOOK_SECRET\"\nmax_body_bytes = 65536\n",
    )
    .await;
    let valid = serde_json::to_vec(&note_payload("@shepherd ping")).expect("json");

    let (status, body) = post(&shepherd, Some("wrong"), "Note Hook", valid.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid X-Gitlab-Token");
    let (status, _) = post(&shepherd, None, "Note Hook", valid.clone()).await;
    assert_eq!(status, 401);
    // Same length as the secret, one byte off.
    let (status, _) = post(&shepherd, Some("s3cret-tokem"), "Note Hook", valid.clone()).await;
    assert_eq!(status, 401);

    let huge = note_payload(&"x".repeat(100_000));
    let (status, body) = post(
        &shepherd,
        Some(SECRET),
        "Note Hook",
        serde_json::to_vec(&huge).expect("json"),
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        body["error"].as_str().unwrap_or("").contains("65536"),
        "{body}"
    );

    let (status, body) = post(
        &shepherd,
        Some(SECRET),
        "Note Hook",
        b"\x00\xffgarbage".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap_or("").contains("not JSON"),
        "{body}"
    );
    let truncated = valid[..valid.len() / 2].to_vec();
    let (status, _) = post(&shepherd, Some(SECRET), "Note Hook", truncated).await;
    assert_eq!(status, 400);
    let (status, body) = post(&shepherd, Some(SECRET), "Pipeline Hook", valid.clone()).await;
    assert_eq!(status, 400, "a note payload under a pipeline header");
    assert!(
        body["error"].as_str().unwrap_or("").contains("object_kind"),
        "{body}"
    );
    let no_attributes = json!({"object_kind": "note", "user": {"id": 1, "username": "a"}, "project": {"id": 1, "path_with_namespace": "g/p"}});
    let (status, body) = post(
        &shepherd,
        Some(SECRET),
        "Note Hook",
        serde_json::to_vec(&no_attributes).expect("json"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("object_attributes"),
        "{body}"
    );

    let (status, body) = post(&shepherd, Some(SECRET), "Push Hook", b"{}".to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ignored");

    assert_eq!(
        store.count("SELECT COUNT(*) FROM requests").await,
        0,
        "nothing stored"
    );
    for (outcome, n) in [
        ("unauthorized", 3.0),
        ("too_large", 1.0),
        ("malformed", 3.0),
    ] {
        assert_eq!(
            shepherd
                .metric(&format!(
                    "shepherd_gitlab_webhooks_total{{event=\"note\",outcome=\"{outcome}\"}}"
                ))
                .await,
            Some(n),
            "{outcome}"
        );
    }

    // And the valid one is stored, once, even when sent twice with the same headers.
    let url = format!("{}/hooks/gitlab", shepherd.base_url());
    let payload = note_payload("@shepherd ping");
    assert_eq!(
        send_hook(&url, SECRET, "Note Hook", &payload).await,
        Ok(202)
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_every_delivery_is_refused_and_without_comments_there_is_no_endpoint() {
    // [gitlab_comments] names a variable that is not set: no secret, so no delivery is trusted.
    let (_g1, store, shepherd) =
        start("[gitlab_comments]\nwebhook_secret_env = \"UNSET_WEBHOOK_SECRET\"\n").await;
    let body = serde_json::to_vec(&note_payload("@shepherd ping")).expect("json");
    let (status, _) = post(&shepherd, Some(""), "Note Hook", body.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = post(&shepherd, None, "Note Hook", body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(store.count("SELECT COUNT(*) FROM requests").await, 0);

    let (_g2, _store2, plain) = start("").await;
    let (status, _) = post(&plain, Some(SECRET), "Note Hook", body).await;
    assert_eq!(status, 404, "no [gitlab_comments]: no webhook endpoint");
}
