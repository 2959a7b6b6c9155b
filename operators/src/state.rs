//! Keyed state: value, list and map state per key, kept by key group so that it can be
//! snapshotted and restored by ranges of key groups.
//!
//! A stateful operator keeps one state value per key in a [`KeyedState`]. The state of a key
//! is any serde type; [`ValueState`], [`ListState`] and [`MapState`] are the building blocks
//! users compose it from, as in Flink. Keys are grouped by the engine's routing hash into
//! [`KEY_GROUPS`] key groups, each worker owning a contiguous range of them
//! ([`worker_key_groups`](streamrun_engine::worker_key_groups)). [`Snapshot`] writes out and
//! reads back the states of a range of groups: the unit in which checkpoints and rescaling
//! move state.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use streamrun_operators::{KeyedState, ListState, MapState, Snapshot, ValueState};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Basket {
//!     owner: ValueState<String>,
//!     items: ListState<String>,
//!     per_shop: MapState<String, i64>,
//! }
//!
//! let mut baskets: KeyedState<Basket> = KeyedState::new("baskets");
//! let basket = baskets.get_or_default(b"ann");
//! basket.owner.set("Ann".into());
//! basket.items.push("tea".into());
//! *basket.per_shop.get_or_default("corner".into()) += 3;
//!
//! // Every key group, written out and read back into an empty store.
//! let snapshot = baskets.snapshot(0..streamrun_engine::KEY_GROUPS)?;
//! let mut restored: KeyedState<Basket> = KeyedState::new("baskets");
//! restored.restore(&snapshot)?;
//! let basket = restored.get(b"ann").expect("restored");
//! assert_eq!(basket.owner.get().map(String::as_str), Some("Ann"));
//! assert_eq!(basket.per_shop.get(&"corner".to_string()), Some(&3));
//! # Ok::<(), streamrun_engine::Error>(())
//! ```

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use streamrun_engine::{Error, KEY_GROUPS, Result, key_group, key_hash};

/// One value per key, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValueState<T>(Option<T>);

impl<T> Default for ValueState<T> {
    fn default() -> Self {
        ValueState(None)
    }
}

impl<T> ValueState<T> {
    /// The value, if one was set.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
    /// Replaces the value.
    pub fn set(&mut self, value: T) {
        self.0 = Some(value);
    }
    /// The value, set with `init` first if there was none.
    pub fn get_or_insert_with(&mut self, init: impl FnOnce() -> T) -> &mut T {
        self.0.get_or_insert_with(init)
    }
    /// Removes the value and returns it.
    pub fn take(&mut self) -> Option<T> {
        self.0.take()
    }
    /// Removes the value.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// A list of values per key, in the order they were added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListState<T>(Vec<T>);

impl<T> Default for ListState<T> {
    fn default() -> Self {
        ListState(Vec::new())
    }
}

impl<T> ListState<T> {
    /// Appends a value.
    pub fn push(&mut self, value: T) {
        self.0.push(value);
    }
    /// The values, oldest first.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
    /// Keeps the values for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.0.retain(keep);
    }
    /// How many values there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Removes every value and returns them.
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.0)
    }
    /// Removes every value.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A sorted map per key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MapState<K: Ord, V>(BTreeMap<K, V>);

impl<K: Ord, V> Default for MapState<K, V> {
    fn default() -> Self {
        MapState(BTreeMap::new())
    }
}

impl<K: Ord, V> MapState<K, V> {
    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key)
    }
    /// The value of `key`, to change it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.0.get_mut(key)
    }
    /// The value of `key`, inserted as `V::default()` first if there was none.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.0.entry(key).or_default()
    }
    /// Sets the value of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.insert(key, value)
    }
    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.0.remove(key)
    }
    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.0.contains_key(key)
    }
    /// The entries in key order.
    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, K, V> {
        self.0.iter()
    }
    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Removes every entry.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Writing out and reading back the state of a range of key groups.
pub trait Snapshot {
    /// The state of the key groups in `groups`, serialized.
    fn snapshot(&self, groups: Range<u32>) -> Result<Vec<u8>>;

    /// Adds the state of a snapshot, replacing that of the same keys. An unreadable snapshot
    /// is an error naming the state; nothing is added then.
    fn restore(&mut self, snapshot: &[u8]) -> Result<()>;
}

/// The snapshot format's version, checked on restore.
const SNAPSHOT_VERSION: u32 = 1;

/// The serialized form: the version, then key group → (key, state) pairs.
#[derive(Serialize, Deserialize)]
struct SnapshotData<S> {
    version: u32,
    groups: BTreeMap<u32, Vec<(Vec<u8>, S)>>,
}

/// The state of every key an operator instance has seen, by key group.
///
/// Keys are the engine's encoding of the key columns (Arrow's row format), so that a key's
/// group is the one the engine routed it by.
#[derive(Debug)]
pub struct KeyedState<S> {
    name: String,
    groups: BTreeMap<u32, HashMap<Vec<u8>, S>>,
}

impl<S> KeyedState<S> {
    /// An empty store; `name` (the operator's) appears in errors.
    pub fn new(name: &str) -> Self {
        KeyedState {
            name: name.to_owned(),
            groups: BTreeMap::new(),
        }
    }

    /// The key group of `key`.
    pub fn group_of(key: &[u8]) -> u32 {
        key_group(key_hash(key))
    }

    /// The state of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Option<&S> {
        self.groups.get(&Self::group_of(key))?.get(key)
    }

    /// The state of `key`, to change it.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut S> {
        self.groups.get_mut(&Self::group_of(key))?.get_mut(key)
    }

    /// The state of `key`, created with `S::default()` on first use.
    pub fn get_or_default(&mut self, key: &[u8]) -> &mut S
    where
        S: Default,
    {
        self.groups
            .entry(Self::group_of(key))
            .or_default()
            .entry_ref(key)
            .or_default()
    }

    /// Removes the state of `key`, returning it.
    pub fn remove(&mut self, key: &[u8]) -> Option<S> {
        let group = Self::group_of(key);
        let states = self.groups.get_mut(&group)?;
        let removed = states.remove(key);
        if states.is_empty() {
            self.groups.remove(&group);
        }
        removed
    }

    /// How many keys have state.
    pub fn len(&self) -> usize {
        self.groups.values().map(HashMap::len).sum()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every key and its state, by key group.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &S)> {
        self.groups
            .values()
            .flat_map(|states| states.iter().map(|(k, s)| (k.as_slice(), s)))
    }
}

impl<S: Serialize + DeserializeOwned> Snapshot for KeyedState<S> {
    fn snapshot(&self, groups: Range<u32>) -> Result<Vec<u8>> {
        let data = SnapshotData {
            version: SNAPSHOT_VERSION,
            groups: self
                .groups
                .range(groups)
                .map(|(g, states)| (*g, states.iter().map(|(k, s)| (k.clone(), s)).collect()))
                .collect(),
        };
        serde_json::to_vec(&data)
            .map_err(|e| Error::Internal(format!("snapshot of '{}': {e}", self.name)))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let unreadable =
            |e: String| Error::Input(format!("snapshot of '{}' is unreadable: {e}", self.name));
        let data: SnapshotData<S> =
            serde_json::from_slice(snapshot).map_err(|e| unreadable(e.to_string()))?;
        if data.version != SNAPSHOT_VERSION {
            return Err(Error::Version {
                what: "state snapshot",
                found: data.version,
                expected: SNAPSHOT_VERSION,
            });
        }
        for (group, states) in &data.groups {
            if *group >= KEY_GROUPS {
                return Err(unreadable(format!(
                    "it names key group {group} (there are {KEY_GROUPS})"
                )));
            }
            if let Some((key, _)) = states.iter().find(|(k, _)| Self::group_of(k) != *group) {
                return Err(unreadable(format!(
                    "a key of {} bytes is filed under group {group}, not its own",
                    key.len()
                )));
            }
        }
        for (group, states) in data.groups {
            self.groups.entry(group).or_default().extend(states);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamrun_engine::worker_key_groups;

    #[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
    struct Account {
        name: ValueState<String>,
        deposits: ListState<i64>,
        by_month: MapState<u32, i64>,
    }

    fn store() -> KeyedState<Account> {
        let mut store: KeyedState<Account> = KeyedState::new("accounts");
        for i in 0..200i64 {
            let key = format!("user-{}", i % 37).into_bytes();
            let account = store.get_or_default(&key);
            account
                .name
                .get_or_insert_with(|| format!("User {}", i % 37));
            account.deposits.push(i);
            *account.by_month.get_or_default((i % 12) as u32) += i;
        }
        store
    }

    #[test]
    fn the_containers_behave_like_their_std_counterparts() {
        let mut v = ValueState::default();
        assert_eq!(v.get(), None);
        v.set(3);
        assert_eq!(v.take(), Some(3));
        assert_eq!(v.get(), None);

        let mut l = ListState::default();
        (1..=6).for_each(|i| l.push(i));
        l.retain(|x| x % 2 == 0);
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), vec![2, 4, 6]);
        assert_eq!(l.take(), vec![2, 4, 6]);
        assert!(l.is_empty());

        let mut m = MapState::default();
        m.insert("b", 2);
        *m.get_or_default("a") += 1;
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(&"a", &1), (&"b", &2)]);
        assert_eq!(m.remove(&"a"), Some(1));
        assert!(!m.contains_key(&"a"));
    }

    #[test]
    fn snapshots_by_range_partition_the_keys_and_restore_them_exactly() {
        let store = store();
        assert_eq!(store.len(), 37);
        let mut parts = Vec::new();
        let mut restored = KeyedState::new("accounts");
        for w in 0..3 {
            let snapshot = store.snapshot(worker_key_groups(w, 3)).expect("snapshot");
            let mut part: KeyedState<Account> = KeyedState::new("accounts");
            part.restore(&snapshot).expect("restore");
            parts.push(part.len());
            restored.restore(&snapshot).expect("restore");
        }
        assert_eq!(
            parts.iter().sum::<usize>(),
            37,
            "each key in exactly one range"
        );
        for (key, account) in store.iter() {
            assert_eq!(restored.get(key), Some(account));
        }
    }

    #[test]
    fn a_bad_snapshot_is_refused_with_the_state_named() {
        let mut store: KeyedState<Account> = KeyedState::new("accounts");
        let e = store.restore(b"{").expect_err("not json");
        assert!(e.to_string().contains("accounts"), "{e}");
        let e = store
            .restore(br#"{"version":9,"groups":{}}"#)
            .expect_err("version");
        assert!(e.to_string().contains("version 9"), "{e}");
        let e = store
            .restore(br#"{"version":1,"groups":{"5000":[]}}"#)
            .expect_err("group");
        assert!(e.to_string().contains("5000"), "{e}");
        assert!(store.is_empty());
    }
}
