//! The data access layer's webhook (and an OTLP/JSON collector): a loopback HTTP server that
//! records the JSON bodies it is sent.

use std::sync::Arc;

use serde_json::Value;

/// A loopback HTTP server that records POST bodies and answers 200 (the data access layer's
/// webhook). Bounded: it serves until dropped.
pub struct Webhook {
    pub url: String,
    pub bodies: Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub async fn start(fail_first: usize) -> Webhook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/route", listener.local_addr().unwrap());
        let bodies: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        let task = tokio::spawn(async move {
            let mut served = 0usize;
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = content_length(&text[..head_end]);
                        if buf.len() >= head_end + 4 + len {
                            break Some(buf[head_end + 4..head_end + 4 + len].to_vec());
                        }
                    }
                };
                served += 1;
                let status = if served <= fail_first {
                    "503 Service Unavailable"
                } else {
                    if let Some(b) = body
                        && let Ok(v) = serde_json::from_slice(&b)
                    {
                        seen.lock().unwrap().push(v);
                    }
                    "200 OK"
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        Webhook { url, bodies, task }
    }
}

/// The `Content-Length` of a request head (0 without one).
fn content_length(head: &str) -> usize {
    let head = head.to_ascii_lowercase();
    let value = head.lines().find_map(|l| l.strip_prefix("content-length:"));
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
