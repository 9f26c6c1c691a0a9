//! The state machine's redb tables and the pure logic of applying commands to them.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use types::{Command, CommandResult, LogId, StoredMembership, codec};

use crate::{Error, KeyValue};

/// Key → stored record ([`Record`]).
pub(crate) const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
/// Named values: [`META_LAST_APPLIED`], [`META_MEMBERSHIP`].
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");

/// The log id of the last applied entry, written in the same transaction as its effects.
pub(crate) const META_LAST_APPLIED: &str = "last_applied";
/// The last membership applied, written in the same transaction as the entry carrying it.
pub(crate) const META_MEMBERSHIP: &str = "membership";

/// The stored form of one key: its indexes, then its value.
///
/// `create_index u64 LE | modify_index u64 LE | version u64 LE | value`
pub(crate) struct Record;

const HEADER: usize = 24;

impl Record {
    pub(crate) fn encode(create_index: u64, modify_index: u64, version: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + value.len());
        out.extend_from_slice(&create_index.to_le_bytes());
        out.extend_from_slice(&modify_index.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// The indexes of a stored record: (create_index, modify_index, version).
    pub(crate) fn indexes(rec: &[u8]) -> Result<(u64, u64, u64), Error> {
        if rec.len() < HEADER {
            return Err(Error::CorruptRecord("shorter than its 24-byte header"));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rec[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Ok((word(0), word(1), word(2)))
    }

    pub(crate) fn decode(key: &[u8], rec: &[u8]) -> Result<KeyValue, Error> {
        let (create_index, modify_index, version) = Self::indexes(rec)?;
        Ok(KeyValue { key: key.to_vec(), value: rec[HEADER..].to_vec(), create_index, modify_index, version })
    }
}

/// Applies one command at log index `index` inside `kv`.
pub(crate) fn apply_command(
    kv: &mut Table<'_, &[u8], &[u8]>,
    index: u64,
    cmd: &Command,
) -> Result<CommandResult, Error> {
    match cmd {
        Command::Put { key, value } => {
            let (create, version) = match kv.get(key.as_slice())? {
                Some(old) => {
                    let (create, _, version) = Record::indexes(old.value())?;
                    (create, version + 1)
                }
                None => (index, 1),
            };
            kv.insert(key.as_slice(), Record::encode(create, index, version, value).as_slice())?;
            Ok(CommandResult::Put)
        }
        Command::Delete { key } => {
            let deleted = u64::from(kv.remove(key.as_slice())?.is_some());
            Ok(CommandResult::Delete { deleted })
        }
    }
}

/// Records the last applied log id and, when given, the membership, in `txn`.
pub(crate) fn write_applied(
    txn: &WriteTransaction,
    last_applied: &LogId,
    membership: Option<&StoredMembership>,
) -> Result<(), Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_LAST_APPLIED, codec::encode(last_applied)?.as_slice())?;
    if let Some(m) = membership {
        meta.insert(META_MEMBERSHIP, codec::encode(m)?.as_slice())?;
    }
    Ok(())
}
