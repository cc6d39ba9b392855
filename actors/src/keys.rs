//! Key codec: how a lock name becomes `2·M−1` Valkey keys, and how an invalidated
//! key is parsed back into `(index, name)`.
//!
//! The layout is valkeylock's (Go) on the wire: `{prefix}:{i}:{name}` with `i` in
//! decimal. Parsing never panics: anything that is not one of our keys is `None`
//! (valkeylock panics on the bare prefix and on an index past the gate's key count).

use crate::error::Error;
use crate::few::InlineBytes;

/// Longest lock name accepted, in bytes. Valkey allows far longer keys, but a lock
/// name that long is almost certainly a bug (a payload passed as a name).
pub const MAX_NAME_LEN: usize = 1024;

/// The Valkey key that holds copy `index` of lock `name`.
pub(crate) fn key_name(prefix: &str, index: usize, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len() + 4);
    key.push_str(prefix);
    key.push(':');
    push_decimal(&mut key, index);
    key.push(':');
    key.push_str(name);
    key
}

/// A key as a command carries it: UTF-8 text in bytes shared with the
/// wire, so that the command, its retries and its reply's handling take it
/// by reference count instead of a copy.
///
/// Built for each command from the lock's name, not kept by the lock: a
/// held lock keeps no key names. Kept once per actor, a key's name cost
/// 104 bytes a key in every held lock (the pointer's cell, the text, the
/// bytes' shared count, the slice of names; BENCHMARKS.md, section 6);
/// built per command it costs one allocation of a command that sends it,
/// its text inline with the bytes' shared count when it is at most
/// [`KEY_INLINE`] bytes long.
#[derive(Clone, Debug)]
pub(crate) struct KeyName(fred::bytes_utils::Str);

/// The longest key kept inline with its shared count: 128 bytes in all,
/// with the count's header. Longer keys take a second allocation.
const KEY_INLINE: usize = 111;

impl KeyName {
    /// A key from its text.
    pub(crate) fn new(text: impl Into<String>) -> KeyName {
        let text: String = text.into();
        match InlineBytes::<KEY_INLINE>::new(text.as_bytes()) {
            Some(inline) => KeyName::inline(inline),
            None => KeyName(fred::bytes_utils::Str::from(text)),
        }
    }

    /// Copy `index` of lock `name`, as [`key_name`] names it.
    pub(crate) fn of(prefix: &str, index: usize, name: &str) -> KeyName {
        KeyName::format(format_args!("{prefix}:{index}:{name}"))
    }

    /// A key written straight into its buffer when it fits, with no text
    /// made first.
    pub(crate) fn format(text: std::fmt::Arguments<'_>) -> KeyName {
        match InlineBytes::<KEY_INLINE>::write(text) {
            Some(inline) => KeyName::inline(inline),
            None => KeyName(fred::bytes_utils::Str::from(text.to_string())),
        }
    }

    /// A key whose text was written into `inline` from `str`s, so is UTF-8.
    fn inline(inline: InlineBytes<KEY_INLINE>) -> KeyName {
        match fred::bytes_utils::Str::from_inner(inline.into_bytes()) {
            Ok(text) => KeyName(text),
            // Never taken: the text was written from `str`s.
            Err(e) => KeyName(fred::bytes_utils::Str::from(
                String::from_utf8_lossy(&e.into_inner()).into_owned(),
            )),
        }
    }

    /// The texts of a key and of its fencing counter's key, for the scripts
    /// that take them as strings.
    pub(crate) fn texts<'a>(
        key: &'a KeyName,
        fence_key: Option<&'a KeyName>,
    ) -> (&'a str, Option<&'a str>) {
        (key, fence_key.map(|f| &**f))
    }

    /// The key as a command argument.
    pub(crate) fn wire(&self) -> fred::types::Key {
        fred::types::Key::from(&self.0)
    }
}

impl std::ops::Deref for KeyName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn push_decimal(out: &mut String, n: usize) {
    use std::fmt::Write;
    let _ = write!(out, "{n}");
}

/// Parses an invalidated key back into `(index, name)`.
///
/// Returns `None` for keys of other prefixes, non-UTF-8 keys, a missing or
/// non-decimal index (signs, spaces and leading zeros other than `0` itself are
/// rejected, so the mapping is one-to-one), an index of `total` or more, and an
/// empty name.
pub(crate) fn parse_key<'a>(prefix: &str, total: usize, key: &'a [u8]) -> Option<(usize, &'a str)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    let (index, name) = rest.split_once(':')?;
    if index.is_empty() || index.len() > 4 || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if index.len() > 1 && index.starts_with('0') {
        return None;
    }
    let index: usize = index.parse().ok()?;
    if index >= total || name.is_empty() {
        return None;
    }
    Some((index, name))
}

/// The part of a key that Valkey Cluster hashes to pick a slot: the content of the
/// first `{…}` when it is non-empty, otherwise the whole key.
pub(crate) fn hashed_part(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(close) = key[open + 1..].find('}') {
            if close > 0 {
                return &key[open + 1..open + 1 + close];
            }
        }
    }
    key
}

/// True when every key of a lock would hash to the same cluster slot, which makes
/// the majority across keys worthless in a cluster (valkeylock defect §4.2-14).
pub(crate) fn all_keys_share_slot(prefix: &str, name: &str, total: usize) -> bool {
    if total < 2 {
        return false;
    }
    let first = key_name(prefix, 0, name);
    let second = key_name(prefix, 1, name);
    hashed_part(&first) == hashed_part(&second)
}

/// Checks a lock name: non-empty, at most [`MAX_NAME_LEN`] bytes, and no hash tag
/// that would put all keys on one cluster slot.
pub(crate) fn validate_name(prefix: &str, name: &str, total: usize) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.len() > MAX_NAME_LEN {
        "the name is longer than 1024 bytes"
    } else if all_keys_share_slot(prefix, name, total) {
        "a {hash tag} in the name would put every key of the lock on one cluster slot"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: truncate_for_error(name),
        reason,
    })
}

/// Checks a name for fair queueing on a Valkey Cluster: a key's queue must
/// hash to the key's slot, which `{key}:q` does only when the key has no
/// braces of its own.
pub(crate) fn validate_fair_name(prefix: &str, name: &str) -> Result<(), Error> {
    if !prefix.contains(['{', '}']) && !name.contains(['{', '}']) {
        return Ok(());
    }
    Err(Error::InvalidName {
        name: truncate_for_error(name),
        reason: "with fair queueing on a cluster, braces in the name or key prefix would put a key's queue on another slot than the key",
    })
}

pub(crate) fn truncate_for_error(name: &str) -> String {
    const SHOWN: usize = 64;
    if name.len() <= SHOWN {
        return name.to_owned();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        let cases = [
            ("valkeylock", 0, "my_lock", "valkeylock:0:my_lock"),
            ("valkeylock", 2, "my_lock", "valkeylock:2:my_lock"),
            ("a:b", 10, "x:y", "a:b:10:x:y"),
            ("p", 1, "ünï", "p:1:ünï"),
        ];
        for (prefix, i, name, want) in cases {
            assert_eq!(key_name(prefix, i, name), want);
        }
    }

    /// The text a key shows and the bytes a command sends are the same, for
    /// every clone, built either way, inline or not: non-ASCII names, and
    /// keys on both sides of the inline length.
    #[test]
    fn a_key_name_sends_what_it_shows() {
        let fits = "n".repeat(KEY_INLINE - "valkeylock:0:".len());
        let over = "n".repeat(KEY_INLINE - "valkeylock:0:".len() + 1);
        let long = "é".repeat(MAX_NAME_LEN / 2);
        for (prefix, index, name) in [
            ("valkeylock", 0, "my_lock"),
            ("p", 1, "ünï"),
            ("valkeylock", 0, &fits),
            ("valkeylock", 0, &over),
            ("valkeylock", 10, &over),
            ("valkeylock", 2, &long),
        ] {
            let text = key_name(prefix, index, name);
            for key in [KeyName::new(text.clone()), KeyName::of(prefix, index, name)] {
                let copy = key.clone();
                assert_eq!(&*key, text);
                assert_eq!(copy.to_string(), text);
                assert_eq!(key.wire().as_bytes(), text.as_bytes());
                assert_eq!(copy.wire().as_bytes(), text.as_bytes());
            }
        }
        assert_eq!(key_name("valkeylock", 0, &fits).len(), KEY_INLINE);
        // With the shared owner's two-word header: one 128-byte allocation.
        assert!(16 + std::mem::size_of::<InlineBytes<KEY_INLINE>>() <= 128);
    }

    /// (prefix, total keys, invalidated key, expected parse).
    type ParseCase<'a> = (&'a str, usize, &'a [u8], Option<(usize, &'a str)>);

    #[test]
    fn parse_keys() {
        let cases: &[ParseCase<'_>] = &[
            (
                "valkeylock",
                3,
                b"valkeylock:0:my_lock",
                Some((0, "my_lock")),
            ),
            ("valkeylock", 3, b"valkeylock:2:a:b:c", Some((2, "a:b:c"))),
            ("valkeylock", 3, b"valkeylock:3:my_lock", None),
            ("valkeylock", 3, b"valkeylock:7:my_lock", None),
            ("valkeylock", 3, b"valkeylock", None),
            ("valkeylock", 3, b"valkeylock:", None),
            ("valkeylock", 3, b"valkeylock:1", None),
            ("valkeylock", 3, b"valkeylock:1:", None),
            ("valkeylock", 3, b"valkeylock:x:name", None),
            ("valkeylock", 3, b"valkeylock:-1:name", None),
            ("valkeylock", 3, b"valkeylock:+1:name", None),
            ("valkeylock", 3, b"valkeylock:01:name", None),
            ("valkeylock", 3, b"valkeylock::name", None),
            ("valkeylock", 3, b"valkeylockX:1:name", None),
            ("valkeylock", 3, b"other:1:name", None),
            ("valkeylock", 3, b"valkeylock:1:\xff\xfe", None),
            ("valkeylock", 3, b"", None),
            ("valkeylock", 3, b"valkeylock:99999999999999999999:n", None),
            ("a:b", 3, b"a:b:1:n", Some((1, "n"))),
            ("a:b", 3, b"a:1:b", None),
        ];
        for (prefix, total, key, want) in cases {
            assert_eq!(
                parse_key(prefix, *total, key),
                *want,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn round_trip() {
        for i in 0..9 {
            let key = key_name("pfx", i, "n:a:m:e");
            assert_eq!(parse_key("pfx", 9, key.as_bytes()), Some((i, "n:a:m:e")));
        }
    }

    #[test]
    fn hash_tags() {
        let cases = [
            ("valkeylock", "plain", 3, false),
            ("valkeylock", "{user1}", 3, true),
            ("valkeylock", "locker:{mail}:{35020382}", 3, true),
            ("valkeylock", "{}", 3, false),
            ("valkeylock", "{user1}", 1, false),
            ("{vl}", "name", 3, true),
            ("vl{", "}name", 3, false),
            ("valkeylock", "}{", 3, false),
        ];
        for (prefix, name, total, want) in cases {
            assert_eq!(
                all_keys_share_slot(prefix, name, total),
                want,
                "{prefix} {name}"
            );
        }
    }

    #[test]
    fn fair_names_on_a_cluster() {
        assert!(validate_fair_name("p", "plain:name").is_ok());
        for (prefix, name) in [("p", "a{b}"), ("p", "}"), ("{p}", "n"), ("p{", "n")] {
            assert!(
                matches!(
                    validate_fair_name(prefix, name),
                    Err(Error::InvalidName { .. })
                ),
                "{prefix} {name}"
            );
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("p", "ok", 3).is_ok());
        assert!(validate_name("p", "with:colon", 3).is_ok());
        assert!(validate_name("p", "ünicode ✓", 3).is_ok());
        assert!(matches!(
            validate_name("p", "", 3),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            validate_name("p", "{t}", 3),
            Err(Error::InvalidName { .. })
        ));
        assert!(validate_name("p", "{t}", 1).is_ok());
        let long = "é".repeat(600);
        match validate_name("p", &long, 3) {
            Err(Error::InvalidName { name, .. }) => assert!(name.len() < 80),
            other => panic!("{other:?}"),
        }
    }
}
