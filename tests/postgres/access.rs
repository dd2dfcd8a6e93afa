//! Database access for the real-PostgreSQL tests: a throwaway CA and a server certificate for
//! `localhost`/`127.0.0.1` made with the `openssl` CLI, and secrets served from memory (the
//! Secrets Manager source is the AWS emulator tests' business).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aurora_migrator::database::{SecretSource, Sensitive};
use aurora_migrator::ports::{ErrorKind, PortError, PortResult};

use super::server::{RunAs, run};

/// Secrets by id, as a test sets them; counts fetches.
#[derive(Clone, Default)]
pub struct FixedSecrets {
    texts: Arc<Mutex<HashMap<String, String>>>,
    fetches: Arc<AtomicU32>,
}

impl FixedSecrets {
    pub fn set(&self, id: &str, user: &str, password: &str) {
        let text =
            serde_json::json!({"username": user, "password": password, "engine": "postgres"});
        self.texts
            .lock()
            .unwrap()
            .insert(id.to_string(), text.to_string());
    }

    pub fn fetches(&self) -> u32 {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl SecretSource for FixedSecrets {
    fn secret_string(&self, secret_id: &str) -> impl Future<Output = PortResult<Sensitive>> + Send {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let answer = match self.texts.lock().unwrap().get(secret_id) {
            Some(t) => Ok(Sensitive::new(t.clone())),
            None => Err(PortError::new(
                ErrorKind::NotFound,
                "secretsmanager:GetSecretValue",
                "ResourceNotFoundException",
            )),
        };
        std::future::ready(answer)
    }
}

/// The CA the servers' certificate chains to, another CA, and the server's key pair.
pub struct Certs {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args);
    run(c, &format!("openssl {}", args.join(" ")));
}

/// A CA (P-256, `CA:TRUE`) and, when `server` is set, a server certificate it signs for
/// `localhost` and `127.0.0.1` (`serverAuth`), as files in `dir`.
pub fn make_certs(dir: &Path, run_as: RunAs) -> Certs {
    assert!(
        Command::new("openssl").arg("version").output().is_ok(),
        "the `openssl` CLI is needed to make the test certificates (Debian: apt-get install openssl)"
    );
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = aurora-migrator test CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost,IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n\
         authorityKeyIdentifier = keyid\n",
    )
    .unwrap();
    for (ca, name) in [
        ("ca", "/CN=aurora-migrator test CA"),
        ("other-ca", "/CN=someone else's CA"),
    ] {
        let key = format!("{ca}.key");
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-config",
                "ca.cnf",
                "-extensions",
                "v3_ca",
                "-key",
                &key,
                "-subj",
                name,
                "-days",
                "2",
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "server.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-subj",
            "/CN=localhost",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    // PostgreSQL wants its key readable by the server user alone.
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    run_as.chown(&key);
    Certs {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("server.pem"),
        key,
    }
}
