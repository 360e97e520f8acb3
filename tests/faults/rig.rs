//! The processes of one case, each a real OS process that the case can kill, freeze and
//! restart: NATS, the storage service and the gateway nodes. Every one keeps its address and
//! its data across a restart, as it would under a process supervisor.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, Process, free_addr, metric_sample, start_nats};
use crate::proxy::Proxy;

/// Where messages are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
    /// The embedded log-structured store: a directory that one process opens at a time.
    Lsm,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Lsm => "lsm",
        }
    }
}

/// What a case runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) backend: Backend,
    /// Storage inside the gateway process (`storage.embedded = true`, the default deployment,
    /// on `backend`) instead of a `peroxo store` process of its own.
    pub(crate) embedded: bool,
    /// Gateway nodes; more than one joins them through NATS.
    pub(crate) nodes: usize,
    /// The gateways reach storage through a [`Proxy`] that can cut the link.
    pub(crate) proxy: bool,
    /// Storage services (without embedded storage): with two, every gateway lists both in
    /// `storage.endpoint` and fails over between them.
    pub(crate) stores: usize,
    pub(crate) max_pending: usize,
}

/// One OS process the case controls.
pub(crate) struct Service {
    pub(crate) name: String,
    command: Vec<String>,
    ready: Ready,
    process: Option<Process>,
    /// Set when the case killed it, until it is started again.
    pub(crate) killed: bool,
    /// Set when the rig stopped it, alive, at the end of the case (to read the lsm database,
    /// which it held open): not a death.
    pub(crate) stopped: bool,
}

/// How to tell that a (re)started service is ready.
enum Ready {
    /// It logged a line starting with this.
    Log(&'static str),
    /// It is NATS, listening on this address with this store directory.
    Nats(SocketAddr, PathBuf),
}

impl Service {
    fn new(name: &str, command: Vec<String>, ready: Ready) -> Self {
        let mut service = Self {
            name: name.to_owned(),
            command,
            ready,
            process: None,
            killed: false,
            stopped: false,
        };
        service.start();
        service
    }

    /// Starts the process and waits until it is ready.
    pub(crate) fn start(&mut self) {
        let process = match &self.ready {
            Ready::Nats(addr, dir) => start_nats(*addr, dir),
            Ready::Log(line) => {
                let mut command = Command::new(&self.command[0]);
                command.args(&self.command[1..]);
                for (name, _) in std::env::vars() {
                    if name.starts_with("PEROXO_") || name == "RUST_LOG" {
                        command.env_remove(name);
                    }
                }
                let mut process = Process::spawn(&mut command);
                process.wait_for_log(line);
                process
            }
        };
        self.process = Some(process);
        // A new process: should it die now, that is not the case's doing.
        self.killed = false;
    }

    /// SIGKILL: no goodbye, no flush.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.killed = true;
    }

    /// SIGKILLs the process for good at the end of the case, if it is still running (one
    /// that died before stays a death for the liveness check).
    fn stop(&mut self) {
        if self.alive() {
            self.process.take();
            self.stopped = true;
        }
    }

    /// SIGSTOP (`freeze = true`) or SIGCONT.
    pub(crate) fn freeze(&self, freeze: bool) {
        self.signal(if freeze { "-STOP" } else { "-CONT" });
    }

    /// Sends `signal` (as `kill` names it: `-HUP`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().expect("running").child.id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Whether the process is running: false once it has exited, whoever ended it.
    pub(crate) fn alive(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }
}

/// A gateway node.
pub(crate) struct Node {
    pub(crate) service: Service,
    pub(crate) http: SocketAddr,
    /// Its configuration file, and what the file held when the node started.
    config: PathBuf,
    config_text: String,
    /// The counters of the incarnations that were killed, as last read before each kill.
    earlier: Counters,
    /// The counters of the running incarnation, as last read.
    current: Counters,
}

/// What the verdict needs from a node's metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    /// `peroxo_outbox_pending_peak` (the highest, across incarnations, once merged).
    pub(crate) outbox_peak: f64,
    /// `peroxo_actor_restarts_total` by actor kind.
    pub(crate) restarts: BTreeMap<String, f64>,
    /// `peroxo_sessions_closed_total{reason="session_failed"}`.
    pub(crate) sessions_failed: f64,
    /// `peroxo_sessions_closed_total{reason="supervisor_failed"}`: connections closed (1011)
    /// because SessionSupervisor failed.
    pub(crate) supervisor_closed: f64,
    /// `peroxo_storage_reconnects_total`.
    pub(crate) storage_reconnects: f64,
    /// `peroxo_config_reloads_total{outcome="applied"}`.
    pub(crate) reloads_applied: f64,
}

/// Every actor kind of `peroxo_actor_restarts_total`.
const ACTOR_KINDS: [&str; 5] = [
    "cluster",
    "router",
    "persistence",
    "session_supervisor",
    "session",
];

impl Counters {
    fn read(text: &str) -> Self {
        let value = |name: &str, labels: &str| metric_sample(text, name, labels).unwrap_or(0.0);
        Self {
            outbox_peak: value("peroxo_outbox_pending_peak", ""),
            restarts: ACTOR_KINDS
                .iter()
                .map(|kind| {
                    let labels = format!("actor=\"{kind}\"");
                    (
                        (*kind).to_owned(),
                        value("peroxo_actor_restarts_total", &labels),
                    )
                })
                .collect(),
            sessions_failed: value("peroxo_sessions_closed_total", "reason=\"session_failed\""),
            supervisor_closed: value(
                "peroxo_sessions_closed_total",
                "reason=\"supervisor_failed\"",
            ),
            storage_reconnects: value("peroxo_storage_reconnects_total", ""),
            reloads_applied: value("peroxo_config_reloads_total", "outcome=\"applied\""),
        }
    }

    /// Adds `other`'s counts to these; keeps the higher peak.
    pub(crate) fn merge(&mut self, other: &Counters) {
        self.outbox_peak = self.outbox_peak.max(other.outbox_peak);
        for (kind, n) in &other.restarts {
            *self.restarts.entry(kind.clone()).or_default() += n;
        }
        self.sessions_failed += other.sessions_failed;
        self.supervisor_closed += other.supervisor_closed;
        self.storage_reconnects += other.storage_reconnects;
        self.reloads_applied += other.reloads_applied;
    }
}

impl Node {
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Reads the node's metrics; false when it does not answer.
    async fn scrape(&mut self) -> bool {
        let text = common::try_http_request(self.http, "GET", "/metrics", "")
            .await
            .ok()
            .filter(|(status, _)| *status == 200);
        match text {
            Some((_, text)) => {
                self.current = Counters::read(&text);
                true
            }
            None => false,
        }
    }

    /// Reads the node's metrics one last time, then SIGKILLs it.
    pub(crate) async fn kill(&mut self) {
        self.scrape().await;
        self.earlier.merge(&std::mem::take(&mut self.current));
        self.service.kill();
    }

    /// Every incarnation's counters together: the peak is the highest, the rest are summed.
    pub(crate) fn counters(&self) -> Counters {
        let mut all = self.earlier.clone();
        all.merge(&self.current);
        all
    }

    /// Whether the node's metrics were ever read.
    pub(crate) fn was_read(&self) -> bool {
        self.counters().restarts.len() == ACTOR_KINDS.len()
    }
}

/// Every process of a case, and where its messages are stored.
pub(crate) struct Rig {
    pub(crate) layout: Layout,
    pub(crate) nats: Option<Service>,
    pub(crate) store: Option<Service>,
    /// The second storage service of a layout with two.
    pub(crate) second_store: Option<Service>,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) nodes: Vec<Node>,
    database: Option<String>,
    database_url: Option<String>,
    sqlite_path: PathBuf,
    /// The lsm backend's directory.
    lsm_path: PathBuf,
    /// Config files and data; removed when the rig is dropped.
    _dir: tempfile::TempDir,
}

fn peroxo(args: &[&str], config: &Path) -> Vec<String> {
    let mut command = vec![env!("CARGO_BIN_EXE_peroxo").to_owned()];
    command.extend(args.iter().map(|a| (*a).to_owned()));
    command.push("--config".to_owned());
    command.push(config.display().to_string());
    command
}

impl Rig {
    /// Starts every process of `layout`; `extra_config` is appended to every gateway node's
    /// configuration file (a `[webhooks]` section, say).
    pub(crate) async fn start(layout: Layout, extra_config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sqlite_path = dir.path().join("peroxo.db");
        let lsm_path = dir.path().join("peroxo.lsm");
        let (database, database_url) = match layout.backend {
            Backend::Sqlite | Backend::Lsm => (None, None),
            Backend::Postgres => {
                let (name, url) = common::postgres::create_database().await;
                (Some(name), Some(url))
            }
        };
        let storage_addr = free_addr();
        let store = (!layout.embedded).then(|| {
            store_service(
                dir.path(),
                "store",
                &layout,
                storage_addr,
                &sqlite_path,
                &lsm_path,
                database_url.as_deref(),
            )
        });
        let second_addr = free_addr();
        let second_store = (!layout.embedded && layout.stores > 1).then(|| {
            store_service(
                dir.path(),
                "store 2",
                &layout,
                second_addr,
                &sqlite_path,
                &lsm_path,
                database_url.as_deref(),
            )
        });
        let proxy = if layout.proxy {
            Some(Proxy::start(storage_addr).await)
        } else {
            None
        };
        let nats = (layout.nodes > 1).then(|| {
            let store_dir = dir.path().join("nats");
            std::fs::create_dir_all(&store_dir).unwrap();
            Service::new("nats", Vec::new(), Ready::Nats(free_addr(), store_dir))
        });
        let mut endpoints = vec![proxy.as_ref().map_or(storage_addr, |p| p.addr)];
        endpoints.extend(second_store.as_ref().map(|_| second_addr));
        let storage = NodeStorage {
            listen: storage_addr,
            endpoints,
            sqlite_path: &sqlite_path,
            lsm_path: &lsm_path,
        };
        let cluster = cluster_section(nats.as_ref());
        let nodes = (0..layout.nodes)
            .map(|n| gateway_node(n, dir.path(), &layout, &storage, &cluster, extra_config))
            .collect();
        Self {
            layout,
            nats,
            store,
            second_store,
            proxy,
            nodes,
            database,
            database_url,
            sqlite_path,
            lsm_path,
            _dir: dir,
        }
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::ws_url).collect()
    }

    /// Every process of the rig, for the liveness check.
    pub(crate) fn services(&mut self) -> Vec<&mut Service> {
        let mut services: Vec<&mut Service> =
            self.nodes.iter_mut().map(|n| &mut n.service).collect();
        services.extend(self.store.as_mut());
        services.extend(self.second_store.as_mut());
        services.extend(self.nats.as_mut());
        services
    }

    /// Rewrites the `[limits]` of node `n`'s file to `limits`, sends it SIGHUP and waits
    /// until it has applied the file (its count of applied reloads went up).
    pub(crate) async fn reload_limits(&mut self, n: usize, limits: &str) {
        let node = &mut self.nodes[n];
        assert!(node.config_text.contains(LIMITS), "no [limits] to replace");
        std::fs::write(&node.config, node.config_text.replace(LIMITS, limits)).unwrap();
        node.scrape().await;
        let before = node.current.reloads_applied;
        node.service.signal("-HUP");
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        while node.current.reloads_applied <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not apply its new configuration",
                node.service.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            node.scrape().await;
        }
    }

    /// Reads the metrics of every node that answers.
    pub(crate) async fn scrape(&mut self) {
        for node in &mut self.nodes {
            node.scrape().await;
        }
    }

    /// Every message stored for `tenant`, in commit (id) order, and every user's stream,
    /// read from the database itself.
    ///
    /// The lsm database opens in one process at a time (the engine locks its directory): the
    /// processes that hold it are stopped first (SIGKILL, so what is read is what a restarted
    /// service would find), and nothing the case does after this may need them.
    pub(crate) async fn stored(&mut self, tenant: &str) -> Stored {
        match self.layout.backend {
            Backend::Lsm => {
                self.stop_lsm_holders();
                let path = self.lsm_path.clone();
                let store = tokio::task::spawn_blocking(move || {
                    peroxo_storage::LsmStore::open_with(
                        path,
                        peroxo_config::SqliteSync::Full,
                        peroxo_storage::OutboxSettings::default(),
                    )
                })
                .await
                .unwrap()
                .unwrap();
                let inspection = store.inspect(tenant).await.unwrap();
                let messages = inspection
                    .messages
                    .into_iter()
                    .map(|m| StoredRow {
                        id: m.id as i64,
                        sender: m.sender,
                        recipient: m.recipient,
                        client_msg_id: m.client_msg_id,
                        text: m.text,
                        sender_seq: m.sender_seq as i64,
                        recipient_seq: m.recipient_seq as i64,
                        edited: m.edited_ts.is_some(),
                        deleted: m.deleted_ts.is_some(),
                        reply_to: m.reply_to.map(|id| id as i64),
                    })
                    .collect();
                let streams = inspection
                    .streams
                    .into_iter()
                    .map(|e| StreamRow {
                        owner: e.owner,
                        seq: e.seq as i64,
                        message_id: e.message_id.map(|id| id as i64),
                        event_id: e.event_id.map(|id| id as i64),
                    })
                    .collect();
                // As REACTIONS_SQL counts them: users per (message, emoji).
                let mut reactions: BTreeMap<(i64, String), i64> = BTreeMap::new();
                for r in inspection.reactions {
                    *reactions.entry((r.message_id as i64, r.emoji)).or_default() += 1;
                }
                let outbox = inspection
                    .outbox
                    .into_iter()
                    .map(|e| OutboxRow {
                        id: e.id as i64,
                        kind: e.kind,
                        conversation: e.conversation,
                        payload: e.payload,
                    })
                    .collect();
                Stored {
                    messages,
                    streams,
                    reactions: reactions
                        .into_iter()
                        .map(|((id, emoji), n)| (id, emoji, n))
                        .collect(),
                    outbox,
                }
            }
            Backend::Sqlite => {
                let db = rusqlite::Connection::open(&self.sqlite_path).unwrap();
                let mut statement = db
                    .prepare(MESSAGES_SQL.replace("$1", "?1").as_str())
                    .unwrap();
                let messages = statement
                    .query_map([tenant], |row| {
                        Ok(StoredRow {
                            id: row.get(0)?,
                            sender: row.get(1)?,
                            recipient: row.get(2)?,
                            client_msg_id: row.get(3)?,
                            text: row.get(4)?,
                            sender_seq: row.get(5)?,
                            recipient_seq: row.get(6)?,
                            edited: row.get(7)?,
                            deleted: row.get(8)?,
                            reply_to: row.get(9)?,
                        })
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let mut statement = db
                    .prepare(REACTIONS_SQL.replace("$1", "?1").as_str())
                    .unwrap();
                let reactions = statement
                    .query_map([tenant], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let mut statement = db
                    .prepare(STREAMS_SQL.replace("$1", "?1").as_str())
                    .unwrap();
                let streams = statement
                    .query_map([tenant], |row| {
                        Ok(StreamRow {
                            owner: row.get(0)?,
                            seq: row.get(1)?,
                            message_id: row.get(2)?,
                            event_id: row.get(3)?,
                        })
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let mut statement = db.prepare(OUTBOX_SQL.replace("$1", "?1").as_str()).unwrap();
                let outbox = statement
                    .query_map([tenant], |row| {
                        Ok(OutboxRow {
                            id: row.get(0)?,
                            kind: row.get(1)?,
                            conversation: row.get(2)?,
                            payload: row.get(3)?,
                        })
                    })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                Stored {
                    messages,
                    streams,
                    reactions,
                    outbox,
                }
            }
            Backend::Postgres => {
                let url = self.database_url.as_deref().unwrap();
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let messages = client
                    .query(MESSAGES_SQL, &[&tenant])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| StoredRow {
                        id: row.get(0),
                        sender: row.get(1),
                        recipient: row.get(2),
                        client_msg_id: row.get(3),
                        text: row.get(4),
                        sender_seq: row.get(5),
                        recipient_seq: row.get(6),
                        edited: row.get(7),
                        deleted: row.get(8),
                        reply_to: row.get(9),
                    })
                    .collect();
                let reactions = client
                    .query(REACTIONS_SQL, &[&tenant])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| (row.get(0), row.get(1), row.get(2)))
                    .collect();
                let streams = client
                    .query(STREAMS_SQL, &[&tenant])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| StreamRow {
                        owner: row.get(0),
                        seq: row.get(1),
                        message_id: row.get(2),
                        event_id: row.get(3),
                    })
                    .collect();
                let outbox = client
                    .query(OUTBOX_SQL, &[&tenant])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| OutboxRow {
                        id: row.get(0),
                        kind: row.get(1),
                        conversation: row.get(2),
                        payload: row.get(3),
                    })
                    .collect();
                Stored {
                    messages,
                    streams,
                    reactions,
                    outbox,
                }
            }
        }
    }

    /// Stops, for good, the processes that hold the lsm database open: the gateway nodes when
    /// they embed storage, the storage services otherwise.
    fn stop_lsm_holders(&mut self) {
        if self.layout.embedded {
            for node in &mut self.nodes {
                node.service.stop();
            }
        } else {
            for store in self.store.iter_mut().chain(self.second_store.iter_mut()) {
                store.stop();
            }
        }
    }

    /// Stops every process and drops the case's database.
    pub(crate) async fn finish(mut self) {
        for service in self.services() {
            // SIGKILL reaches a frozen process too.
            service.process.take();
        }
        if let Some(database) = self.database.take() {
            common::postgres::drop_database(&database).await;
        }
    }
}

/// Every message of a tenant, in id order, with whether it was edited and deleted, and what it
/// replies to.
const MESSAGES_SQL: &str = "SELECT id, sender, recipient, client_msg_id, text, sender_seq, \
     recipient_seq, edited_ts IS NOT NULL, deleted_ts IS NOT NULL, reply_to FROM messages \
     WHERE tenant = $1 ORDER BY id";
/// How many users reacted to each message of a tenant with each emoji. Both SQL backends
/// keep one row per (message, emoji, user) in `reactions`.
const REACTIONS_SQL: &str = "SELECT r.message_id, r.emoji, COUNT(*) FROM reactions r \
     JOIN messages m ON m.id = r.message_id WHERE m.tenant = $1 \
     GROUP BY r.message_id, r.emoji ORDER BY r.message_id, r.emoji";
/// Every entry of every stream of a tenant. Both SQL backends keep a user's stream in
/// `inbox`, one row per seq pointing at a message or at an event.
const STREAMS_SQL: &str = "SELECT owner, seq, message_id, event_id FROM inbox \
     WHERE tenant = $1 ORDER BY owner, seq";

/// Every event of a tenant's feed (the outbox), in id order.
const OUTBOX_SQL: &str = "SELECT id, kind, conversation, payload FROM outbox \
     WHERE tenant = $1 ORDER BY id";

/// What the database holds for a case's tenant.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    pub(crate) messages: Vec<StoredRow>,
    pub(crate) streams: Vec<StreamRow>,
    /// (message id, emoji, how many users reacted with it).
    pub(crate) reactions: Vec<(i64, String, i64)>,
    /// The tenant's event feed.
    pub(crate) outbox: Vec<OutboxRow>,
}

/// One row of the `outbox` table: an event of the feed.
#[derive(Debug, Clone)]
pub(crate) struct OutboxRow {
    pub(crate) id: i64,
    /// Its type as the feed names it (`message.created`).
    pub(crate) kind: String,
    pub(crate) conversation: String,
    /// Its `data`, as JSON text.
    pub(crate) payload: String,
}

/// One row of the `inbox` table: an entry of a user's stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamRow {
    pub(crate) owner: String,
    pub(crate) seq: i64,
    pub(crate) message_id: Option<i64>,
    pub(crate) event_id: Option<i64>,
}

/// One row of the `messages` table.
#[derive(Debug, Clone)]
pub(crate) struct StoredRow {
    pub(crate) id: i64,
    pub(crate) sender: String,
    pub(crate) recipient: String,
    pub(crate) client_msg_id: String,
    pub(crate) text: String,
    pub(crate) sender_seq: i64,
    pub(crate) recipient_seq: i64,
    /// Protocol 3: its text was edited; it was deleted for everyone (its text is then empty).
    pub(crate) edited: bool,
    pub(crate) deleted: bool,
    pub(crate) reply_to: Option<i64>,
}

/// Where a gateway node finds its storage.
struct NodeStorage<'a> {
    /// Where the embedded or standalone storage service listens.
    listen: SocketAddr,
    /// Where gateways connect: the service (or the proxy in front of it), then the second
    /// service if there is one.
    endpoints: Vec<SocketAddr>,
    sqlite_path: &'a Path,
    lsm_path: &'a Path,
}

/// The standalone storage service (`peroxo store`) of a layout without embedded storage.
fn store_service(
    dir: &Path,
    name: &str,
    layout: &Layout,
    listen: SocketAddr,
    sqlite_path: &Path,
    lsm_path: &Path,
    database_url: Option<&str>,
) -> Service {
    let config = dir.join(format!("{}.toml", name.replace(' ', "")));
    std::fs::write(
        &config,
        format!(
            "[storage]\nlisten = \"{listen}\"\nbackend = \"{}\"\n\
             sqlite_path = \"{}\"\nlsm_path = \"{}\"\n\
             [storage.postgres]\nurl = \"{}\"\npool_size = 8\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n",
            layout.backend.name(),
            sqlite_path.display(),
            lsm_path.display(),
            database_url.unwrap_or("postgres://unused@127.0.0.1/unused"),
        ),
    )
    .unwrap();
    Service::new(
        name,
        peroxo(&["store"], &config),
        Ready::Log("storage service listening"),
    )
}

/// The `[cluster]` section of every node's config when the layout has NATS; empty otherwise.
fn cluster_section(nats: Option<&Service>) -> String {
    match nats {
        Some(Service {
            ready: Ready::Nats(addr, _),
            ..
        }) => format!(
            "[cluster]\nmode = \"nats\"\nnats_url = \"nats://{addr}\"\n\
             subject_prefix = \"faults{}x{}\"\npresence_ttl_secs = 3\n",
            std::process::id(),
            addr.port()
        ),
        _ => String::new(),
    }
}

/// Gateway node `n`: its config file and its (not yet started) process.
fn gateway_node(
    n: usize,
    dir: &Path,
    layout: &Layout,
    storage: &NodeStorage<'_>,
    cluster: &str,
    extra_config: &str,
) -> Node {
    let http = free_addr();
    let config = dir.join(format!("node{n}.toml"));
    let endpoints: Vec<String> = storage
        .endpoints
        .iter()
        .map(|addr| format!("\"http://{addr}\""))
        .collect();
    let config_text = format!(
        "[http]\nlisten = \"{http}\"\n[auth]\nmode = \"dev\"\n\
         [storage]\nembedded = {}\nlisten = \"{}\"\n\
         endpoint = [{}]\nbackend = \"{}\"\nsqlite_path = \"{}\"\nlsm_path = \"{}\"\n\
         max_pending = {}\nrpc_timeout_ms = 2000\nconnect_timeout_ms = 1000\n\
         reconnect_initial_ms = 20\nreconnect_max_ms = 300\n\
         {LIMITS}{cluster}{}[log]\nformat = \"json\"\nlevel = \"info\"\n{extra_config}",
        layout.embedded,
        storage.listen,
        endpoints.join(", "),
        layout.backend.name(),
        storage.sqlite_path.display(),
        storage.lsm_path.display(),
        layout.max_pending,
        if cluster.is_empty() {
            String::new()
        } else {
            format!("node_id = \"n{n}\"\n")
        },
    );
    std::fs::write(&config, &config_text).unwrap();
    Node {
        service: Service::new(
            &format!("gateway n{n}"),
            peroxo(&["serve"], &config),
            Ready::Log("gateway listening"),
        ),
        http,
        config,
        config_text,
        earlier: Counters::default(),
        current: Counters::default(),
    }
}

/// The `[limits]` every node starts with: no client of the workload reaches them.
pub(crate) const LIMITS: &str = "[limits]\nrate_per_sec = 10000\nrate_burst = 10000\n";
