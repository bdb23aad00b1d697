use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", &|k| {
        (k == "KEY").then(|| "sk-up".to_owned())
    })
}

#[test]
fn replicas_each_take_the_concurrency() {
    let c = parse("[upstream]\nurls = [\"http://a:1/\", \"http://b:1\"]\nconcurrency = 8\n[daemon]\nprefix_grouping = false").unwrap();
    assert_eq!(c.upstream.url, "http://a:1");
    assert_eq!(c.upstream.replicas, ["http://a:1", "http://b:1"]);
    assert_eq!(c.upstream.concurrency, 16);
    assert!(c.upstream_url_given);
    assert!(!c.daemon.prefix_grouping);
    assert!(parse("").unwrap().daemon.prefix_grouping);
    assert!(parse("[upstream]\nurls = []").is_err());
    assert!(parse("[upstream]\nurls = [\"ftp://x\"]").is_err());
    let one = c.with_upstream_url("http://c:1").unwrap();
    assert!(one.upstream.replicas.is_empty());
    assert_eq!(one.upstream.concurrency, 8);
}

#[test]
fn the_spec_example_parses() {
    let c = parse(
        r#"
listen = "127.0.0.1:8080"
database_url = "postgres://postgres@127.0.0.1:5432/fusillade"
[upstream]
url = "http://127.0.0.1:8000"
api_key_env = "KEY"
concurrency = 64
[models."gpt-4o"]
url = "https://api.example.com/"
concurrency = 8
[daemon]
max_retries = 5
backoff_ms = 500
max_backoff_ms = 30000
[auth]
keys = { "sk-alice" = "alice", "sk-bob" = "bob" }
"#,
    )
    .unwrap();
    assert_eq!(c.listen, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(c.route("other").url, "http://127.0.0.1:8000");
    assert_eq!(c.route("other").concurrency, 64);
    let g = c.route("gpt-4o");
    assert_eq!(g.url, "https://api.example.com");
    assert_eq!(g.concurrency, 8);
    // Another origin: the default route's key is not sent there.
    assert_eq!(g.api_key, None);
    assert_eq!(c.route("other").api_key.as_deref(), Some("sk-up"));
    assert_eq!(c.daemon.retry.max_retries, 5);
    assert!(
        !format!("{g:?}").contains("sk-up"),
        "keys stay out of Debug"
    );
    assert_eq!(c.auth.unwrap()["sk-bob"], "bob");
}

#[test]
fn a_route_inherits_the_key_only_on_the_same_origin() {
    let c = parse(
        r#"
[upstream]
url = "http://up:8000"
api_key_env = "KEY"
[models.same]
url = "http://up:8000/"
concurrency = 2
[models.inherits]
concurrency = 3
[models.port]
url = "http://up:8001"
[models.scheme]
url = "https://up:8000"
[models.host]
url = "http://other:8000"
[models.named]
url = "http://other:8000"
api_key_env = "KEY"
"#,
    )
    .unwrap();
    for m in ["same", "inherits", "named"] {
        assert_eq!(c.route(m).api_key.as_deref(), Some("sk-up"), "{m}");
    }
    for m in ["port", "scheme", "host"] {
        assert_eq!(c.route(m).api_key, None, "{m}");
    }
}

#[test]
fn the_upstream_flag_drops_keys_of_other_origins() {
    let c = parse("[upstream]\nurl = \"http://up:8000\"\napi_key_env = \"KEY\"").unwrap();
    let same = c.clone().with_upstream_url("http://up:8000/").unwrap();
    assert_eq!(same.upstream.api_key.as_deref(), Some("sk-up"));
    let other = c.with_upstream_url("http://elsewhere:8000").unwrap();
    assert_eq!(other.upstream.api_key, None);
    assert_eq!(
        other.with_api_key("sk-new").route("m").api_key.as_deref(),
        Some("sk-new")
    );
    // The flag's key goes to the default route's origin only.
    let c = parse("[upstream]\nurl = \"http://up:1\"\n[models.far]\nurl = \"http://far:1\"\n[models.near]\nconcurrency = 1")
        .unwrap()
        .with_api_key("sk-flag");
    assert_eq!(c.route("near").api_key.as_deref(), Some("sk-flag"));
    assert_eq!(c.route("far").api_key, None);
}

#[test]
fn listen_resolves_a_host_name() {
    let c = parse("listen = \"localhost:0\"").unwrap();
    assert!(c.listen.unwrap().ip().is_loopback());
    assert_eq!(c.listen.unwrap().port(), 0);
}

#[test]
fn an_empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.upstream.url, DEFAULT_UPSTREAM);
    assert!(c.auth.is_none());
}

fn message(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_key() {
    assert!(message("lisen = \"x\"").contains("lisen"));
    assert!(message("[upstream]\nconcurency = 3").contains("concurency"));
    assert!(message("[upstream]\nconcurrency = \"many\"").contains("concurrency"));
    assert!(message("[upstream]\nconcurrency = 0").contains("upstream.concurrency"));
    assert!(message("[upstream]\nurl = \"ftp://x\"").contains("upstream.url"));
    assert!(message("[upstream]\napi_key_env = \"NOPE\"").contains("NOPE"));
    assert!(message("listen = \"nowhere\"").contains("listen"));
    assert!(message("[daemon]\nbackoff_ms = 10\nmax_backoff_ms = 5").contains("max_backoff_ms"));
    assert!(message("[auth]\nkeys = {}").contains("auth.keys"));
    assert!(
        message("[auth]\nkeys = { \"sk-a\" = \"alice\" }\nadmins = [\"bob\"]")
            .contains("auth.admins")
    );
    assert!(message("[daemon]\nheartbeat_ms = 0").contains("daemon.heartbeat_ms"));
    assert!(message("[models.m]\nconcurrency = -1").contains("concurrency"));
    // One line, so the binary can print it as is.
    assert!(!message("[upstream]\nconcurency = 3").contains('\n'));
}

#[test]
fn the_stale_window_must_span_three_heartbeats() {
    let d = parse("[daemon]\nheartbeat_ms = 100\nstale_after_ms = 300")
        .unwrap()
        .daemon;
    assert_eq!(d.heartbeat, Duration::from_millis(100));
    assert_eq!(d.stale_after, Duration::from_millis(300));
    let m = message("[daemon]\nheartbeat_ms = 100\nstale_after_ms = 299");
    assert!(
        m.contains("daemon.stale_after_ms")
            && m.contains("daemon.heartbeat_ms")
            && m.contains("299 ms")
            && m.contains("300 ms"),
        "{m}"
    );
    // Against the default heartbeat (2 s) as well.
    let m = message("[daemon]\nstale_after_ms = 5000");
    assert!(
        m.contains("daemon.stale_after_ms") && m.contains("6000 ms"),
        "{m}"
    );
    let defaults = DaemonSettings::default();
    assert!(defaults.stale_after >= defaults.heartbeat * STALE_HEARTBEATS);
}

#[test]
fn api_section() {
    let c = parse("[api]\nmax_upload_bytes = 1000\nendpoints = [\"/v1/embeddings\"]").unwrap();
    assert_eq!(c.api.max_upload_bytes, 1000);
    assert_eq!(c.api.endpoints, ["/v1/embeddings"]);
    assert_eq!(parse("").unwrap().api, ApiSettings::default());
    assert!(message("[api]\nmax_upload_bytes = 0").contains("api.max_upload_bytes"));
    assert!(message("[api]\nendpoints = []").contains("api.endpoints"));
    assert!(message("[api]\nendpoints = [\"v1/x\"]").contains("api.endpoints"));
    assert!(message("[api]\nmax_upload = 1").contains("max_upload"));
    let paced = parse("[api]\nbatch_read_interval_ms = 0").unwrap();
    assert_eq!(paced.api.batch_read_interval, Duration::ZERO);
    assert_eq!(
        parse("").unwrap().api.batch_read_interval,
        Duration::from_millis(25)
    );
}

#[test]
fn api_upload_bounds() {
    let c = parse(
        "[api]\nmax_concurrent_uploads = 3\nupload_idle_timeout_secs = 5\n\
         upload_spool_dir = \"/var/spool/fusillade\"",
    )
    .unwrap();
    assert_eq!(c.api.max_concurrent_uploads, 3);
    assert_eq!(c.api.upload_idle_timeout, Duration::from_secs(5));
    assert_eq!(
        c.api.upload_spool_dir.as_deref(),
        Some(Path::new("/var/spool/fusillade"))
    );
    let d = parse("").unwrap().api;
    assert_eq!(d.max_concurrent_uploads, 8);
    assert_eq!(d.upload_idle_timeout, Duration::from_secs(30));
    assert_eq!(d.upload_spool_dir, None);
    for (text, key) in [
        ("max_concurrent_uploads = 0", "api.max_concurrent_uploads"),
        (
            "upload_idle_timeout_secs = 0",
            "api.upload_idle_timeout_secs",
        ),
        ("upload_spool_dir = \"\"", "api.upload_spool_dir"),
        ("max_concurrent_uploads = -1", "max_concurrent_uploads"),
        ("upload_idle_timeout = 5", "upload_idle_timeout"),
    ] {
        let m = message(&format!("[api]\n{text}"));
        assert!(m.contains(key), "{text}: {m}");
    }
}

#[test]
fn upstream_flag_overrides_every_route() {
    let c = parse("[models.m]\nurl = \"http://a:1\"")
        .unwrap()
        .with_upstream_url("http://127.0.0.1:9/")
        .unwrap();
    assert_eq!(c.route("m").url, "http://127.0.0.1:9");
    assert_eq!(c.route("x").url, "http://127.0.0.1:9");
    assert!(parse("").unwrap().with_upstream_url("nope").is_err());
}

#[test]
fn owners_and_priority_hints_are_read_and_checked() {
    let c = parse(
        "[owners.\"alice\"]\nweight = 3\nmax_in_flight = 10\n\
         [models.m]\npriority_hint = \"vllm\"",
    )
    .unwrap();
    let s = c.schedule();
    assert_eq!((s.weight("alice"), s.weight("bob")), (3, 1));
    assert_eq!((s.cap("alice"), s.cap("bob")), (Some(10), None));
    assert_eq!(
        c.route("m").priority_hint,
        Some(crate::upstream::priority::PriorityHint::Vllm)
    );
    assert_eq!(c.route("x").priority_hint, None);
    for (text, key) in [
        ("[owners.a]\nweight = 0", "owners.\"a\".weight"),
        (
            "[owners.a]\nmax_in_flight = 0",
            "owners.\"a\".max_in_flight",
        ),
        (
            "[upstream]\npriority_hint = \"x\"",
            "upstream.priority_hint",
        ),
    ] {
        let m = message(text);
        assert!(m.contains(key), "{text}: {m}");
    }
}

#[test]
fn escalation_rules_are_read_and_checked() {
    let base = "[upstream]\nurl = \"http://a:1\"\n";
    let c = parse(&format!(
        "{base}[models.x]\nescalate_to = \"y\"\nescalate_within = \"15m\"\n[models.y]\nconcurrency = 2"
    ))
    .unwrap();
    let r = &c.escalations["x"];
    assert_eq!(r.to, "y");
    assert_eq!(r.within, Duration::from_secs(900));
    assert_eq!(r.wait, crate::domain::escalation::DEFAULT_WAIT);
    assert!(!c.escalations.contains_key("y"));
    let c = parse(&format!(
        "{base}[models.x]\nescalate_to = \"z\"\nescalate_within = \"90s\"\nescalate_wait = \"500ms\""
    ))
    .unwrap();
    assert_eq!(c.escalations["x"].within, Duration::from_secs(90));
    assert_eq!(c.escalations["x"].wait, Duration::from_millis(500));
    let err = |text: &str| parse(text).unwrap_err().to_string();
    assert!(
        err(&format!(
            "{base}[models.x]\nescalate_to = \"x\"\nescalate_within = \"1m\""
        ))
        .contains("escalates to itself")
    );
    assert!(
        err(&format!(
            "{base}[models.x]\nescalate_to = \"y\"\nescalate_within = \"1m\"\n\
         [models.y]\nescalate_to = \"x\"\nescalate_within = \"1m\""
        ))
        .contains("circle")
    );
    assert!(
        err(&format!("{base}[models.x]\nescalate_to = \"y\""))
            .contains("models.\"x\".escalate_within")
    );
    assert!(
        err(&format!(
            "{base}[models.x]\nescalate_to = \"y\"\nescalate_within = \"15 minutes\""
        ))
        .contains("whole number with a unit")
    );
    assert!(
        err(&format!("{base}[models.x]\nescalate_within = \"1m\"")).contains("needs escalate_to")
    );
    assert!(err("[upstream]\nescalate_to = \"y\"").contains("upstream.escalate_to"));
    // Without an [upstream] url, the model escalated to needs a section.
    assert!(
        err("[models.x]\nescalate_to = \"y\"\nescalate_within = \"1m\"")
            .contains("no [models.\"y\"] section")
    );
    assert!(
        parse("[models.x]\nescalate_to = \"y\"\nescalate_within = \"1m\"\n[models.y]\n").is_ok()
    );
    assert_eq!(super::parse_duration("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(super::parse_duration("m"), None);
    assert_eq!(super::parse_duration("5"), None);
}
