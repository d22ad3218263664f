//! The servers under test, each started as its own process on loopback
//! ports, so its memory can be read from /proc (summed over the processes
//! it starts: Pushpin's runner starts four) and the load generator's own
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
    /// Pushpin's runner (Debian package `pushpin`).
    pub pushpin: PathBuf,
    /// The origin app Pushpin forwards WebSocket events to (no npm modules).
    pub pushpin_origin_script: PathBuf,
    /// CPUs every server process is held to (`taskset -c` syntax), so that
    /// the load generator's clients, held to others, do not share cores
    /// with it; `None`: wherever the scheduler puts them.
    pub server_cpus: Option<String>,
}

impl Binaries {
    /// `herald` as given; `nats-server` from PATH or /usr/sbin (Debian).
    pub fn locate(herald: PathBuf) -> Binaries {
        Binaries {
            herald,
            nats_server: on_path("nats-server"),
            node: on_path("node"),
            socketio_script: Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio/server.js"),
            pushpin: on_path("pushpin"),
            pushpin_origin_script: Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/pushpin/origin.js"),
            server_cpus: None,
        }
    }

    /// The command that starts `program` as a server: through `taskset`
    /// when [`Binaries::server_cpus`] is set, which runs the program in its
    /// own process (the same pid, so its CPU time and memory are read as
    /// before).
    pub fn command(&self, program: &Path) -> Command {
        match &self.server_cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpus).arg(program);
                command
            }
            None => Command::new(program),
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
            Target::HeraldJson
            | Target::HeraldMsgPack
            | Target::HeraldSse
            | Target::HeraldLongPoll
            | Target::HeraldJsonToken
            | Target::HeraldJsonSingle
            | Target::HeraldWebTransport
            | Target::HeraldNats
            | Target::HeraldJsonTls => true,
            Target::NatsTcp | Target::NatsWebSocket => self.has_nats(),
            Target::SocketIo => self.has_socketio(),
            Target::Pushpin => self.pushpin.exists() && self.node.exists(),
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
    /// The leader of the server's process group.
    child: Child,
    pub address: SocketAddr,
    /// Where publishers go when that is not `address` (Pushpin's control API).
    pub publish_address: Option<SocketAddr>,
    /// Processes the server needs but that are not it (Pushpin's origin app);
    /// stopped with it, not counted in its memory.
    helpers: Vec<Server>,
    /// A scratch directory (config files, run and log directories); removed
    /// on stop.
    scratch: Option<PathBuf>,
}

impl Server {
    pub async fn start(target: Target, binaries: &Binaries) -> anyhow::Result<Server> {
        match target {
            Target::HeraldJson
            | Target::HeraldMsgPack
            | Target::HeraldSse
            | Target::HeraldLongPoll
            | Target::HeraldJsonToken
            | Target::HeraldJsonSingle
            | Target::HeraldWebTransport => start_herald(binaries).await,
            Target::HeraldNats => start_herald_nats(binaries).await,
            Target::HeraldJsonTls => start_herald_tls(binaries).await,
            Target::SocketIo => {
                let mut command = binaries.command(&binaries.node);
                command.arg(&binaries.socketio_script);
                start_logging_address(command, "node (Socket.IO peer)").await
            }
            Target::NatsTcp | Target::NatsWebSocket => {
                start_nats(binaries, target == Target::NatsWebSocket, false).await
            }
            Target::Pushpin => start_pushpin(binaries).await,
        }
    }

    /// Herald in development mode with its default limits (no flood or
    /// connection caps lifted): what `herald-bench abuse` attacks.
    pub async fn herald_with_default_limits(binaries: &Binaries) -> anyhow::Result<Server> {
        let mut command = binaries.command(&binaries.herald);
        command
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env("HERALD_NATS__LISTEN", "127.0.0.1:0")
            .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn,herald=info");
        start_logging_address(command, "herald").await
    }

    /// Resident memory of the server, in bytes: the process and every
    /// process it started (Pushpin's runner starts four services).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let leader = self.child.id().context("server exited")?;
        let total_kib: u64 = process_tree(leader).into_iter().map(rss_kib).sum();
        anyhow::ensure!(total_kib > 0, "no resident memory found for process {leader}");
        Ok(total_kib * 1024)
    }

    /// The server's process id (the leader of what it started).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU time (user + system) the server and every process it started
    /// have used so far, in seconds; `None` once it exited.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let leader = self.child.id()?;
        let ticks: u64 = process_tree(leader).into_iter().filter_map(cpu_ticks).sum();
        Some(ticks as f64 * CPU_TICK_SECONDS)
    }

    /// Stops the server and everything it started: SIGTERM first (Pushpin's
    /// runner stops its services on it), SIGKILL for whatever is left.
    pub async fn stop(mut self) {
        if let Some(leader) = self.child.id() {
            let tree = process_tree(leader);
            signal("-TERM", &tree[..1]);
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                signal("-KILL", &tree[..1]);
            }
            signal("-KILL", &tree[1..]);
        }
        let _ = self.child.wait().await;
        for helper in std::mem::take(&mut self.helpers) {
            Box::pin(helper.stop()).await;
        }
        if let Some(scratch) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

impl Drop for Server {
    /// A server dropped without `stop` (a failed run) takes everything it
    /// started with it.
    fn drop(&mut self) {
        if let Some(leader) = self.child.id() {
            signal("-KILL", &process_tree(leader));
        }
    }
}

/// What one tick of /proc's CPU times is worth: it counts in USER_HZ, 100
/// on Linux. A reading is never finer than this.
pub const CPU_TICK_SECONDS: f64 = 0.01;

/// `pid` and all its descendants, parents first.
fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...; comm may hold spaces and parentheses.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(child, _)| *child),
        );
        next += 1;
    }
    tree
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) this process has used so far, in seconds.
fn own_cpu_seconds() -> Option<f64> {
    cpu_ticks(std::process::id()).map(|ticks| ticks as f64 * CPU_TICK_SECONDS)
}

/// CPU time, the server's and this process's (the load generator's
/// clients), at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    server: Option<f64>,
    client: Option<f64>,
}

/// CPU seconds spent since a [`CpuMark`].
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    pub server: Option<f64>,
    pub client: Option<f64>,
}

impl CpuMark {
    pub fn now(server: &Server) -> CpuMark {
        CpuMark {
            server: server.cpu_seconds(),
            client: own_cpu_seconds(),
        }
    }

    pub fn spent(self, server: &Server) -> CpuSpent {
        let now = CpuMark::now(server);
        let since = |before: Option<f64>, after: Option<f64>| before.zip(after).map(|(b, a)| a - b);
        CpuSpent {
            server: since(self.server, now.server),
            client: since(self.client, now.client),
        }
    }
}

/// utime + stime of a process, in clock ticks.
/// None when the process is gone or `/proc` is not there.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ... utime stime: fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `kill <signal> <pids>`.
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

async fn start_herald(binaries: &Binaries) -> anyhow::Result<Server> {
    start_logging_address(herald_command(binaries)?, "herald").await
}

/// Herald as for the other targets, its HTTP listener speaking only TLS
/// with the load generator's self-signed certificate (`tls`), written to a
/// scratch directory removed on stop.
async fn start_herald_tls(binaries: &Binaries) -> anyhow::Result<Server> {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let scratch = std::env::temp_dir().join(format!(
        "herald-bench-tls-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&scratch)?;
    let (cert, key) = crate::tls::write_files(&scratch)?;
    let mut command = herald_command(binaries)?;
    command
        .env("HERALD_TLS__CERT_FILE", cert)
        .env("HERALD_TLS__KEY_FILE", key);
    let started = start_logging_address(command, "herald").await;
    if started.is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let mut server = started?;
    server.scratch = Some(scratch);
    Ok(server)
}

/// Herald as for the other targets, with `address` its NATS listener's (on
/// a free port) instead of the HTTP one: what every client of the
/// `herald-nats` target, publisher included, connects to.
async fn start_herald_nats(binaries: &Binaries) -> anyhow::Result<Server> {
    let (mut server, nats) = start_with_nats_listener(herald_command(binaries)?).await?;
    server.address = nats;
    Ok(server)
}

/// Starts Herald by `command` with its NATS listener on a free port, and
/// returns once that listens too.
async fn start_with_nats_listener(mut command: Command) -> anyhow::Result<(Server, SocketAddr)> {
    let nats: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    command.env("HERALD_NATS__LISTEN", nats.to_string());
    let server = start_logging_address(command, "herald").await?;
    let server = wait_listening(server, &[nats], "herald's NATS listener").await?;
    Ok((server, nats))
}

impl Server {
    /// Herald as for the other targets, with `settings` on top
    /// (`HERALD_<SECTION>__<KEY>` environment variables): for a test that
    /// needs a timer or a limit of its own.
    pub async fn herald_with(binaries: &Binaries, settings: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut command = herald_command(binaries)?;
        command.envs(settings.iter().copied());
        start_logging_address(command, "herald").await
    }

    /// Herald as for the other targets, its NATS listener on a free port
    /// (returned), and its per-connection queues as deep as nats-server's
    /// default pending limit (64 MiB), so that a NATS workload meets the
    /// same buffering on both servers.
    pub async fn herald_with_nats(binaries: &Binaries) -> anyhow::Result<(Server, SocketAddr)> {
        let mut command = herald_command(binaries)?;
        command
            .env("HERALD_BROKER__QUEUE__MAX_MESSAGES", "1000000")
            .env("HERALD_BROKER__QUEUE__MAX_BYTES", "64MiB");
        start_with_nats_listener(command).await
    }
}

/// `herald serve --dev` on an ephemeral port, with the limits a load
/// generator on loopback would otherwise hit lifted.
fn herald_command(binaries: &Binaries) -> anyhow::Result<Command> {
    let binary = &binaries.herald;
    if !binary.exists() {
        bail!(
            "{} not found: build it with `cargo build --release`",
            binary.display()
        );
    }
    let mut command = binaries.command(binary);
    command
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("HERALD_NATS__LISTEN", "127.0.0.1:0")
        .env("HERALD_QUIC__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn,herald=info")
        // Publishers here send far more than the default flood limit: they
        // present an API key with a command rate of its own (every other
        // client keeps the default). Every client comes from a handful of
        // loopback addresses.
        .env("HERALD_AUTH__API_KEYS", crate::clients::BENCH_API_KEYS_ENV)
        .env("HERALD_SERVER__MAX_CONNECTIONS", "200000")
        .env("HERALD_SERVER__MAX_CONNECTIONS_PER_IP", "200000")
        .env("HERALD_QUIC__MAX_CONNECTIONS", "200000")
        // Publishers are clients (anonymous, or with a user token), whose
        // publishes are otherwise limited per connection.
        .env("HERALD_BROKER__MAX_CLIENT_PUBLISHES_PER_SECOND", "0")
        .env("HERALD_AUTH__JWT_HS256_SECRET", crate::clients::BENCH_JWT_SECRET);
    Ok(command)
}

/// Starts a server that logs `address=HOST:PORT` on stderr once listening.
async fn start_logging_address(mut command: Command, name: &str) -> anyhow::Result<Server> {
    let mut child = command
        .stderr(Stdio::piped())
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
        publish_address: None,
        helpers: Vec::new(),
        scratch: None,
    })
}

async fn start_nats(binaries: &Binaries, websocket: bool, jetstream: bool) -> anyhow::Result<Server> {
    let binary = &binaries.nats_server;
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
    if jetstream {
        text.push_str(&format!(
            "jetstream {{ store_dir: {:?} }}\n",
            scratch.join("js").display().to_string()
        ));
    }
    std::fs::write(&config, text)?;
    let child = binaries
        .command(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let address: SocketAddr = format!("127.0.0.1:{address_port}").parse()?;
    let server = Server {
        child,
        address,
        publish_address: None,
        helpers: Vec::new(),
        scratch: Some(scratch),
    };
    wait_listening(server, &[address], "nats-server").await
}

/// Pushpin in front of its origin app. Pushpin's defaults are for a public
/// deployment; three are changed so they do not cap a loopback benchmark:
/// the handler's delivery rate limit (`message_rate`, 2 500 messages/s by
/// default) and its queue (`message_hwm`), and the connection limit. Ports
/// are free ones and the internal sockets live in the scratch directory, so
/// several runs never collide. The runner also starts its own zurl (the
/// proxy's HTTP client towards the origin), which the packaged config
/// expects as a system service.
async fn start_pushpin(binaries: &Binaries) -> anyhow::Result<Server> {
    if !binaries.pushpin.exists() {
        bail!("pushpin not found: install it (Debian: apt-get install pushpin)");
    }
    let mut origin_command = binaries.command(&binaries.node);
    origin_command.arg(&binaries.pushpin_origin_script);
    let origin = start_logging_address(origin_command, "node (Pushpin origin)").await?;
    let (client_port, control_port) = (free_port()?, free_port()?);
    let scratch = std::env::temp_dir().join(format!(
        "herald-bench-pushpin-{}-{client_port}",
        std::process::id()
    ));
    for dir in ["run", "log"] {
        std::fs::create_dir_all(scratch.join(dir))?;
    }
    let routes = scratch.join("routes");
    std::fs::write(&routes, format!("* {},over_http\n", origin.address))?;
    let config = scratch.join("pushpin.conf");
    std::fs::write(
        &config,
        format!(
            "[global]\n\
             include={{libdir}}/internal.conf\n\
             rundir={run}\n\
             ipc_prefix=bench-\n\
             [runner]\n\
             services=condure,zurl,pushpin-proxy,pushpin-handler\n\
             http_port=127.0.0.1:{client_port}\n\
             logdir={log}\n\
             log_level=1\n\
             client_maxconn=100000\n\
             [proxy]\n\
             zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in\n\
             zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream\n\
             zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out\n\
             routesfile={routes}\n\
             updates_check=off\n\
             [handler]\n\
             push_in_spec=ipc://{{rundir}}/{{ipc_prefix}}push-in\n\
             push_in_sub_specs=ipc://{{rundir}}/{{ipc_prefix}}push-in-sub\n\
             push_in_http_addr=127.0.0.1\n\
             push_in_http_port={control_port}\n\
             stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats\n\
             command_spec=ipc://{{rundir}}/{{ipc_prefix}}command\n\
             message_rate=1000000\n\
             message_hwm=1000000\n",
            run = scratch.join("run").display(),
            log = scratch.join("log").display(),
            routes = routes.display(),
        ),
    )?;
    let child = binaries
        .command(&binaries.pushpin)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binaries.pushpin.display()))?;
    let address: SocketAddr = format!("127.0.0.1:{client_port}").parse()?;
    let control: SocketAddr = format!("127.0.0.1:{control_port}").parse()?;
    let server = Server {
        child,
        address,
        publish_address: Some(control),
        helpers: vec![origin],
        scratch: Some(scratch),
    };
    let server = wait_listening(server, &[address, control], "pushpin").await?;
    // Listening is not ready: until the proxy's HTTP client (zurl) is up,
    // connections get 502. Ready once a subscription round trip works.
    for _ in 0..100 {
        let round_trip = async {
            let mut probe = crate::clients::Connection::open(Target::Pushpin, address, None).await?;
            probe.subscribe("bench.ready", 1).await
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), round_trip).await {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
    bail!("pushpin never accepted a WebSocket subscription")
}

/// Returns `server` once every one of `addresses` accepts connections.
async fn wait_listening(server: Server, addresses: &[SocketAddr], name: &str) -> anyhow::Result<Server> {
    for _ in 0..200 {
        let mut ready = true;
        for address in addresses {
            ready &= tokio::net::TcpStream::connect(address).await.is_ok();
        }
        if ready {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    bail!("{name} did not start listening on {addresses:?}")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Server {
    /// nats-server with JetStream in a scratch directory: what clustered
    /// Herald nodes bridge through.
    pub async fn nats_with_jetstream(binaries: &Binaries) -> anyhow::Result<Server> {
        start_nats(binaries, false, true).await
    }

    /// Herald as for the other targets, as the node `name` of a cluster
    /// bridged through the NATS server at `nats`; returned once `/readyz`
    /// says it follows the stream.
    pub async fn herald_clustered(
        binaries: &Binaries,
        nats: SocketAddr,
        name: &str,
    ) -> anyhow::Result<Server> {
        let mut command = herald_command(binaries)?;
        command
            .env("HERALD_CLUSTER__NATS_URL", format!("nats://{nats}"))
            .env("HERALD_CLUSTER__NODE_NAME", name);
        let server = start_logging_address(command, "herald (clustered)").await?;
        for _ in 0..200 {
            if http_status(server.address, "/readyz").await == Some(200) {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("herald node {name} not ready within 10 s (is JetStream enabled on {nats}?)")
    }
}

/// The status of `GET path`, or `None` if the server did not answer.
async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
