//! Tests of the settings: durations, policies, the router URLs and the secret.
use super::*;

#[test]
fn durations_parse_in_every_unit_and_reject_junk() {
    assert_eq!(parse_duration("30s"), Ok(SignedDuration::from_secs(30)));
    assert_eq!(parse_duration("1h30m"), Ok(SignedDuration::from_mins(90)));
    assert_eq!(parse_duration("7d"), Ok(SignedDuration::from_hours(168)));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("ten minutes").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn a_bad_cutover_names_the_setting() {
    let args = PolicyArgs {
        cutover: "whenever".into(),
        ..PolicyArgs::default()
    };
    let e = args.policy().unwrap_err();
    assert!(
        e.to_string().starts_with("MIGRATOR_CUTOVER (--cutover): "),
        "{e}"
    );
}

#[test]
fn a_bad_router_names_the_setting_and_a_good_one_is_the_default_choice() {
    let args = PolicyArgs {
        router: "route53:Z1".into(),
        ..PolicyArgs::default()
    };
    let e = args.policy().unwrap_err();
    assert!(
        e.to_string().starts_with("MIGRATOR_ROUTER (--router): ")
            && e.to_string()
                .contains("route53:<hosted zone id>:<record name>"),
        "{e}"
    );
    let args = PolicyArgs {
        router: "route53:Z1:db.example.com".into(),
        ..PolicyArgs::default()
    };
    assert_eq!(
        args.policy().unwrap().router.to_string(),
        "route53:Z1:db.example.com"
    );
}

#[test]
fn defaults_match_the_core_policy() {
    let p = PolicyArgs::default().policy().unwrap();
    let d = Policy::default();
    assert_eq!(p, d);
}

#[test]
fn missing_queue_names_the_setting() {
    let e = AwsArgs::default().require().unwrap_err();
    assert_eq!(e.setting, "MIGRATOR_QUEUE_URL (--queue-url)");
}

#[test]
fn no_otlp_endpoint_means_no_export() {
    assert_eq!(TelemetryArgs::default().otlp_with(None), Ok(None));
    assert_eq!(
        TelemetryArgs::default().otlp_with(Some(" ".into())),
        Ok(None)
    );
}

#[test]
fn the_migrator_endpoint_wins_over_the_standard_one() {
    let args = TelemetryArgs {
        otlp_endpoint: Some("http://localhost:4318".into()),
        otlp_protocol: "http/json".into(),
        otlp_metrics_interval: "10s".into(),
    };
    let s = args
        .otlp_with(Some("http://elsewhere:4318".into()))
        .unwrap()
        .unwrap();
    assert_eq!(s.endpoint, "http://localhost:4318");
    assert_eq!(s.protocol, OtlpProtocol::HttpJson);
    assert_eq!(s.metrics_interval, std::time::Duration::from_secs(10));
    let standard = TelemetryArgs::default()
        .otlp_with(Some("http://collector:4318".into()))
        .unwrap()
        .unwrap();
    assert_eq!(standard.endpoint, "http://collector:4318");
    assert_eq!(standard.protocol, OtlpProtocol::HttpProtobuf);
}

#[test]
fn bad_telemetry_settings_name_the_setting() {
    let protocol = TelemetryArgs {
        otlp_protocol: "grpc".into(),
        ..TelemetryArgs::default()
    };
    assert_eq!(
        protocol.otlp_with(None).unwrap_err().setting,
        "MIGRATOR_OTLP_PROTOCOL (--otlp-protocol)"
    );
    let interval = TelemetryArgs {
        otlp_metrics_interval: "0s".into(),
        ..TelemetryArgs::default()
    };
    assert_eq!(
        interval.otlp_with(None).unwrap_err().setting,
        "MIGRATOR_OTLP_METRICS_INTERVAL (--otlp-metrics-interval)"
    );
    for endpoint in [
        "localhost:4318",
        "ftp://collector",
        "http://c:4318/v1/traces",
    ] {
        let args = TelemetryArgs {
            otlp_endpoint: Some(endpoint.into()),
            ..TelemetryArgs::default()
        };
        assert_eq!(
            args.otlp_with(None).unwrap_err().setting,
            "MIGRATOR_OTLP_ENDPOINT (--otlp-endpoint)",
            "{endpoint}"
        );
    }
    assert_eq!(
        TelemetryArgs::default()
            .otlp_with(Some("not a url".into()))
            .unwrap_err()
            .setting,
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    );
}

#[test]
fn a_tag_prefix_with_forbidden_characters_is_refused() {
    let args = PolicyArgs {
        tag_prefix: "migrate#now".into(),
        ..PolicyArgs::default()
    };
    assert_eq!(
        args.policy().unwrap_err().setting,
        "MIGRATOR_TAG_PREFIX (--tag-prefix)"
    );
}

fn with_router(webhook: Option<&str>, smoke: Option<&str>, secret: Option<&str>) -> AwsArgs {
    AwsArgs {
        webhook_url: webhook.map(Secret::from),
        smoke_test_url: smoke.map(Secret::from),
        webhook_secret: secret.map(Secret::from),
        shutdown_budget: "25s".into(),
        message_visibility: "30s".into(),
        lease: "15s".into(),
        rds_rate_limit: 5.0,
        concurrency: 64,
        ..AwsArgs::default()
    }
}

#[test]
fn router_urls_must_be_https_or_loopback_http() {
    for url in [
        "https://dal.example.com/hooks/T0SECRET?token=abc",
        "https://dal.example.com:8443/",
        "http://127.0.0.1:8080/route",
        "http://127.9.9.9/route",
        "http://[::1]:9000/route",
        "http://localhost:9000/route",
        "http://LOCALHOST/route",
    ] {
        assert_eq!(
            with_router(Some(url), Some(url), Some("s")).validate(),
            Ok(()),
            "{url}"
        );
    }
    for (url, shown) in [
        (
            "http://dal.example.com/hooks/T0SECRET?token=abc",
            Some("http://dal.example.com"),
        ),
        (
            "http://user:T0SECRET@10.0.0.8:8080/hooks?token=abc",
            Some("http://10.0.0.8:8080"),
        ),
        (
            "http://localhost.example.com/hooks/T0SECRET?token=abc",
            Some("http://localhost.example.com"),
        ),
        ("ftp://dal.example.com/hooks/T0SECRET?token=abc", None),
        ("dal.example.com/hooks/T0SECRET?token=abc", None),
        ("mailto:T0SECRET@example.com?token=abc", None),
    ] {
        for (args, setting) in [
            (
                with_router(Some(url), None, Some("s")),
                "MIGRATOR_WEBHOOK_URL (--webhook-url)",
            ),
            (
                with_router(None, Some(url), Some("s")),
                "MIGRATOR_SMOKE_TEST_URL (--smoke-test-url)",
            ),
        ] {
            let e = args.validate().unwrap_err();
            assert_eq!(e.setting, setting, "{url}");
            let text = e.to_string();
            assert!(text.starts_with(&format!("{setting}: ")), "{text}");
            for secret in ["T0SECRET", "token", "hooks", "user"] {
                assert!(!text.contains(secret), "`{secret}` shown: {text}");
            }
            if let Some(origin) = shown {
                assert!(text.contains(origin), "{text}");
            }
        }
    }
}

#[test]
fn a_router_url_needs_the_webhook_secret() {
    for (args, names) in [
        (
            with_router(Some("https://dal.example.com/x"), None, None),
            "MIGRATOR_WEBHOOK_URL",
        ),
        (
            with_router(None, Some("https://dal.example.com/x"), Some("  ")),
            "MIGRATOR_SMOKE_TEST_URL",
        ),
    ] {
        let e = args.validate().unwrap_err();
        assert_eq!(e.setting, "MIGRATOR_WEBHOOK_SECRET (--webhook-secret)");
        assert!(e.problem.contains(names), "{e}");
    }
    assert_eq!(with_router(None, None, None).validate(), Ok(()));
}

#[test]
fn secrets_never_show_in_debug_output_or_help() {
    let args = with_router(
        Some("https://dal.example.com/hooks/T0SECRETPATH"),
        Some("https://dal.example.com/smoke/T0SECRETSMOKE"),
        Some("whsec_T0SECRETKEY"),
    );
    let printed = format!("{args:?}");
    for secret in ["T0SECRETPATH", "T0SECRETSMOKE", "T0SECRETKEY"] {
        assert!(!printed.contains(secret), "{printed}");
    }
    // `--help` shows the environment's values unless told not to.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        aws: AwsArgs,
    }
    let command = <Cli as clap::CommandFactory>::command();
    for id in ["webhook_url", "smoke_test_url", "webhook_secret"] {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("{id}"));
        assert!(arg.is_hide_env_values_set(), "{id}");
    }
}

#[test]
fn the_ca_bundle_is_read_only_when_database_access_is_on() {
    let off = DatabaseArgs {
        rds_ca_bundle: "/nonexistent/rds-ca-bundle.pem".into(),
        agent_security_group: Some("sg-0agent".into()),
        ..DatabaseArgs::default()
    };
    assert!(!DatabaseArgs::default().database_access);
    assert!(off.settings().unwrap().is_none());

    let missing = DatabaseArgs {
        database_access: true,
        ..off
    };
    let e = missing.settings().unwrap_err().to_string();
    assert!(
        e.starts_with(
            "MIGRATOR_RDS_CA_BUNDLE (--rds-ca-bundle): cannot read `/nonexistent/rds-ca-bundle.pem`"
        ),
        "{e}"
    );

    let empty = std::env::temp_dir().join(format!("empty-bundle-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let no_cert = DatabaseArgs {
        database_access: true,
        rds_ca_bundle: empty.display().to_string(),
        agent_security_group: Some("sg-0agent".into()),
    };
    let e = no_cert.settings().unwrap_err().to_string();
    let _ = std::fs::remove_file(&empty);
    assert!(
        e.starts_with("MIGRATOR_RDS_CA_BUNDLE (--rds-ca-bundle): ")
            && e.ends_with("holds no certificate"),
        "{e}"
    );
}

#[test]
fn database_access_needs_the_agents_security_group_and_names_the_setting() {
    let without = DatabaseArgs {
        database_access: true,
        ..DatabaseArgs::default()
    };
    let e = without.settings().unwrap_err().to_string();
    assert!(
        e.starts_with("MIGRATOR_AGENT_SECURITY_GROUP (--agent-security-group): is required"),
        "{e}"
    );
    let wrong = DatabaseArgs {
        agent_security_group: Some("agent".into()),
        ..without
    };
    let e = wrong.settings().unwrap_err().to_string();
    assert!(e.contains("not a security group id"), "{e}");
    let mut policy = crate::core::Policy::default();
    DatabaseArgs {
        database_access: true,
        agent_security_group: Some(" sg-0agent ".into()),
        ..DatabaseArgs::default()
    }
    .apply_to(&mut policy);
    assert!(policy.database_access);
    assert_eq!(policy.agent_security_group.as_deref(), Some("sg-0agent"));
}

#[test]
fn the_turn_limits_are_settings_bounded_and_named() {
    let defaults = PolicyArgs::default().policy().unwrap();
    assert_eq!(
        defaults.max_cutovers,
        crate::core::policy::DEFAULT_MAX_CUTOVERS
    );
    assert_eq!(
        defaults.max_preparations,
        crate::core::policy::DEFAULT_MAX_PREPARATIONS
    );
    let set = PolicyArgs {
        max_preparations: 7,
        ..PolicyArgs::default()
    };
    assert_eq!(set.policy().unwrap().max_preparations, 7);
    for bad in [0, 1001] {
        let e = PolicyArgs {
            max_preparations: bad,
            ..PolicyArgs::default()
        }
        .policy()
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "MIGRATOR_MAX_PREPARATIONS (--max-preparations): {bad} is not between 1 and 1000"
            )),
            "{e}"
        );
        let e = PolicyArgs {
            max_cutovers: bad,
            ..PolicyArgs::default()
        }
        .policy()
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "MIGRATOR_MAX_CUTOVERS (--max-cutovers): {bad} is not between 1 and 1000"
            )),
            "{e}"
        );
    }
}

#[test]
fn the_idle_connection_allowance_is_a_setting_bounded_and_named() {
    let ok = PolicyArgs {
        max_idle_connections: 2,
        ..PolicyArgs::default()
    };
    assert_eq!(ok.policy().unwrap().max_idle_connections, 2.0);
    assert_eq!(
        PolicyArgs::default().policy().unwrap().max_idle_connections,
        0.0
    );
    let too_many = PolicyArgs {
        max_idle_connections: 11,
        ..PolicyArgs::default()
    };
    let e = too_many.policy().unwrap_err().to_string();
    assert!(
        e.starts_with("MIGRATOR_MAX_IDLE_CONNECTIONS (--max-idle-connections): 11 is more than 10"),
        "{e}"
    );
}

#[test]
fn a_companion_ca_file_that_is_missing_or_holds_no_certificate_names_the_setting() {
    let dir = std::env::temp_dir().join(format!("am-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for path in [dir.join("missing.pem"), empty] {
        let args = AwsArgs {
            companion_ca_file: Some(path.display().to_string()),
            ..with_router(None, None, None)
        };
        let e = args.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("MIGRATOR_COMPANION_CA_FILE (--companion-ca-file): "),
            "{e}"
        );
    }
    let args = with_router(None, None, None);
    assert_eq!(
        args.companion_ca().unwrap(),
        None,
        "unset: public roots only"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lease_outside_5s_to_2m_stops_start_up_naming_the_setting() {
    for (text, ok) in [
        ("15s", true),
        ("5s", true),
        ("2m", true),
        ("4s", false),
        ("3m", false),
        ("soon", false),
    ] {
        let args = AwsArgs {
            lease: text.into(),
            ..with_router(None, None, None)
        };
        match args.validate() {
            Ok(()) => assert!(ok, "{text} accepted"),
            Err(e) => {
                assert!(!ok, "{text} refused: {e}");
                assert_eq!(e.setting, "MIGRATOR_LEASE (--lease)");
            }
        }
    }
}
