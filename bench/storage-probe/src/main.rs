//! The direct-message write path at the storage level: the SQLite store PerOXO ships against
//! an LSM engine (fjall) given the same logical writes, both committing batches in one
//! transaction with an fsync per commit (the durable default). No gateway, no network: what
//! one message costs the engine, in time, CPU and bytes written.
//!
//! ```text
//! cargo run --release -- sqlite --messages 200000 --batch 100 [--in-flight 2]
//! cargo run --release -- fjall  --messages 200000 --batch 100 [--state-cache] [--short-keys]
//!     [--memtable-mib N]
//! cargo run --release --features rocksdb -- rocksdb --messages 200000 --batch 100 [...]
//! ```
//!
//! Both see the same messages: 100-byte texts between random pairs of 1,000 users.
//!
//! - `sqlite` appends through `SqliteStore` (its writer thread, group commit, checkpointer):
//!   the message row, the sender's dedupe key, the conversation index, two inbox rows, two
//!   conversation states and their places in the conversation list.
//! - `fjall` (and `rocksdb`, built with `--features rocksdb`: it compiles RocksDB from source and
//!   needs libclang) writes the same entries as keys, one keyspace (column family) per index,
//!   in one write batch per commit: `messages/{tenant}/{id}`, `dedupe/{tenant}/{sender}/{client_msg_id}` (read first),
//!   `inbox/{tenant}/{user}/{seq}` twice, `conversation/{tenant}/{conversation}/{id}`,
//!   `state/{tenant}/{user}/{conversation}` twice (read first, unless `--state-cache` keeps
//!   them in memory) and `list/{tenant}/{user}/{activity}/{conversation}` (the old entry
//!   removed, the new one written) twice. Seqs are kept in memory, as the SQLite writer does.
//!   With `--short-keys`, tenants, users and conversations appear in keys as 4-byte numbers
//!   (each name written once to `names` when first used) instead of their names.
//!
//! Each run prints messages per second, commit latency (p50, p99, max), bytes the process
//! wrote to storage per message (`/proc/self/io`) and CPU per message (all threads).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use peroxo_protocol::domain::NewMessage;
use peroxo_storage::{MessageStore, SqliteStore};

const USERS: u64 = 1_000;
const TENANT: &str = "default";

struct Options {
    engine: String,
    messages: usize,
    batch: usize,
    in_flight: usize,
    state_cache: bool,
    short_keys: bool,
    /// The memtable size per keyspace, in MiB (the engine's default when absent).
    memtable_mib: Option<u64>,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut args = std::env::args().skip(1);
        let engine = args.next().ok_or("name an engine: sqlite or fjall")?;
        let mut options = Self {
            engine,
            messages: 200_000,
            batch: 100,
            in_flight: 1,
            state_cache: false,
            short_keys: false,
            memtable_mib: None,
        };
        while let Some(flag) = args.next() {
            let mut number = || -> Result<usize, String> {
                let value = args.next().ok_or(format!("{flag} needs a value"))?;
                value
                    .parse()
                    .map_err(|_| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--messages" => options.messages = number()?,
                "--batch" => options.batch = number()?.max(1),
                "--in-flight" => options.in_flight = number()?.max(1),
                "--state-cache" => options.state_cache = true,
                "--short-keys" => options.short_keys = true,
                "--memtable-mib" => options.memtable_mib = Some(number()? as u64),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        Ok(options)
    }
}

/// A small deterministic generator, so both engines see the same messages.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn messages(count: usize) -> Vec<NewMessage> {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let text = "x".repeat(100);
    (0..count)
        .map(|i| {
            let sender = random.next() % USERS;
            let mut recipient = random.next() % USERS;
            if recipient == sender {
                recipient = (sender + 1) % USERS;
            }
            NewMessage {
                tenant: TENANT.to_owned(),
                sender: format!("user{sender}"),
                recipient: format!("user{recipient}"),
                client_msg_id: format!("{:016x}-{i}", random.next()),
                text: text.clone(),
            }
        })
        .collect()
}

/// What a run measured.
struct Run {
    elapsed: Duration,
    commits: Vec<Duration>,
}

async fn sqlite(dir: &std::path::Path, messages: Vec<NewMessage>, options: &Options) -> Run {
    let store = SqliteStore::open(dir.join("probe.db"), peroxo_config::SqliteSync::Full)
        .expect("open the SQLite store");
    let started = Instant::now();
    let mut commits = Vec::new();
    let mut batches = messages.chunks(options.batch).map(<[NewMessage]>::to_vec);
    let mut calls = tokio::task::JoinSet::new();
    loop {
        while calls.len() < options.in_flight {
            let Some(batch) = batches.next() else { break };
            let store = store.clone();
            calls.spawn(async move {
                let sent = Instant::now();
                store.append(batch).await.expect("append");
                sent.elapsed()
            });
        }
        match calls.join_next().await {
            Some(took) => commits.push(took.expect("append task")),
            None => break,
        }
    }
    Run {
        elapsed: started.elapsed(),
        commits,
    }
}

/// A key of NUL-separated parts (no part holds a NUL).
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

/// A conversation's row for one participant: the activity that orders the list, and the
/// unread count.
#[derive(Clone, Copy, Default)]
struct State {
    activity: u64,
    unread: u64,
}

impl State {
    fn decode(bytes: &[u8]) -> Self {
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Self {
            activity: word(0),
            unread: word(8),
        }
    }
}

/// The key ranges of the layout, one keyspace (column family) each.
#[derive(Clone, Copy)]
enum Space {
    Messages,
    Dedupe,
    Inbox,
    Conversation,
    State,
    List,
    Names,
}

impl Space {
    const ALL: [Space; 7] = [
        Space::Messages,
        Space::Dedupe,
        Space::Inbox,
        Space::Conversation,
        Space::State,
        Space::List,
        Space::Names,
    ];

    fn name(self) -> &'static str {
        match self {
            Space::Messages => "messages",
            Space::Dedupe => "dedupe",
            Space::Inbox => "inbox",
            Space::Conversation => "conversation",
            Space::State => "state",
            Space::List => "list",
            Space::Names => "names",
        }
    }
}

/// An LSM engine as the layout uses it: point reads, and writes gathered into one batch that
/// `commit` makes durable (fsynced) and visible at once.
trait Engine {
    fn get(&self, space: Space, key: &[u8]) -> Option<Vec<u8>>;
    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, space: Space, key: Vec<u8>);
    fn commit(&mut self);
}

struct Fjall {
    db: Database,
    spaces: Vec<Keyspace>,
    pending: Option<fjall::OwnedWriteBatch>,
}

impl Fjall {
    fn open(dir: &std::path::Path, options: &Options) -> Self {
        let memtable = options.memtable_mib;
        let db = Database::builder(dir.join("fjall"))
            .open()
            .expect("open fjall");
        let spaces = Space::ALL
            .iter()
            .map(|space| {
                db.keyspace(space.name(), || match memtable {
                    Some(mib) => KeyspaceCreateOptions::default().max_memtable_size(mib << 20),
                    None => KeyspaceCreateOptions::default(),
                })
                .expect("open a keyspace")
            })
            .collect();
        Self {
            db,
            spaces,
            pending: None,
        }
    }

    fn batch(&mut self) -> &mut fjall::OwnedWriteBatch {
        self.pending
            .get_or_insert_with(|| self.db.batch().durability(Some(PersistMode::SyncAll)))
    }
}

impl Engine for Fjall {
    fn get(&self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        self.spaces[space as usize]
            .get(key)
            .expect("read")
            .map(|value| value.to_vec())
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        let keyspace = self.spaces[space as usize].clone();
        self.batch().insert(&keyspace, key, value);
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        let keyspace = self.spaces[space as usize].clone();
        self.batch().remove(&keyspace, key);
    }

    fn commit(&mut self) {
        if let Some(batch) = self.pending.take() {
            batch.commit().expect("commit");
        }
    }
}

#[cfg(feature = "rocksdb")]
struct Rocks {
    db: rocksdb::DB,
    pending: rocksdb::WriteBatch,
    sync: rocksdb::WriteOptions,
}

#[cfg(feature = "rocksdb")]
impl Rocks {
    fn open(dir: &std::path::Path, probe: &Options) -> Self {
        let mut options = rocksdb::Options::default();
        if let Some(mib) = probe.memtable_mib {
            options.set_write_buffer_size(usize::try_from(mib << 20).expect("fits"));
        }
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        let families = Space::ALL
            .iter()
            .map(|space| rocksdb::ColumnFamilyDescriptor::new(space.name(), options.clone()));
        let db = rocksdb::DB::open_cf_descriptors(&options, dir.join("rocksdb"), families)
            .expect("open rocksdb");
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        Self {
            db,
            pending: rocksdb::WriteBatch::default(),
            sync,
        }
    }

    fn family(&self, space: Space) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(space.name()).expect("a column family")
    }
}

#[cfg(feature = "rocksdb")]
impl Engine for Rocks {
    fn get(&self, space: Space, key: &[u8]) -> Option<Vec<u8>> {
        self.db
            .get_pinned_cf(self.family(space), key)
            .expect("read")
            .map(|value| value.to_vec())
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        let family = self.db.cf_handle(space.name()).expect("a column family");
        self.pending.put_cf(family, key, value);
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        let family = self.db.cf_handle(space.name()).expect("a column family");
        self.pending.delete_cf(family, key);
    }

    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        self.db.write_opt(batch, &self.sync).expect("commit");
    }
}

/// The layout's writer: what it keeps in memory, and the entries one message writes.
struct Layout<E> {
    engine: E,
    seqs: HashMap<String, u64>,
    states: Option<HashMap<Vec<u8>, State>>,
    /// With `--short-keys`: the number standing for each name in keys (a new one is written
    /// to `names` in the batch that first uses it).
    short_names: Option<HashMap<String, u32>>,
    next_id: u64,
}

impl<E: Engine> Layout<E> {
    fn new(engine: E, options: &Options) -> Self {
        Self {
            engine,
            seqs: HashMap::new(),
            states: options.state_cache.then(HashMap::new),
            short_names: options.short_keys.then(HashMap::new),
            next_id: 1,
        }
    }

    fn next_seq(&mut self, user: &str) -> u64 {
        let seq = self.seqs.entry(user.to_owned()).or_insert(0);
        *seq += 1;
        *seq
    }

    fn state(&self, key: &[u8]) -> State {
        if let Some(cached) = self.states.as_ref().and_then(|states| states.get(key)) {
            return *cached;
        }
        self.engine
            .get(Space::State, key)
            .map_or_else(State::default, |bytes| State::decode(&bytes))
    }

    /// What stands for `name` in keys: the name itself, or with `--short-keys` its number.
    fn name(&mut self, name: &str) -> Vec<u8> {
        let Some(names) = self.short_names.as_mut() else {
            return name.as_bytes().to_vec();
        };
        if let Some(number) = names.get(name) {
            return number.to_be_bytes().to_vec();
        }
        let number = u32::try_from(names.len()).expect("fewer names than u32");
        names.insert(name.to_owned(), number);
        self.engine.put(
            Space::Names,
            name.as_bytes().to_vec(),
            number.to_be_bytes().to_vec(),
        );
        number.to_be_bytes().to_vec()
    }

    /// Commits `batch` in one write batch, fsynced.
    fn append(&mut self, batch: &[NewMessage]) {
        for message in batch {
            let tenant = &self.name(&message.tenant);
            let sender = self.name(&message.sender);
            let recipient = self.name(&message.recipient);
            let dedupe = key(&[tenant, &sender, message.client_msg_id.as_bytes()]);
            if self.engine.get(Space::Dedupe, &dedupe).is_some() {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let conversation =
                peroxo_protocol::domain::conversation_id(&message.sender, &message.recipient);
            let conversation_key = self.name(&conversation);
            let sender_seq = self.next_seq(&message.sender);
            let recipient_seq = self.next_seq(&message.recipient);
            let mut row = Vec::with_capacity(256);
            for field in [
                &message.sender,
                &message.recipient,
                &conversation,
                &message.client_msg_id,
                &message.text,
            ] {
                row.extend_from_slice(&u32::try_from(field.len()).expect("short").to_le_bytes());
                row.extend_from_slice(field.as_bytes());
            }
            row.extend_from_slice(&sender_seq.to_le_bytes());
            row.extend_from_slice(&recipient_seq.to_le_bytes());
            let id_bytes = id.to_be_bytes();
            let engine = &mut self.engine;
            engine.put(Space::Messages, key(&[tenant, &id_bytes]), row);
            engine.put(Space::Dedupe, dedupe, id_bytes.to_vec());
            for (user, seq) in [(&sender, sender_seq), (&recipient, recipient_seq)] {
                engine.put(
                    Space::Inbox,
                    key(&[tenant, user, &seq.to_be_bytes()]),
                    id_bytes.to_vec(),
                );
            }
            engine.put(
                Space::Conversation,
                key(&[tenant, &conversation_key, &id_bytes]),
                Vec::new(),
            );
            for (user, seq, unread) in [
                (&sender, sender_seq, false),
                (&recipient, recipient_seq, true),
            ] {
                let state_key = key(&[tenant, user, &conversation_key]);
                let old = self.state(&state_key);
                if old.activity != 0 {
                    self.engine.delete(
                        Space::List,
                        key(&[tenant, user, &old.activity.to_be_bytes(), &conversation_key]),
                    );
                }
                let new = State {
                    activity: seq,
                    unread: if unread { old.unread + 1 } else { 0 },
                };
                let mut value = Vec::with_capacity(24);
                value.extend_from_slice(&new.activity.to_le_bytes());
                value.extend_from_slice(&new.unread.to_le_bytes());
                value.extend_from_slice(&id.to_le_bytes());
                if let Some(states) = self.states.as_mut() {
                    states.insert(state_key.clone(), new);
                }
                self.engine.put(Space::State, state_key, value);
                self.engine.put(
                    Space::List,
                    key(&[tenant, user, &seq.to_be_bytes(), &conversation_key]),
                    Vec::new(),
                );
            }
        }
        self.engine.commit();
    }
}

fn lsm<E: Engine>(engine: E, messages: &[NewMessage], options: &Options) -> Run {
    let mut layout = Layout::new(engine, options);
    let started = Instant::now();
    let mut commits = Vec::new();
    for batch in messages.chunks(options.batch) {
        let sent = Instant::now();
        layout.append(batch);
        commits.push(sent.elapsed());
    }
    Run {
        elapsed: started.elapsed(),
        commits,
    }
}

/// Bytes this process had written to storage, from `/proc/self/io`.
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("read /proc/self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("write_bytes in /proc/self/io")
}

/// CPU seconds of every thread of this process so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("clock ticks");
    // utime and stime, the 14th and 15th fields of the line (USER_HZ is 100 on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let last = sorted.len().saturating_sub(1) as f64;
    sorted[(last * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("peroxo-storage-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the data directory");
    let messages = messages(options.messages);
    let count = messages.len();
    let (written, cpu) = (written_bytes(), cpu_seconds());
    let mut run = match options.engine.as_str() {
        "sqlite" => sqlite(&dir, messages, &options).await,
        "fjall" => lsm(Fjall::open(&dir, &options), &messages, &options),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => lsm(Rocks::open(&dir, &options), &messages, &options),
        other => {
            eprintln!(
                "unknown engine {other}: sqlite, fjall or (built with --features rocksdb) rocksdb"
            );
            std::process::exit(2);
        }
    };
    let (written, cpu) = (written_bytes() - written, cpu_seconds() - cpu);
    run.commits.sort();
    let per_message = |total: f64| total / count as f64;
    println!(
        "{} batch {} in-flight {}{}: {count} messages in {:.1} s = {:.0} msg/s; \
         {} commits p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
         {:.0} bytes written and {:.0} µs CPU per message",
        options.engine,
        options.batch,
        options.in_flight,
        [
            (options.state_cache, " state-cache"),
            (options.short_keys, " short-keys")
        ]
        .iter()
        .filter_map(|(on, name)| on.then_some(*name))
        .collect::<String>(),
        run.elapsed.as_secs_f64(),
        count as f64 / run.elapsed.as_secs_f64(),
        run.commits.len(),
        percentile(&run.commits, 0.5).as_secs_f64() * 1e3,
        percentile(&run.commits, 0.99).as_secs_f64() * 1e3,
        percentile(&run.commits, 1.0).as_secs_f64() * 1e3,
        per_message(written as f64),
        per_message(cpu * 1e6),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
