//! The router's URLs and its signing secret: secrets that never reach a log, a record or a
//! notification (`Secret` prints `<redacted>`), URLs that must be https (http only to a
//! loopback host, for tests and sidecars), named in errors by scheme and host only.

use super::*;

/// A setting's value that is a secret (a signing key, a URL that may embed a token): its
/// `Debug` is `<redacted>` and it has no `Display`, so printing a configuration never shows it;
/// [`Secret::expose`] is the one way in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a URL points, for messages: `scheme://host[:port]`, never its path, query or userinfo
/// (they may carry a token).
pub fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            (None, _) => format!("a `{}:` URL without a host", u.scheme()),
        },
        Err(_) => "<not a URL>".to_string(),
    }
}

/// 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// A URL the agent sends secrets-bearing requests to (the webhook, the smoke test): `https://`,
/// or `http://` to a loopback host (tests, a sidecar). The error names the setting and shows the
/// URL's scheme and host only.
pub fn check_private_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let u =
        reqwest::Url::parse(url.trim()).map_err(|e| bad(setting, format!("is not a URL ({e})")))?;
    let Some(host) = u.host_str() else {
        return Err(bad(setting, "is not an http(s) URL with a host"));
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(bad(
            setting,
            format!(
                "`{}`: must be https:// (http:// only to a loopback host: 127.0.0.0/8, ::1, localhost)",
                url_origin(url)
            ),
        )),
        other => Err(bad(setting, format!("a `{other}:` URL: must be https://"))),
    }
}

/// The webhook and smoke-test settings: each URL private ([`check_private_url`]), and the
/// signing secret present when either is set. Also checked by the router itself.
pub fn check_router(
    webhook_url: Option<&Secret>,
    smoke_test_url: Option<&Secret>,
    secret: Option<&Secret>,
) -> Result<(), ConfigError> {
    const SECRET: &str = "MIGRATOR_WEBHOOK_SECRET (--webhook-secret)";
    for (setting, url) in [
        ("MIGRATOR_WEBHOOK_URL (--webhook-url)", webhook_url),
        ("MIGRATOR_SMOKE_TEST_URL (--smoke-test-url)", smoke_test_url),
    ] {
        let Some(url) = url else { continue };
        check_private_url(setting, url.expose())?;
        if secret.is_none_or(|s| s.expose().trim().is_empty()) {
            let (name, _) = setting.split_once(' ').unwrap_or((setting, ""));
            return Err(bad(
                SECRET,
                format!("is required when {name} is set (every request to it is signed)"),
            ));
        }
    }
    Ok(())
}
