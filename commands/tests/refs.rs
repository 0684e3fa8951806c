//! Pipeline and merge request references, overrides and matchers: every accepted form, the
//! forms that must be refused, and `Display` / `FromStr`.

use shepherd_commands::{MatchOp, Matcher, MrRef, PipelineRef, Var};

fn pipe(project: Option<&str>, id: u64) -> Option<PipelineRef> {
    Some(PipelineRef {
        project: project.map(Into::into),
        id,
    })
}

fn mr(project: Option<&str>, iid: u64) -> Option<MrRef> {
    Some(MrRef {
        project: project.map(Into::into),
        iid,
    })
}

#[test]
fn pipeline_forms() {
    let cases = [
        ("123", pipe(None, 123)),
        (
            "https://gitlab.com/group/sub/project/-/pipelines/123",
            pipe(Some("group/sub/project"), 123),
        ),
        (
            "https://gitlab.com/group/sub/project/pipelines/123",
            pipe(Some("group/sub/project"), 123),
        ),
        (
            "http://localhost:8080/g/p/-/pipelines/5/",
            pipe(Some("g/p"), 5),
        ),
        (
            "https://gitlab.com/g/p/-/pipelines/5?tab=failures",
            pipe(Some("g/p"), 5),
        ),
        (
            "https://gitlab.com/g/p/-/pipelines/5#jobs",
            pipe(Some("g/p"), 5),
        ),
        (
            "group/project/pipelines/42",
            pipe(Some("group/project"), 42),
        ),
        (
            "group/project/-/pipelines/42",
            pipe(Some("group/project"), 42),
        ),
        (
            "my.group/sub_group/pro-ject.v2/pipelines/1",
            pipe(Some("my.group/sub_group/pro-ject.v2"), 1),
        ),
        ("18446744073709551615", pipe(None, u64::MAX)),
    ];
    for (text, expected) in cases {
        assert_eq!(PipelineRef::parse(text), expected, "{text}");
    }
}

#[test]
fn pipeline_refusals() {
    for text in [
        "",
        "0",
        "-1",
        "12a",
        "18446744073709551616",
        "pipelines/abc",
        "project/pipelines/1",
        "g/p/pipelines/",
        "g/p/pipelines/abc",
        "g/p/jobs/1",
        "g/p/-/-/pipelines/1",
        "g/-p/pipelines/1",
        "https://gitlab.com/g/p/-/pipelines",
        "https:///g/p/-/pipelines/1",
        "ftp://h/g/p/-/pipelines/1",
        "g/p!1",
        "g//p/pipelines/1",
        "g/p/pipelines/1 ",
        "g/ü/pipelines/1",
    ] {
        assert_eq!(PipelineRef::parse(text), None, "{text}");
    }
}

#[test]
fn mr_forms() {
    let cases = [
        ("!12", mr(None, 12)),
        ("group/project!12", mr(Some("group/project"), 12)),
        ("a/b/c!1", mr(Some("a/b/c"), 1)),
        (
            "https://gitlab.com/group/project/-/merge_requests/12",
            mr(Some("group/project"), 12),
        ),
        (
            "https://gitlab.com/group/project/merge_requests/12",
            mr(Some("group/project"), 12),
        ),
        (
            "https://gitlab.com/g/s/p/-/merge_requests/12/diffs",
            mr(Some("g/s/p"), 12),
        ),
        (
            "https://gitlab.com/g/p/-/merge_requests/12#note_99",
            mr(Some("g/p"), 12),
        ),
        ("g/p/-/merge_requests/3", mr(Some("g/p"), 3)),
    ];
    for (text, expected) in cases {
        assert_eq!(MrRef::parse(text), expected, "{text}");
    }
    for text in [
        "12",
        "!0",
        "!",
        "p!1",
        "g/p!",
        "g/p!x",
        "!1!2",
        "g/p/merge_requests/x",
        "https://h/g/p/-/issues/1",
    ] {
        assert_eq!(MrRef::parse(text), None, "{text}");
    }
}

#[test]
fn display_forms() {
    assert_eq!(
        pipe(Some("g/s/p"), 9).unwrap().to_string(),
        "g/s/p/pipelines/9"
    );
    assert_eq!(pipe(None, 9).unwrap().to_string(), "9");
    assert_eq!(mr(Some("g/p"), 3).unwrap().to_string(), "g/p!3");
    assert_eq!(mr(None, 3).unwrap().to_string(), "!3");
    let v = |k: &str, val: &str| Var {
        key: k.into(),
        value: val.into(),
    };
    assert_eq!(v("A", "1").to_string(), "A=1");
    assert_eq!(v("A", "").to_string(), "A=\"\"");
    assert_eq!(v("A", "x y").to_string(), "A=\"x y\"");
    assert_eq!(v("A", "q\"b\\s\nt]").to_string(), r#"A="q\"b\\s\nt]""#);
    let m = Matcher {
        name: "severity".into(),
        op: MatchOp::Regex,
        value: "critical|page".into(),
    };
    assert_eq!(m.to_string(), r#"severity=~"critical|page""#);
    assert_eq!(MatchOp::NotEq.to_string(), "!=");
    assert_eq!(MatchOp::NotRegex.as_str(), "!~");
    assert_eq!(MatchOp::Eq.as_str(), "=");
}

#[test]
fn from_str() {
    assert_eq!(
        "severity=~\"critical|page\"".parse::<Matcher>().unwrap(),
        Matcher {
            name: "severity".into(),
            op: MatchOp::Regex,
            value: "critical|page".into()
        }
    );
    assert_eq!(
        "env!=dev".parse::<Matcher>().unwrap(),
        Matcher {
            name: "env".into(),
            op: MatchOp::NotEq,
            value: "dev".into()
        }
    );
    assert!("1x=y".parse::<Matcher>().is_err());
    assert!("a=b c=d".parse::<Matcher>().is_err());
    assert!("\"a=b\"".parse::<Matcher>().is_err());
    assert_eq!(
        "g/p/pipelines/4".parse::<PipelineRef>().ok(),
        pipe(Some("g/p"), 4)
    );
    assert!("x".parse::<PipelineRef>().is_err());
    assert_eq!("g/p!4".parse::<MrRef>().ok(), mr(Some("g/p"), 4));
    assert!("4".parse::<MrRef>().is_err());
}
