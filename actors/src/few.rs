//! Containers sized for the usual case of a lock, which holds a few items
//! at most and none for most of its life: `OneOrMore`, a list that nearly
//! always holds one item, kept inline so that the usual case allocates
//! nothing (the callers waiting for a release's deletes, the answers one
//! event produces); `Table`, a map by id that is one word while it has
//! never been used (the callers waiting for a grant or a release).

use std::collections::HashMap;

/// The first item inline, the rest in a vector that allocates only when a
/// second item comes.
#[derive(Debug)]
pub(crate) struct OneOrMore<T> {
    first: Option<T>,
    more: Vec<T>,
}

impl<T> Default for OneOrMore<T> {
    fn default() -> Self {
        OneOrMore {
            first: None,
            more: Vec::new(),
        }
    }
}

impl<T> OneOrMore<T> {
    pub(crate) fn push(&mut self, item: T) {
        match self.first {
            None => self.first = Some(item),
            Some(_) => self.more.push(item),
        }
    }

    /// Holds nothing (what is pushed first is always inline).
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl<T> IntoIterator for OneOrMore<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.more)
    }
}

/// A map by id, one pointer wide while unused: a held lock keeps one for
/// its waiting callers and one for its release acknowledgements, both
/// empty for most of its life, where two hash maps took 96 bytes of its
/// state. Its room is kept between uses (a lock taken again and again
/// does not allocate each time) until [`Table::trim`].
#[derive(Debug)]
// The box is the point: an empty `HashMap` is 48 bytes inline.
#[allow(clippy::box_collection)]
pub(crate) struct Table<V>(Option<Box<HashMap<u64, V>>>);

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table(None)
    }
}

impl<V> Table<V> {
    pub(crate) fn insert(&mut self, id: u64, value: V) {
        self.0.get_or_insert_with(Box::default).insert(id, value);
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<V> {
        self.0.as_mut()?.remove(&id)
    }

    /// Gives back the room of an empty table.
    pub(crate) fn trim(&mut self) {
        if self.0.as_ref().is_some_and(|m| m.is_empty()) {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{OneOrMore, Table};

    #[test]
    fn a_table_is_one_word_and_allocates_only_once_used() {
        assert_eq!(std::mem::size_of::<Table<u64>>(), 8);
        let mut t = Table::default();
        assert!(t.0.is_none());
        assert_eq!(t.remove(1), None, "an unused table has nothing");
        t.insert(1, "a");
        t.insert(2, "b");
        t.trim();
        assert!(t.0.is_some(), "a table in use keeps its room");
        assert_eq!(t.remove(1), Some("a"));
        assert_eq!(t.remove(1), None);
        assert_eq!(t.remove(2), Some("b"));
        assert!(
            t.0.is_some(),
            "an emptied table keeps its room until trimmed"
        );
        t.trim();
        assert!(t.0.is_none());
    }

    #[test]
    fn keeps_the_order_and_allocates_only_for_a_second_item() {
        let mut few = OneOrMore::default();
        assert_eq!(few.more.capacity(), 0);
        few.push(1);
        assert_eq!(few.more.capacity(), 0, "one item stays inline");
        few.push(2);
        few.push(3);
        assert_eq!(few.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(OneOrMore::<u8>::default().into_iter().count(), 0);
    }
}
