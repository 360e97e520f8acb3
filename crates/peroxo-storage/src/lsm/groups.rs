//! Group creations and changes inside the writer's transaction, and a group's members.

use fjall::Readable;

use super::tables::Tables;
use super::writer::WriteTx;
use crate::StoreError;
use peroxo_protocol::conversation::{CreateGroup, GroupChange, GroupOutcome};
use peroxo_protocol::domain::UserKey;
use peroxo_protocol::event::Member;

/// Creates a group (see `MessageStore::create_group`); also says how many stream entries
/// it wrote.
pub(super) fn create_group(
    w: &mut WriteTx<'_>,
    request: &CreateGroup,
) -> Result<(GroupOutcome, usize), StoreError> {
    let _ = (w, request);
    Err(super::unsupported("create_group"))
}

/// Changes a group (see `MessageStore::change_group`); also says how many stream entries
/// it wrote.
pub(super) fn change_group(
    w: &mut WriteTx<'_>,
    request: &GroupChange,
) -> Result<(GroupOutcome, usize), StoreError> {
    let _ = (w, request);
    Err(super::unsupported("change_group"))
}

/// The members of a group, for one of its members (see `MessageStore::members`).
pub(super) fn members(
    r: &impl Readable,
    t: &Tables,
    user: &UserKey,
    conversation_id: &str,
) -> Result<Vec<Member>, StoreError> {
    let _ = (r, t, user, conversation_id);
    Err(super::unsupported("members"))
}
