//! A real `nats-server` (Debian's, or any on PATH) on ephemeral ports with
//! JetStream in a temporary directory: what cluster tests bridge through.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `nats-server` from PATH, or where Debian installs it.
fn binary() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("nats-server").is_file()));
    if on_path {
        "nats-server".into()
    } else {
        "/usr/sbin/nats-server".into()
    }
}

pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The configuration file's text, ports filled in after the first start
    /// so a restart comes back on the same ones.
    config: String,
    pub port: u16,
    /// The leaf-node listener's port, when the configuration has one.
    pub leaf_port: Option<u16>,
}

impl NatsServer {
    /// A single server with JetStream.
    pub fn start() -> NatsServer {
        NatsServer::with_config("")
    }

    /// A server with JetStream and `extra` added to its configuration.
    pub fn with_config(extra: &str) -> NatsServer {
        let name = format!("n{}", std::process::id() ^ rand_suffix());
        NatsServer::launched(&name, "", extra)
    }

    /// With JetStream in `domain` (one per region).
    pub fn with_domain(domain: &str, extra: &str) -> NatsServer {
        NatsServer::launched(domain, &format!(", domain: {domain}"), extra)
    }

    fn launched(name: &str, jetstream: &str, extra: &str) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("js").display().to_string();
        let config = format!(
            "listen: \"127.0.0.1:-1\"\nserver_name: {name}\njetstream {{ store_dir: {store:?}{jetstream} }}\n{extra}\n"
        );
        let mut server = NatsServer {
            child: None,
            dir,
            config,
            port: 0,
            leaf_port: None,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let path = self.dir.path().join("nats.conf");
        std::fs::write(&path, &self.config).unwrap();
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&path)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("nats-server is installed (make bench-peers installs it)");
        let (lines, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let port_of = |line: &str| {
            line.rsplit(':')
                .next()
                .and_then(|port| port.trim().parse::<u16>().ok())
        };
        loop {
            let line = log
                .recv_timeout(Duration::from_secs(10))
                .expect("nats-server starts within 10 s");
            if line.contains("Listening for leafnode connections") {
                self.leaf_port = port_of(&line);
            }
            if line.contains("Listening for client connections") {
                self.port = port_of(&line).unwrap();
            }
            if line.contains("Server is ready") {
                break;
            }
            assert!(!line.contains("[FTL]"), "nats-server failed: {line}");
        }
        // Keep the log drained so the server never blocks on it.
        std::thread::spawn(move || while log.recv().is_ok() {});
        self.config = self
            .config
            .replacen("127.0.0.1:-1", &format!("127.0.0.1:{}", self.port), 1);
        if let Some(leaf) = self.leaf_port {
            self.config = self
                .config
                .replacen("127.0.0.1:-1", &format!("127.0.0.1:{leaf}"), 1);
        }
        self.child = Some(child);
    }

    /// SIGKILL: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports, with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
