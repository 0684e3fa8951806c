//! Pipeline and merge request references, overrides and matchers: every accepted form, the
//! forms that must be refused, and `Display` / `FromStr`.

use shepherd_commands::{MatchOp, Matcher, MrRef, PipelineRef, Var};

fn pipe(project: Option<&str>, id: u64) -> Option<PipelineRef> {
    Some(PipelineRef {
        instance: None,
        project: project.map(Into::into),
        id,
    })
}

fn mr(project: Option<&str>, iid: u64) -> Option<MrRef> {
    Some(MrRef {
        instance: None,
        project: project.map(Into::into),
        iid,
    })
}

/// What a pasted URL's instance is: its scheme and authority, in lower case.
fn instance_of(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let after = lower
        .strip_prefix("https://")
        .or(lower.strip_prefix("http://"))?;
    let host = after.split('/').next()?;
    Some(format!("{}{host}", &lower[..lower.len() - after.len()]))
}

#[test]
fn a_pasted_url_keeps_its_instance_and_prints_back_as_a_url() {
    let cases = [
        ("https://gitlab.com/g/p/-/pipelines/1", "https://gitlab.com"),
        (
            "HTTPS://GitLab.Example.COM/g/p/pipelines/1",
            "https://gitlab.example.com",
        ),
        (
            "http://127.0.0.1:8080/g/p/-/pipelines/1/",
            "http://127.0.0.1:8080",
        ),
        (
            "https://evil.example/g/p/-/pipelines/1?x=y",
            "https://evil.example",
        ),
        (
            "https://user@evil.example/g/p/-/pipelines/1",
            "https://user@evil.example",
        ),
    ];
    for (text, instance) in cases {
        let p = PipelineRef::parse(text).expect(text);
        assert_eq!(p.instance.as_deref(), Some(instance), "{text}");
        assert_eq!(p.to_string(), format!("{instance}/g/p/-/pipelines/1"));
        assert_eq!(
            PipelineRef::parse(&p.to_string()),
            Some(p.clone()),
            "{text}"
        );
    }
    let m = MrRef::parse("https://other.example/g/p/-/merge_requests/4/diffs").expect("mr");
    assert_eq!(m.instance.as_deref(), Some("https://other.example"));
    assert_eq!(
        m.to_string(),
        "https://other.example/g/p/-/merge_requests/4"
    );
    assert_eq!(MrRef::parse(&m.to_string()), Some(m));
    // The forms without a host name no instance.
    assert_eq!(
        PipelineRef::parse("g/p/pipelines/1").and_then(|p| p.instance),
        None
    );
    assert_eq!(MrRef::parse("g/p!1").and_then(|m| m.instance), None);
    // A host with a backslash is not a URL of any instance.
    assert_eq!(PipelineRef::parse("https://a\\b/g/p/-/pipelines/1"), None);
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
        let expected = expected.map(|mut p| {
            p.instance = instance_of(text);
            p
        });
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
        let expected = expected.map(|mut m| {
            m.instance = instance_of(text);
            m
        });
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
