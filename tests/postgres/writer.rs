//! A client that keeps inserting sequence numbers and remembers each one whose COMMIT returned
//! success (acknowledged). It writes wherever its endpoint says (the data access layer) and,
//! after any connection error, reconnects to whatever the endpoint says then.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use tokio::task::JoinHandle;

use super::server::{TABLE, connect, tcp_config};

#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub seq: i64,
    /// The port of the server that acknowledged it.
    pub port: u16,
    pub at: Timestamp,
}

impl Ack {
    /// `seq` acknowledged by the server on `port`, now.
    pub fn now(seq: i64, port: u16) -> Ack {
        Ack {
            seq,
            port,
            at: Timestamp::now(),
        }
    }
}

/// Where a writer connects: host and port, read again before each connection.
pub type Endpoint = Arc<Mutex<(String, u16)>>;

pub struct Writer {
    pub name: String,
    pub acks: Arc<Mutex<Vec<Ack>>>,
    /// Sequence numbers sent whose outcome is unknown (the connection broke during the call).
    pub in_doubt: Arc<Mutex<Vec<i64>>>,
    pub failed_connects: Arc<AtomicI64>,
    task: Background,
}

/// A client's loop on a task of its own, told to stop by a flag: [`Background::stop`] lets the
/// call in flight finish (for at most 10 s); dropping it aborts the task.
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Background {
    /// Spawns the loop `run` makes, given the stop flag it must watch.
    pub fn spawn<F>(run: impl FnOnce(Arc<AtomicBool>) -> F) -> Background
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop: Arc<AtomicBool> = Arc::default();
        let handle = tokio::spawn(run(stop.clone()));
        Background {
            stop,
            handle: Some(handle),
        }
    }

    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Writer {
    /// Starts writing as `user` to `endpoint`; `seq` is shared between writers so every row is
    /// unique.
    pub fn spawn(name: &str, user: &str, endpoint: Endpoint, seq: Arc<AtomicI64>) -> Writer {
        Writer::spawn_with(name, user, endpoint, seq, false)
    }

    /// As [`Writer::spawn`]; with `async_commit` its session runs with
    /// `synchronous_commit = off`: a COMMIT returns before its WAL record is flushed, which is
    /// what a fence read from `pg_current_wal_lsn()` alone would miss.
    pub fn spawn_with(
        name: &str,
        user: &str,
        endpoint: Endpoint,
        seq: Arc<AtomicI64>,
        async_commit: bool,
    ) -> Writer {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let in_doubt: Arc<Mutex<Vec<i64>>> = Arc::default();
        let failed_connects: Arc<AtomicI64> = Arc::default();
        let task = Background::spawn(|stop| {
            let (acks, in_doubt, failed) =
                (acks.clone(), in_doubt.clone(), failed_connects.clone());
            let (name, user) = (name.to_string(), user.to_string());
            async move {
                let insert = format!("INSERT INTO {TABLE} (seq, writer) VALUES ($1, $2)");
                while !stop.load(Ordering::Relaxed) {
                    let (host, port) = endpoint.lock().unwrap().clone();
                    let mut config = tcp_config(port, &user);
                    config.host(&host);
                    if async_commit {
                        config.options("-c synchronous_commit=off");
                    }
                    let client = match connect(&config).await {
                        Ok(c) => c,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        if *endpoint.lock().unwrap() != (host.clone(), port) {
                            break; // the data access layer moved: reconnect there
                        }
                        let n = seq.fetch_add(1, Ordering::SeqCst);
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&n, &name];
                        let call = client.execute(insert.as_str(), &params);
                        match tokio::time::timeout(Duration::from_secs(5), call).await {
                            Ok(Ok(_)) => acks.lock().unwrap().push(Ack::now(n, port)),
                            // Any failure: the outcome is unknown to this client (not
                            // acknowledged); reconnect wherever the endpoint says now.
                            _ => {
                                in_doubt.lock().unwrap().push(n);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
            }
        });
        Writer {
            name: name.to_string(),
            acks,
            in_doubt,
            failed_connects,
            task,
        }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    pub async fn stop(&mut self) {
        self.task.stop().await;
    }
}
