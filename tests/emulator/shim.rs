//! The shim client: moto behind the project's shim (tests/support/moto_shim.py) on a free
//! loopback port, one process per test (killed on drop), its scripted faults and its call log.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Shim {
    child: Child,
    pub endpoint: String,
    http: reqwest::Client,
}

impl Shim {
    pub async fn start() -> Shim {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "no {} — run scripts/setup-python first",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("moto-shim-{port}.log")))
            .unwrap();
        let child = Command::new(python)
            .current_dir(&root)
            .args(["tests/support/moto_shim.py", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-q")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the moto shim");
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let t = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{endpoint}/_shim/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the shim did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Shim {
            child,
            endpoint,
            http,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/_shim/{path}", self.endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "shim {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// `GET /_shim/<path>`.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/_shim/{path}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "shim {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn faults(&self, rules: Value) {
        self.post("faults", rules).await;
    }

    pub async fn calls(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/_shim/calls", self.endpoint))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        match v {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("calls") {
                Some(Value::Array(a)) => a,
                _ => vec![],
            },
            _ => vec![],
        }
    }

    /// (action, params) of every call of `service`, in arrival order.
    pub async fn actions(&self, service: &str) -> Vec<(String, Value)> {
        self.calls()
            .await
            .into_iter()
            .filter(|c| c["service"] == service)
            .map(|c| {
                (
                    c["action"].as_str().unwrap_or("").to_string(),
                    c["params"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the first `action` call matching `pred` stands in a list of (action, params).
pub fn position(calls: &[(String, Value)], action: &str, pred: impl Fn(&Value) -> bool) -> usize {
    calls
        .iter()
        .position(|(a, p)| a == action && pred(p))
        .unwrap_or_else(|| panic!("no {action} in the call log"))
}

/// An RDS call naming a resource: `(action, identifier parameter, identifier)`.
pub type NamedCall<'a> = (&'a str, &'a str, &'a str);

/// How many times the call took effect in the shim's call log (answered 200, or 200 held back).
pub fn effective(calls: &[Value], (action, key, id): NamedCall) -> usize {
    calls
        .iter()
        .filter(|c| {
            c["action"] == action
                && c["params"][key] == id
                && (c["status"] == 200 || c["real_status"] == 200)
        })
        .count()
}

/// Whether a call's parameters (or any JSON) mention `s`.
pub fn mentions(p: &Value, s: &str) -> bool {
    p.to_string().contains(s)
}
