//! Fuzz target: a GitLab webhook delivery as `POST /hooks/gitlab` decodes it — the event
//! header (chosen by the first byte) and the body — and, when it would be stored, as the
//! workers read it later. Nothing may panic, and what decodes must read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shepherd_core::gitlab::webhook::{Event, Stored, decode};

const HEADERS: &[&str] = &[
    "Note Hook",
    "Confidential Note Hook",
    "Merge Request Hook",
    "Pipeline Hook",
    "Job Hook",
    "Push Hook",
];

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let header = HEADERS[usize::from(*first) % HEADERS.len()];
    let Ok(delivery) = decode(header, body) else {
        return;
    };
    // Stored as `{"event": label, "body": ...}` and read back by a worker.
    let stored: Stored = delivery
        .payload
        .decode()
        .expect("a stored delivery is JSON");
    assert_eq!(stored.event, delivery.kind.label());
    // The body as it came, but for the JSON whitespace around it.
    assert_eq!(stored.body.get().as_bytes(), body.trim_ascii());
    let event = stored
        .event()
        .expect("a delivery that decoded is readable by the workers");
    if let Event::Pipeline(p) = event {
        let _ = p.pipeline();
        let _ = p.failed_jobs();
    }
});
