//! The writer's open transaction: what its jobs wrote, held in memory by table until the
//! commit writes it to the engine as one batch, over a snapshot of what is committed.
//!
//! Reads through it (it is a [`Source`]) see its writes first: a point read looks in what the
//! transaction wrote to the table, then in the snapshot; a range read merges the two in key
//! order, a written row replacing the committed row of its key and a deletion hiding it. The
//! writer is the database's only writer, so the snapshot, taken when the transaction opens,
//! is the committed state the transaction builds on.
//!
//! The commit is one fjall `WriteBatch`: one journal write (and one fsync when the
//! durability says so), applied to the memtables at one sequence number that becomes visible
//! to snapshots only once every row of the batch is in (`WriteBatch::commit` publishes the
//! batch's seqno after applying it). A failed transaction is dropped and leaves nothing.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use fjall::{Database, Keyspace, KvPair, OwnedWriteBatch, PersistMode, Snapshot};

use super::tables::{Source, Table, committed, engine};
use crate::StoreError;

/// What a transaction wrote to one table.
struct Written {
    keyspace: Keyspace,
    /// By key: the value written, `None` when deleted.
    rows: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// An open transaction of the writer.
pub(super) struct Overlay {
    db: Database,
    /// How the commit is made durable (`None`: left to the engine).
    durability: Option<PersistMode>,
    /// What is committed, as the transaction opened.
    snapshot: Snapshot,
    /// By table index: what the transaction wrote to the table, if anything.
    written: Vec<Option<Written>>,
}

impl Overlay {
    /// Opens a transaction over what `db` has committed.
    pub(super) fn new(db: &Database, durability: Option<PersistMode>) -> Self {
        Self {
            db: db.clone(),
            durability,
            snapshot: db.snapshot(),
            written: Vec::new(),
        }
    }

    /// Writes `value` at `key` of `table`.
    pub(super) fn insert(&mut self, table: &Table, key: Vec<u8>, value: Vec<u8>) {
        self.rows_mut(table).insert(key, Some(value));
    }

    /// Deletes `key` of `table`.
    pub(super) fn remove(&mut self, table: &Table, key: Vec<u8>) {
        self.rows_mut(table).insert(key, None);
    }

    /// Writes everything the transaction wrote to the engine, atomically.
    pub(super) fn commit(self) -> Result<(), StoreError> {
        let count = self.written.iter().flatten().map(|w| w.rows.len()).sum();
        if count == 0 {
            return Ok(());
        }
        let mut batch = OwnedWriteBatch::with_capacity(self.db, count).durability(self.durability);
        for written in self.written.into_iter().flatten() {
            for (key, value) in written.rows {
                match value {
                    Some(value) => batch.insert(&written.keyspace, key, value),
                    None => batch.remove(&written.keyspace, key),
                }
            }
        }
        batch.commit().map_err(engine)
    }

    fn rows(&self, table: &Table) -> Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        self.written
            .get(table.index)
            .and_then(Option::as_ref)
            .map(|w| &w.rows)
    }

    fn rows_mut(&mut self, table: &Table) -> &mut BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        if self.written.len() <= table.index {
            self.written.resize_with(table.index + 1, || None);
        }
        let written = self.written[table.index].get_or_insert_with(|| Written {
            keyspace: table.keyspace.clone(),
            rows: BTreeMap::new(),
        });
        &mut written.rows
    }
}

impl Source for Overlay {
    fn get<T>(
        &self,
        table: &Table,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StoreError> {
        match self.rows(table).and_then(|rows| rows.get(key)) {
            Some(written) => Ok(written.as_deref().map(read)),
            None => self.snapshot.get(table, key, read),
        }
    }

    fn walk(
        &self,
        table: &Table,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        rev: bool,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let committed = committed(&self.snapshot, table, lower, upper, rev);
        let written = match self.rows(table) {
            Some(rows) if !is_empty(lower, upper) => rows.range::<[u8], _>((lower, upper)),
            _ => return merge(std::iter::empty(), committed, rev, visit),
        };
        if rev {
            merge(written.rev(), committed, rev, visit)
        } else {
            merge(written, committed, rev, visit)
        }
    }
}

/// Whether no key lies between `lower` and `upper` (a range a `BTreeMap` refuses, among
/// others).
fn is_empty(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
}

/// Visits `written` (what the transaction wrote, `None` deleted) and `committed` (the
/// snapshot's rows), both in the walk's order (`rev`: reversed key order), as one sequence in
/// that order, while `visit` says to go on: a written row replaces the committed row of its
/// key, a deletion hides it.
fn merge<'w>(
    written: impl Iterator<Item = (&'w Vec<u8>, &'w Option<Vec<u8>>)>,
    mut committed: impl Iterator<Item = Result<KvPair, StoreError>>,
    rev: bool,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut written = written.peekable();
    let mut next_committed = committed.next().transpose()?;
    loop {
        // `Less`: the written row comes first; `Greater`: the committed one; `Equal`: both are
        // of one key.
        let order = match (written.peek(), &next_committed) {
            (None, None) => return Ok(()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((w, _)), Some((c, _))) if rev => c[..].cmp(w.as_slice()),
            (Some((w, _)), Some((c, _))) => w.as_slice().cmp(&c[..]),
        };
        let go_on = if order == Ordering::Greater {
            match std::mem::replace(&mut next_committed, committed.next().transpose()?) {
                Some((key, value)) => visit(&key, &value)?,
                None => true,
            }
        } else {
            if order == Ordering::Equal {
                next_committed = committed.next().transpose()?;
            }
            match written.next() {
                Some((key, Some(value))) => visit(key, value)?,
                _ => true,
            }
        };
        if !go_on {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(
        written: &[(&str, Option<&str>)],
        committed: &[&str],
        rev: bool,
        limit: usize,
    ) -> Vec<String> {
        let written: BTreeMap<Vec<u8>, Option<Vec<u8>>> = written
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect();
        let mut committed: Vec<KvPair> = committed
            .iter()
            .map(|k| (k.as_bytes().into(), b"committed".as_slice().into()))
            .collect();
        if rev {
            committed.reverse();
        }
        let committed = committed.into_iter().map(Ok);
        let mut seen = Vec::new();
        let visit = |k: &[u8], v: &[u8]| {
            let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
            seen.push(format!("{k}={v}"));
            Ok(seen.len() < limit)
        };
        if rev {
            merge(written.iter().rev(), committed, rev, visit).unwrap();
        } else {
            merge(written.iter(), committed, rev, visit).unwrap();
        }
        seen
    }

    #[test]
    fn written_rows_merge_with_committed_ones_in_key_order() {
        let written = [("b", Some("new")), ("d", None), ("e", Some("new"))];
        let committed = ["a", "b", "c", "d", "f"];
        assert_eq!(
            keys(&written, &committed, false, usize::MAX),
            [
                "a=committed",
                "b=new",
                "c=committed",
                "e=new",
                "f=committed"
            ]
        );
        assert_eq!(
            keys(&written, &committed, true, usize::MAX),
            [
                "f=committed",
                "e=new",
                "c=committed",
                "b=new",
                "a=committed"
            ]
        );
    }

    #[test]
    fn a_merge_stops_when_the_visit_says_so() {
        let written = [("a", None), ("b", Some("new"))];
        assert_eq!(keys(&written, &["a", "c"], false, 1), ["b=new"]);
        assert_eq!(
            keys(&written, &["a", "c"], true, 2),
            ["c=committed", "b=new"]
        );
        assert_eq!(keys(&[], &[], false, 1), Vec::<String>::new());
    }

    /// The keys and values of `table` from `r`, as text, in key order (`rev`: reversed).
    fn rows(r: &impl Source, table: &Table, rev: bool) -> Vec<String> {
        let mut seen = Vec::new();
        r.walk(table, Bound::Unbounded, Bound::Unbounded, rev, |k, v| {
            let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
            seen.push(format!("{k}={v}"));
            Ok(true)
        })
        .unwrap();
        seen
    }

    #[test]
    fn a_transaction_reads_its_writes_and_readers_see_them_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let keyspace = db.keyspace("t", Default::default).unwrap();
        let table = Table { keyspace, index: 0 };
        let mut tx = Overlay::new(&db, None);
        tx.insert(&table, b"a".to_vec(), b"1".to_vec());
        tx.insert(&table, b"b".to_vec(), b"1".to_vec());
        tx.commit().unwrap();

        let mut tx = Overlay::new(&db, None);
        tx.insert(&table, b"b".to_vec(), b"2".to_vec());
        tx.insert(&table, b"c".to_vec(), b"2".to_vec());
        tx.remove(&table, b"a".to_vec());
        let get = |k: &[u8]| tx.get(&table, k, <[u8]>::to_vec).unwrap();
        assert_eq!(get(b"a"), None);
        assert_eq!(get(b"b"), Some(b"2".to_vec()));
        assert_eq!(rows(&tx, &table, false), ["b=2", "c=2"]);
        assert_eq!(rows(&tx, &table, true), ["c=2", "b=2"]);

        let before = db.snapshot();
        assert_eq!(rows(&before, &table, false), ["a=1", "b=1"]);
        tx.commit().unwrap();
        assert_eq!(rows(&before, &table, false), ["a=1", "b=1"]);
        assert_eq!(rows(&db.snapshot(), &table, false), ["b=2", "c=2"]);
    }

    #[test]
    fn an_empty_range_is_recognised() {
        let (a, b): (&[u8], &[u8]) = (b"a", b"b");
        assert!(is_empty(Bound::Included(b), Bound::Included(a)));
        assert!(is_empty(Bound::Included(a), Bound::Excluded(a)));
        assert!(is_empty(Bound::Excluded(a), Bound::Included(a)));
        assert!(!is_empty(Bound::Included(a), Bound::Included(a)));
        assert!(!is_empty(Bound::Excluded(a), Bound::Unbounded));
    }
}
