//! `peroxo backup`: a consistent copy of the SQLite database, taken while it serves.
//!
//! `VACUUM INTO` on a read-only connection copies one snapshot of the database (WAL readers
//! see the last commit before they started, and writers go on meanwhile) into a new, compact
//! file. The copy is then opened on its own and checked: `integrity_check`, the schema
//! version, and what it holds.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::backend;
use super::schema::SCHEMA_VERSION;
use crate::StoreError;

/// What a verified copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub messages: u64,
    pub events: u64,
    pub bytes: u64,
}

/// Copies the database at `database` to `to` (which must not exist) and verifies the copy.
pub fn backup(database: &Path, to: &Path) -> Result<BackupReport, StoreError> {
    if to.exists() {
        return Err(StoreError::Backend(format!(
            "{} already exists; a backup never overwrites a file",
            to.display()
        )));
    }
    if !database.exists() {
        return Err(StoreError::Backend(format!(
            "no database at {} (storage.sqlite_path)",
            database.display()
        )));
    }
    let source =
        Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
    source
        .execute_batch("PRAGMA busy_timeout = 5000;")
        .map_err(backend)?;
    let target = to
        .to_str()
        .ok_or_else(|| StoreError::Backend(format!("{} is not a UTF-8 path", to.display())))?;
    source
        .execute("VACUUM INTO ?1", [target])
        .map_err(|e| StoreError::Backend(format!("cannot copy the database: {e}")))?;
    verify(to)
}

/// Opens a copy read-only and checks that it is whole and of this version.
fn verify(copy: &Path) -> Result<BackupReport, StoreError> {
    let conn =
        Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(backend)?;
    if integrity != "ok" {
        return Err(StoreError::Backend(format!(
            "the copy failed its integrity check: {integrity}"
        )));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the copy has schema version {version}, this build {SCHEMA_VERSION}"
        )));
    }
    let count = |table: &str| -> Result<u64, StoreError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(backend)
    };
    let bytes = std::fs::metadata(copy)
        .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", copy.display())))?
        .len();
    Ok(BackupReport {
        messages: count("messages")?,
        events: count("events")?,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageStore;
    use crate::sqlite::SqliteStore;
    use peroxo_config::SqliteSync;
    use peroxo_protocol::domain::NewMessage;

    fn message(i: usize) -> NewMessage {
        NewMessage {
            tenant: "t".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            client_msg_id: format!("c{i}"),
            text: format!("text {i}"),
            reply_to: None,
        }
    }

    #[tokio::test]
    async fn a_backup_taken_while_writing_is_a_verified_copy_of_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("live.db"), SqliteSync::Full).unwrap();
        store.append((0..50).map(message).collect()).await.unwrap();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 50..250 {
                    store.append(vec![message(i)]).await.unwrap();
                }
            })
        };
        let copy = dir.path().join("copy.db");
        let live = dir.path().join("live.db");
        let report = tokio::task::spawn_blocking({
            let copy = copy.clone();
            move || backup(&live, &copy)
        })
        .await
        .unwrap()
        .unwrap();
        writer.await.unwrap();
        assert!(
            (50..=250).contains(&report.messages),
            "{} messages",
            report.messages
        );
        // The copy opens as a store and its stream is gapless up to what it holds.
        let restored = SqliteStore::open(&copy, SqliteSync::Full).unwrap();
        let bob = peroxo_protocol::domain::UserKey::new("t", "bob");
        assert_eq!(restored.last_seq(bob).await.unwrap(), report.messages);
    }

    #[test]
    fn a_backup_never_overwrites_and_names_a_missing_database() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("there.db");
        std::fs::write(&existing, b"x").unwrap();
        let error = backup(&dir.path().join("missing.db"), &existing).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        let error = backup(&dir.path().join("missing.db"), &dir.path().join("new.db")).unwrap_err();
        assert!(error.to_string().contains("no database at"), "{error}");
    }
}
