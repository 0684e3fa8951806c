//! `store::message_known`: whether a front end already handled a message it sees again after a
//! restart, found by the message's key prefix among stored requests and replies — on both stores,
//! with keys that contain LIKE's wildcards.

use shepherd_core::Origin;
use shepherd_core::outbox::Outbox;
use shepherd_core::store::{Store, message_known};
use shepherd_tests::harness::{Backend, TestStore};
use shepherd_tests::on_both_stores;

async fn known_by_prefix(backend: Backend) {
    let test_store = TestStore::new(backend).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    let outbox = Outbox::new(store.clone());
    let room = Origin::new("matrix", "!r:localhost");
    // Matrix event ids are url-safe base64: `_` is LIKE's one-character wildcard.
    let base = "matrix:$ab_cd";
    assert!(!message_known(&store, base).await.expect("query"));
    outbox
        .push(&room, "pong", Some("matrix:$abXcd:1234:1:0"), None)
        .await
        .expect("push");
    assert!(
        !message_known(&store, base).await.expect("query"),
        "`_` matches only itself"
    );
    assert!(
        !message_known(&store, "matrix:$ab").await.expect("query"),
        "a prefix of another id is not it"
    );
    outbox
        .push(&room, "pong", Some("matrix:$ab_cd:1234:1:0"), None)
        .await
        .expect("push");
    assert!(message_known(&store, base).await.expect("query"));
    assert!(!message_known(&store, "matrix:$ab_c").await.expect("query"));
    assert!(
        !message_known(&store, "matrix:%").await.expect("query"),
        "`%` matches only itself"
    );
    store.close().await;
}
on_both_stores!(messages_are_known_by_their_key_prefix, known_by_prefix);
