//! The record of a note's recent writes, which makes an update or delete
//! sent twice (a retry after a lost reply, a request the network delivers
//! late) take effect once.
//!
//! Every write has a key, the same in all its attempts: random for a write
//! without a `request_id`, derived from the `request_id` otherwise. A write
//! applies only if its key is not in the item's `writes` map, and adds it,
//! with the version it produced. The map holds at most [`CAPACITY`] entries:
//! a write that finds it full first drops the oldest (plain writes before
//! those with a request id) and raises the item's `writeFence` to the
//! newest issue time it dropped. An attempt issued at or before the fence is
//! refused, so a dropped write can never apply again, however late the
//! network delivers it.

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{FENCE_ATTR, Item, WRITES_ATTR, read_number};
use crate::store::StoreError;

/// Most entries in a note's `writes` map (a write with a `request_id` takes
/// two). 32 short entries are about 1 KB: one more write unit at most.
pub(super) const CAPACITY: usize = 32;
/// Entries left when a full map is pruned: one write in 16 pays the prune.
pub(super) const KEPT: usize = 16;

/// The identity of one write, the same in each of its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WriteKey {
    /// Its key in the `writes` map.
    pub key: String,
    /// For a write with a `request_id`: the key of its info entry (issue
    /// time and request digest) and the digest.
    pub request: Option<(String, String)>,
    /// When it was issued, in ns since the epoch: the note's new
    /// `updatedNs`, and what the fence is compared with.
    pub issued_ns: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl WriteKey {
    /// A write without a `request_id`: a key of its own.
    pub fn plain(issued_ns: u64) -> Self {
        let nonce: [u8; 6] = rand_bytes();
        Self {
            key: format!("p{issued_ns:x}.{}", hex(&nonce)),
            request: None,
            issued_ns,
        }
    }

    /// A write with `request_id`, whose request has `digest`.
    pub fn requested(request_id: &str, digest: &str, issued_ns: u64) -> Self {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, request_id.as_bytes());
        let id = hex(&hash.as_ref()[..8]);
        Self {
            key: format!("r{id}"),
            request: Some((format!("i{id}"), digest.to_owned())),
            issued_ns,
        }
    }

    /// The same write issued again after `fence`, once the fence has
    /// refused it (and none of its attempts can apply any more).
    pub fn reissued(&self, fence: u64, now_ns: u64) -> Self {
        let issued_ns = now_ns.max(fence + 1);
        match &self.request {
            Some(_) => Self {
                issued_ns,
                ..self.clone()
            },
            None => Self::plain(issued_ns),
        }
    }

    /// The value of its info entry, for a write with a `request_id`.
    pub fn info(&self) -> Option<(&str, String)> {
        self.request
            .as_ref()
            .map(|(key, digest)| (key.as_str(), format!("{:x}.{digest}", self.issued_ns)))
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // aws-lc's system RNG; a failure here is an unusable machine.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system's random number generator");
    bytes
}

/// One write on record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Its key in the map (and its info entry's, for a `request_id`).
    keys: Vec<String>,
    /// The version it produced.
    version: i64,
    /// When it was issued (ns).
    issued_ns: u64,
    /// Whether it carried a `request_id` (kept longer when pruning).
    requested: bool,
}

impl Entry {
    /// The write recorded under `key` in `map`: `Some(None)` for the info
    /// entry of a write with a `request_id` (read with its write), `None`
    /// for what this code never writes.
    fn read(map: &Item, key: &str, value: &AttributeValue) -> Option<Option<Self>> {
        let version = match value {
            AttributeValue::N(n) => n.parse::<i64>().ok(),
            _ => None,
        };
        let id = key.get(1..).unwrap_or_default();
        match (key.as_bytes().first(), version) {
            (Some(b'p'), Some(version)) => {
                let (issued, _) = id.split_once('.')?;
                Some(Some(Entry {
                    keys: vec![key.to_owned()],
                    version,
                    issued_ns: parse_hex(issued)?,
                    requested: false,
                }))
            }
            (Some(b'r'), Some(version)) => {
                let info_key = format!("i{id}");
                let Some(AttributeValue::S(info)) = map.get(&info_key) else {
                    return None;
                };
                let issued_ns = info.split_once('.').and_then(|(t, _)| parse_hex(t))?;
                Some(Some(Entry {
                    keys: vec![key.to_owned(), info_key],
                    version,
                    issued_ns,
                    requested: true,
                }))
            }
            (Some(b'i'), _) if map.contains_key(&format!("r{id}")) => Some(None),
            _ => None,
        }
    }
}

/// What the record says of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seen {
    /// Applied, producing `version`, issued at `issued_ns`.
    Applied {
        /// The version it produced.
        version: i64,
        /// When the applied attempt was issued.
        issued_ns: u64,
    },
    /// Its `request_id` was used by another request.
    Reused,
    /// Not on record, and refused by the fence: it will never apply.
    Fenced {
        /// The item's fence.
        fence: u64,
    },
    /// Not on record; it may still apply.
    Absent,
}

/// The entries to drop and the fence to raise, to make room in a full map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Prune {
    /// The item's version when planned: the prune applies only at it.
    pub seen_version: i64,
    /// Map keys to remove.
    pub remove: Vec<String>,
    /// The new fence: the newest issue time removed, or the old fence.
    pub fence: u64,
}

/// The recent writes on a note item.
#[derive(Debug, Clone)]
pub(super) struct Recent {
    /// Whether the item has a `writes` map (items made before it existed
    /// have none).
    pub present: bool,
    /// Its number of entries.
    pub len: usize,
    entries: Vec<Entry>,
    /// The item's fence (0 when none).
    pub fence: u64,
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

impl Recent {
    /// The record on `item`.
    pub fn of(item: &Item) -> Result<Self, StoreError> {
        let fence = match item.get(FENCE_ATTR) {
            Some(_) => read_number(item, FENCE_ATTR)?,
            None => 0,
        };
        let Some(AttributeValue::M(map)) = item.get(WRITES_ATTR) else {
            return Ok(Self {
                present: false,
                len: 0,
                entries: Vec::new(),
                fence,
            });
        };
        let mut entries = Vec::with_capacity(map.len());
        let mut unknown = Vec::new();
        for (key, value) in map {
            match Entry::read(map, key, value) {
                Some(Some(entry)) => entries.push(entry),
                // Info entries go with their write.
                Some(None) => {}
                None => unknown.push(key.clone()),
            }
        }
        // Anything unreadable is dropped first, and moves no fence.
        entries.extend(unknown.into_iter().map(|key| Entry {
            keys: vec![key],
            version: i64::MIN,
            issued_ns: 0,
            requested: false,
        }));
        Ok(Self {
            present: true,
            len: map.len(),
            entries,
            fence,
        })
    }

    /// What the record says of `write`, in the item's `writes` map `map`.
    pub fn find(&self, write: &WriteKey, item: &Item) -> Seen {
        let map = match item.get(WRITES_ATTR) {
            Some(AttributeValue::M(map)) => Some(map),
            _ => None,
        };
        let version = map.and_then(|m| match m.get(&write.key) {
            Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
            _ => None,
        });
        if let Some(version) = version {
            let issued_ns = self
                .entries
                .iter()
                .find(|e| e.keys[0] == write.key)
                .map_or(write.issued_ns, |e| e.issued_ns);
            if let Some((info_key, digest)) = &write.request {
                let same = match map.and_then(|m| m.get(info_key)) {
                    Some(AttributeValue::S(info)) => info
                        .split_once('.')
                        .is_some_and(|(_, first)| first == digest),
                    _ => false,
                };
                if !same {
                    return Seen::Reused;
                }
            }
            return Seen::Applied { version, issued_ns };
        }
        if self.fence >= write.issued_ns {
            return Seen::Fenced { fence: self.fence };
        }
        Seen::Absent
    }

    /// Whether a write must prune before it can add its entries.
    pub fn is_full(&self, write: &WriteKey) -> bool {
        let adds = if write.request.is_some() { 2 } else { 1 };
        self.len + adds > CAPACITY
    }

    /// What to drop to leave [`KEPT`] entries: unreadable ones, then plain
    /// writes, then writes with a `request_id`, oldest first.
    pub fn prune(&self, seen_version: i64) -> Prune {
        let mut order: Vec<&Entry> = self.entries.iter().collect();
        order.sort_by_key(|e| (e.requested, e.version));
        let mut left = self.len;
        let mut remove = Vec::new();
        let mut fence = self.fence;
        for entry in order {
            if left <= KEPT {
                break;
            }
            left -= entry.keys.len();
            remove.extend(entry.keys.iter().cloned());
            fence = fence.max(entry.issued_ns);
        }
        Prune {
            seen_version,
            remove,
            fence,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn item_with(writes: &[(String, AttributeValue)], fence: Option<u64>) -> Item {
        let mut item = HashMap::new();
        item.insert(
            WRITES_ATTR.to_owned(),
            AttributeValue::M(writes.iter().cloned().collect()),
        );
        if let Some(fence) = fence {
            item.insert(FENCE_ATTR.to_owned(), AttributeValue::N(fence.to_string()));
        }
        item
    }

    /// The item after `writes` applied in order, as the update expression
    /// leaves it (each entry records the version it produced).
    fn applied(writes: &[WriteKey]) -> Item {
        let mut entries = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            entries.push((write.key.clone(), AttributeValue::N((i + 2).to_string())));
            if let Some((key, value)) = write.info() {
                entries.push((key.to_owned(), AttributeValue::S(value)));
            }
        }
        item_with(&entries, None)
    }

    #[test]
    fn a_write_on_record_is_applied_with_the_version_it_made() {
        let first = WriteKey::plain(10);
        let item = applied(&[first.clone(), WriteKey::plain(11)]);
        let recent = Recent::of(&item).unwrap();
        assert_eq!(
            recent.find(&first, &item),
            Seen::Applied {
                version: 2,
                issued_ns: 10
            }
        );
        assert_eq!(recent.find(&WriteKey::plain(12), &item), Seen::Absent);
    }

    #[test]
    fn a_request_id_used_for_another_request_is_reused() {
        let first = WriteKey::requested("req-1", "aaaa", 10);
        let item = applied(std::slice::from_ref(&first));
        let recent = Recent::of(&item).unwrap();
        assert!(matches!(
            recent.find(&WriteKey::requested("req-1", "aaaa", 99), &item),
            Seen::Applied { version: 2, .. }
        ));
        assert_eq!(
            recent.find(&WriteKey::requested("req-1", "bbbb", 99), &item),
            Seen::Reused
        );
    }

    #[test]
    fn a_write_issued_at_or_before_the_fence_is_fenced() {
        let item = item_with(&[], Some(50));
        let recent = Recent::of(&item).unwrap();
        assert_eq!(
            recent.find(&WriteKey::plain(50), &item),
            Seen::Fenced { fence: 50 }
        );
        assert_eq!(recent.find(&WriteKey::plain(51), &item), Seen::Absent);
        let again = WriteKey::plain(50).reissued(50, 7);
        assert_eq!(again.issued_ns, 51);
    }

    #[test]
    fn an_item_without_a_map_is_not_present() {
        let recent = Recent::of(&HashMap::new()).unwrap();
        assert!(!recent.present);
    }

    proptest! {
        /// Pruning leaves at most KEPT entries, drops plain writes before
        /// those with a request id, and fences every write it drops, so
        /// none of them can be applied again.
        #[test]
        fn pruning_fences_every_dropped_write(
            kinds in proptest::collection::vec(any::<bool>(), CAPACITY / 2..=CAPACITY),
            start in 1u64..1_000_000,
        ) {
            let mut writes = Vec::new();
            let mut len = 0;
            for (i, requested) in kinds.iter().enumerate() {
                let issued = start + i as u64 * 7;
                let write = if *requested {
                    WriteKey::requested(&format!("req-{i}"), "d", issued)
                } else {
                    WriteKey::plain(issued)
                };
                len += if *requested { 2 } else { 1 };
                if len > CAPACITY { break; }
                writes.push(write);
            }
            let item = applied(&writes);
            let recent = Recent::of(&item).unwrap();
            let plan = recent.prune(9);
            prop_assert!(recent.len - plan.remove.len() <= KEPT);
            let mut kept = item.clone();
            if let Some(AttributeValue::M(map)) = kept.get_mut(WRITES_ATTR) {
                for key in &plan.remove { map.remove(key); }
            }
            kept.insert(FENCE_ATTR.to_owned(), AttributeValue::N(plan.fence.to_string()));
            let after = Recent::of(&kept).unwrap();
            let dropped_requested = writes.iter().any(|w| w.request.is_some()
                && plan.remove.contains(&w.key));
            for write in &writes {
                let seen = after.find(write, &kept);
                if plan.remove.contains(&write.key) {
                    prop_assert!(matches!(seen, Seen::Fenced { .. }), "{write:?} {seen:?}");
                } else {
                    prop_assert!(matches!(seen, Seen::Applied { .. }), "{write:?} {seen:?}");
                    if write.request.is_none() {
                        prop_assert!(!dropped_requested, "a request entry went before a plain one");
                    }
                }
            }
        }
    }
}
