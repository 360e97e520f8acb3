//! Erasing a user's data (`peroxo user erase`), a batch at a time, each a writer job in a
//! transaction of its own: the texts of the messages the user sent, then the user's read
//! state. Each batch picks what is not erased yet, so a run that stopped half-way is carried
//! on by the next, and a run over erased data changes nothing.
//!
//! A text lives in its message row only (events and previews read it from there), so
//! emptying the row erases it everywhere it is read from.

use super::keys::KeyReader;
use super::reads::count_unread;
use super::tables::{self, MessageRow, StateRow, key};
use super::writer::WriteTx;
use super::{LsmStore, StoreError};
use peroxo_protocol::domain::UserKey;

/// Empties the text of up to `limit` of the messages `user` sent that still have one, oldest
/// first. The user's messages are the ones `dedupe` holds under its (tenant, sender) prefix.
pub(super) fn texts(w: &mut WriteTx<'_>, user: &UserKey, limit: u32) -> Result<u64, StoreError> {
    let prefix = key::user(&user.tenant, &user.user);
    let mut ids = tables::scan(&w.tx, &w.t.dedupe, &prefix, false, usize::MAX)?
        .into_iter()
        .map(|(_, id)| tables::decode_u64(&id))
        .collect::<Result<Vec<u64>, _>>()?;
    ids.sort_unstable();
    let mut erased = 0;
    for id in ids {
        if erased >= u64::from(limit) {
            break;
        }
        let key = key::message(&user.tenant, id);
        let Some(mut message) = w.get::<MessageRow>(&w.t.messages, &key)? else {
            continue;
        };
        if message.text.is_empty() || message.sender != user.user {
            continue;
        }
        message.text.clear();
        w.put(&w.t.messages, key, &message)?;
        erased += 1;
    }
    Ok(erased)
}

/// Forgets the read marker of up to `limit` of `user`'s conversations that have one, and
/// counts their unread messages again: every message from others the user may see.
pub(super) fn read_state(
    w: &mut WriteTx<'_>,
    user: &UserKey,
    limit: u32,
) -> Result<u64, StoreError> {
    let prefix = key::user(&user.tenant, &user.user);
    let mut forgotten = 0;
    for (rest, value) in tables::scan(&w.tx, &w.t.states, &prefix, false, usize::MAX)? {
        if forgotten >= u64::from(limit) {
            break;
        }
        let old: StateRow = tables::decode(&value)?;
        if old.read_marker == 0 {
            continue;
        }
        let conversation = KeyReader::new(&rest).str()?;
        let unread_count = count_unread(
            &w.tx,
            w.t,
            &user.tenant,
            &user.user,
            &conversation,
            old.boundary,
        )?;
        let new = StateRow {
            read_marker: 0,
            unread_count,
            ..old.clone()
        };
        w.put_state(user, &conversation, Some(&old), &new)?;
        forgotten += 1;
    }
    Ok(forgotten)
}

impl LsmStore {
    /// The texts of the messages `sender` of `tenant` sent, by message id, as the database
    /// holds them: for tests that check an erasure reached the rows themselves.
    #[doc(hidden)]
    pub async fn stored_texts(
        &self,
        tenant: &str,
        sender: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (tenant, sender) = (tenant.to_owned(), sender.to_owned());
        self.read(move |r, t| {
            let prefix = key::tenant(&tenant);
            let mut texts = Vec::new();
            for (_, value) in tables::scan(r, &t.messages, &prefix, false, usize::MAX)? {
                let message: MessageRow = tables::decode(&value)?;
                if message.sender == sender {
                    texts.push(message.text);
                }
            }
            Ok(texts)
        })
        .await
    }
}
