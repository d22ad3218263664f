//! The servers under test, each started as its own process on loopback
//! ports, so its memory can be read from /proc and the load generator's own
//! work is not counted in it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::clients::Target;

/// Where the servers' binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub herald: PathBuf,
    pub nats_server: PathBuf,
    /// Node.js, for the Socket.IO peer.
    pub node: PathBuf,
    /// The Socket.IO peer's script; its `node_modules` come from
    /// `make bench-peers` (npm ci).
    pub socketio_script: PathBuf,
}

impl Binaries {
    /// `herald` as given; `nats-server` from PATH or /usr/sbin (Debian).
    pub fn locate(herald: PathBuf) -> Binaries {
        Binaries {
            herald,
            nats_server: on_path("nats-server"),
            node: on_path("node"),
            socketio_script: Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio/server.js"),
        }
    }

    pub fn has_nats(&self) -> bool {
        self.nats_server.exists()
    }

    pub fn has_socketio(&self) -> bool {
        let modules = self
            .socketio_script
            .with_file_name("node_modules")
            .join("socket.io");
        self.node.exists() && modules.exists()
    }

    /// Whether the server of `target` is installed here.
    pub fn can_run(&self, target: Target) -> bool {
        match target {
            Target::HeraldJson | Target::HeraldMsgPack => true,
            Target::NatsTcp | Target::NatsWebSocket => self.has_nats(),
            Target::SocketIo => self.has_socketio(),
        }
    }
}

/// `name` from PATH, or from Debian's /usr/sbin and /usr/bin.
fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A running server and the address each target reaches it on.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    /// A scratch directory (nats-server's config); removed on stop.
    scratch: Option<PathBuf>,
}

impl Server {
    pub async fn start(target: Target, binaries: &Binaries) -> anyhow::Result<Server> {
        match target {
            Target::HeraldJson | Target::HeraldMsgPack => start_herald(&binaries.herald).await,
            Target::SocketIo => {
                let mut command = Command::new(&binaries.node);
                command.arg(&binaries.socketio_script);
                start_logging_address(command, "node (Socket.IO peer)").await
            }
            Target::NatsTcp | Target::NatsWebSocket => {
                start_nats(&binaries.nats_server, target == Target::NatsWebSocket).await
            }
        }
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("server exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kib * 1024)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(scratch) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

async fn start_herald(binary: &Path) -> anyhow::Result<Server> {
    if !binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release`",
            binary.display()
        );
    }
    let mut command = Command::new(binary);
    command
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,herald=info")
        // Publishers here send far more than the default flood limit.
        .env("HERALD_WEBSOCKET__MAX_COMMANDS_PER_SECOND", "100000000");
    start_logging_address(command, "herald").await
}

/// Starts a server that logs `address=HOST:PORT` on stderr once listening.
async fn start_logging_address(mut command: Command, name: &str) -> anyhow::Result<Server> {
    let mut child = command
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
    let address = loop {
        let Some(line) = lines.next_line().await? else {
            bail!("{name} exited before listening");
        };
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().parse()?;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        address,
        scratch: None,
    })
}

async fn start_nats(binary: &Path, websocket: bool) -> anyhow::Result<Server> {
    if !binary.exists() {
        bail!("nats-server not found: install it (Debian: apt-get install nats-server)");
    }
    let port = free_port()?;
    let scratch = std::env::temp_dir().join(format!("herald-bench-nats-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let config = scratch.join("nats.conf");
    // Loopback only; the client port is always needed, the WebSocket
    // listener only for that target.
    let (client_port, address_port) = if websocket {
        (free_port()?, port)
    } else {
        (port, port)
    };
    let mut text = format!("listen: 127.0.0.1:{client_port}\nmax_payload: 1MB\n");
    if websocket {
        text.push_str(&format!(
            "websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}\n"
        ));
    }
    std::fs::write(&config, text)?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let address: SocketAddr = format!("127.0.0.1:{address_port}").parse()?;
    // Ready when it accepts connections.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(Server {
                child,
                address,
                scratch: Some(scratch),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server did not start listening on {address}")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
