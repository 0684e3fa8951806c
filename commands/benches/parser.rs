//! Parser throughput on a representative mix of messages, reported as lines (messages) per second.
//!
//! Each iteration addresses one message for its front end and parses every command in it, which
//! is the work the dispatcher does per inbound message.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shepherd_commands::{Addressing, Frontend, MrRef, ParseContext, addressed, parse};

const MIX: &[(Frontend, &str)] = &[
    (Frontend::Chat, "!ping"),
    (Frontend::Chat, "shepherd: status 123456"),
    (
        Frontend::Chat,
        "!retrigger https://gitlab.com/redhat/red-hat-ci-tools/kernel/cki-internal-pipelines/cki-trusted-contributors/-/pipelines/1234567 DEBUG=1 ARCH_CONFIG=x86_64 SKIP_TESTS=true",
    ),
    (
        Frontend::Chat,
        "!retrigger group/project/pipelines/42 [kernel_version=6.9.0 tests_regex=\"^xfs.*\" skip_beaker=false]",
    ),
    (
        Frontend::Console,
        "silence alertname=DiskFull instance=~\"web-[0-9]+\" for 2h30m \"disk is being replaced\"",
    ),
    (
        Frontend::GitLabComment,
        "Thanks for the fix! The log said:\n\n```\n@shepherd retrigger 1\nerror: something\n```\n\n> @shepherd test\n\n@shepherd test DEBUG=1\n",
    ),
];

fn bench(c: &mut Criterion) {
    let addr = Addressing {
        bot_name: "shepherd",
        prefix: "!",
        user_id: None,
    };
    let ctx = ParseContext::in_mr(MrRef {
        instance: None,
        project: Some("group/project".into()),
        iid: 12,
    });
    let mut group = c.benchmark_group("parser");
    group.throughput(Throughput::Elements(MIX.len() as u64));
    group.bench_function("mix", |b| {
        b.iter(|| {
            for (frontend, message) in MIX {
                for text in addressed(*frontend, black_box(message), &addr) {
                    let _ = black_box(parse(text, &ctx));
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
