//! RESP on the wire, as plain functions: a command's encoding, and a reply's
//! reading into fred's [`Value`], for the direct connections of our own
//! (`wire`).
//!
//! Why our own: fred writes every command with a flush of its own and hands
//! each reply to the caller through its connection task, which costs a
//! caller two wake-ups of that task per command; a connection that its
//! callers drive themselves writes and reads on their own tasks
//! (BENCHMARKS.md, "What limits", item 2). The reading side takes bytes a
//! server (or anything on its port) sent: whatever they are, it returns a
//! reply, "not yet" or a [`Malformed`] error, never a panic, and it never
//! allocates more than the bytes it has seen justify.
//!
//! Replies take fred's shapes, so that one reading of a script's reply
//! (`scripts::parse_*`) serves both connections: a bulk or simple string is
//! a `String` when it is UTF-8 and `Bytes` otherwise, an error is fred's
//! [`Error`] with the server's text as its details (an error nested in an
//! array makes the whole reply that error, as fred does).

use fred::bytes::Bytes;
use fred::error::{Error, ErrorKind};
use fred::types::Value;

/// How deep arrays may nest in a reply; our scripts' replies nest two deep.
const MAX_DEPTH: usize = 8;

/// The longest string or array a reply may hold; our replies hold a few
/// short strings. A length past it is [`Malformed`], so that a length
/// nothing will ever fill does not keep the connection waiting for it.
const MAX_LEN: usize = 1 << 20;

/// The longest line (a simple string, an error, a number) a reply may hold.
const MAX_LINE: usize = 64 * 1024;

/// Appends `args` to `out` as one command (an array of bulk strings).
pub(crate) fn encode<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    push_array(out, args.len());
    for arg in args {
        push_bulk(out, arg);
    }
}

/// Appends the header of an array of `n` items.
pub(crate) fn push_array(out: &mut Vec<u8>, n: usize) {
    push_header(out, b'*', n);
}

/// Appends one bulk string.
pub(crate) fn push_bulk(out: &mut Vec<u8>, data: &[u8]) {
    push_header(out, b'$', data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends one bulk string made of `parts`, one after the other.
pub(crate) fn push_bulk_parts(out: &mut Vec<u8>, parts: &[&[u8]]) {
    push_header(out, b'$', parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer as a bulk string of its decimal digits.
pub(crate) fn push_bulk_int(out: &mut Vec<u8>, n: i64) {
    let mut digits = Digits::default();
    push_bulk(out, digits.of(n));
}

fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = Digits::default();
    out.extend_from_slice(digits.of(n as i64));
    out.extend_from_slice(b"\r\n");
}

/// Room for the decimal digits of an `i64`, so that writing a number
/// allocates nothing (a command's headers hold one each).
#[derive(Default)]
struct Digits([u8; 20]);

impl Digits {
    fn of(&mut self, n: i64) -> &[u8] {
        let mut at = self.0.len();
        let mut rest = n.unsigned_abs();
        loop {
            at -= 1;
            self.0[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            at -= 1;
            self.0[at] = b'-';
        }
        &self.0[at..]
    }
}

/// One reply read from the front of a buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    /// A reply to the oldest command not yet answered.
    Reply(Result<Value, Error>),
    /// An out-of-band push (RESP3 `>`): no command's reply.
    Push,
}

/// Bytes no server sends as a reply: the connection can no longer tell one
/// reply from the next, and must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply: {0}")]
pub(crate) struct Malformed(pub(crate) &'static str);

/// Reads one reply from the front of `buf`: the reply and how many bytes it
/// took, `None` if `buf` does not hold all of it yet.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, Malformed> {
    let mut at = 0;
    let push = buf.first() == Some(&b'>');
    match value(buf, &mut at, 0)? {
        None => Ok(None),
        Some(_) if push => Ok(Some((Frame::Push, at))),
        Some(reply) => Ok(Some((Frame::Reply(reply), at))),
    }
}

/// The line that starts at `*at`, without its `\r\n`; `*at` moves past it.
fn line<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, Malformed> {
    let rest = buf.get(*at..).unwrap_or_default();
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return match rest.len() > MAX_LINE {
            true => Err(Malformed("a line too long")),
            false => Ok(None),
        };
    };
    if end == 0 || rest[end - 1] != b'\r' {
        return Err(Malformed("a line not ended by CRLF"));
    }
    *at += end + 1;
    Ok(Some(&rest[..end - 1]))
}

/// A length or an integer: optional `-`, then ASCII digits.
fn number(text: &[u8]) -> Result<i64, Malformed> {
    let text = std::str::from_utf8(text).map_err(|_| Malformed("a number not in ASCII"))?;
    text.parse().map_err(|_| Malformed("not a number"))
}

/// A length of `kind` (`-1` is null): `None` for null.
fn length(text: &[u8]) -> Result<Option<usize>, Malformed> {
    match number(text)? {
        -1 => Ok(None),
        n => match usize::try_from(n) {
            Ok(n) if n <= MAX_LEN => Ok(Some(n)),
            _ => Err(Malformed("a length out of range")),
        },
    }
}

/// A simple string: `OK`, nearly every one a server sends (a `SET`'s),
/// without a copy of its own; any other as [`string_or_bytes`].
fn simple(text: &[u8]) -> Value {
    match text {
        b"OK" => Value::String(fred::bytes_utils::Str::from_static("OK")),
        _ => string_or_bytes(text),
    }
}

/// A string as fred gives it: `String` if UTF-8, `Bytes` otherwise.
fn string_or_bytes(data: &[u8]) -> Value {
    match std::str::from_utf8(data) {
        Ok(s) => Value::String(s.into()),
        Err(_) => Value::Bytes(Bytes::copy_from_slice(data)),
    }
}

/// A server's error reply as a fred error: its text is the details (`NOSCRIPT
/// …`, `NOPERM …`), as fred keeps it.
pub(crate) fn server_error(text: &[u8]) -> Error {
    let text = String::from_utf8_lossy(text);
    let kind = match text.split_whitespace().next() {
        Some("NOAUTH" | "WRONGPASS") => ErrorKind::Auth,
        Some("WRONGTYPE") => ErrorKind::InvalidArgument,
        _ => ErrorKind::Unknown,
    };
    Error::new(kind, text.into_owned())
}

type Read = Option<Result<Value, Error>>;

/// The value that starts at `*at`, `depth` arrays deep.
fn value(buf: &[u8], at: &mut usize, depth: usize) -> Result<Read, Malformed> {
    let Some(&kind) = buf.get(*at) else {
        return Ok(None);
    };
    let start = *at;
    *at += 1;
    let Some(text) = line(buf, at)? else {
        *at = start;
        return Ok(None);
    };
    let done = |v: Value| Ok(Some(Ok(v)));
    match kind {
        b'+' => done(simple(text)),
        b'-' => Ok(Some(Err(server_error(text)))),
        b':' => done(Value::Integer(number(text)?)),
        b'_' if text.is_empty() => done(Value::Null),
        b'#' => match text {
            b"t" => done(Value::Boolean(true)),
            b"f" => done(Value::Boolean(false)),
            _ => Err(Malformed("a boolean neither t nor f")),
        },
        b',' => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .map_or(Err(Malformed("not a double")), |d| done(Value::Double(d))),
        b'$' | b'=' | b'!' => {
            let Some(n) = length(text)? else {
                return done(Value::Null);
            };
            let Some(data) = buf.get(*at..).and_then(|rest| rest.get(..n + 2)) else {
                *at = start;
                return Ok(None);
            };
            if &data[n..] != b"\r\n" {
                return Err(Malformed("a string not ended by CRLF"));
            }
            *at += n + 2;
            let data = &data[..n];
            match kind {
                b'!' => Ok(Some(Err(server_error(data)))),
                // A verbatim string starts with its format: `txt:`.
                b'=' => done(string_or_bytes(data.get(4..).unwrap_or_default())),
                _ => done(string_or_bytes(data)),
            }
        }
        b'*' | b'~' | b'>' => {
            let Some(n) = length(text)? else {
                return done(Value::Null);
            };
            if depth >= MAX_DEPTH {
                return Err(Malformed("arrays nested too deep"));
            }
            // Room for what the buffer can hold, not for what the length
            // claims: each element takes three bytes at least.
            let mut items = Vec::with_capacity(n.min(buf.len().saturating_sub(*at) / 3));
            let mut error = None;
            for _ in 0..n {
                match value(buf, at, depth + 1)? {
                    None => {
                        *at = start;
                        return Ok(None);
                    }
                    Some(Ok(v)) => items.push(v),
                    Some(Err(e)) => {
                        error.get_or_insert(e);
                    }
                }
            }
            match error {
                Some(e) => Ok(Some(Err(e))),
                None => done(Value::Array(items)),
            }
        }
        _ => Err(Malformed("a reply of an unknown type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(bytes: &[u8]) -> Result<Value, Error> {
        match parse(bytes) {
            Ok(Some((Frame::Reply(r), used))) => {
                assert_eq!(used, bytes.len(), "{:?}", String::from_utf8_lossy(bytes));
                r
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, -7, 10, 4500, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_bulk_int(&mut out, n);
            let text = n.to_string();
            assert_eq!(out, format!("${}\r\n{text}\r\n", text.len()).into_bytes());
        }
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        let args: [&[u8]; 3] = [b"EVALSHA", b"", b"a b\r\n"];
        encode(&mut out, args.into_iter());
        assert_eq!(out, b"*3\r\n$7\r\nEVALSHA\r\n$0\r\n\r\n$5\r\na b\r\n\r\n");
        let mut again = Vec::new();
        encode(&mut again, std::iter::empty());
        assert_eq!(again, b"*0\r\n");
    }

    #[test]
    fn replies_take_freds_shapes() {
        let table: Vec<(&[u8], Value)> = vec![
            (b"+OK\r\n", Value::String("OK".into())),
            (b":-42\r\n", Value::Integer(-42)),
            (b"$3\r\nabc\r\n", Value::String("abc".into())),
            (
                b"$2\r\n\xff\x00\r\n",
                Value::Bytes(Bytes::from_static(b"\xff\x00")),
            ),
            (b"$0\r\n\r\n", Value::String("".into())),
            (b"$-1\r\n", Value::Null),
            (b"*-1\r\n", Value::Null),
            (b"_\r\n", Value::Null),
            (b"#t\r\n", Value::Boolean(true)),
            (b",1.5\r\n", Value::Double(1.5)),
            (b"=7\r\ntxt:abc\r\n", Value::String("abc".into())),
            (
                b"*2\r\n*2\r\n:1\r\n:4500\r\n$-1\r\n",
                Value::Array(vec![
                    Value::Array(vec![Value::Integer(1), Value::Integer(4500)]),
                    Value::Null,
                ]),
            ),
            (b"*0\r\n", Value::Array(vec![])),
        ];
        for (bytes, want) in table {
            assert_eq!(
                reply(bytes).unwrap(),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn an_error_keeps_the_servers_text() {
        let e = reply(b"-NOSCRIPT No matching script.\r\n").unwrap_err();
        assert!(e.details().starts_with("NOSCRIPT"), "{e:?}");
        let e = reply(b"-WRONGPASS invalid username-password pair\r\n").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Auth);
        // Nested in an array, an error is the whole reply's (as fred has
        // it), and the array is read to its end all the same.
        let e = reply(b"*2\r\n-NOPERM no\r\n:1\r\n").unwrap_err();
        assert!(e.details().contains("NOPERM"), "{e:?}");
        let e = reply(b"!5\r\nERR x\r\n").unwrap_err();
        assert_eq!(e.details(), "ERR x");
    }

    #[test]
    fn a_reply_in_pieces_is_read_once_whole() {
        let whole = b"*2\r\n$5\r\nhello\r\n:7\r\n+OK\r\n";
        let first = whole.len() - 5;
        for cut in 0..first {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        let (frame, used) = parse(whole).unwrap().unwrap();
        assert_eq!(used, first);
        assert_eq!(
            frame,
            Frame::Reply(Ok(Value::Array(vec![
                Value::String("hello".into()),
                Value::Integer(7)
            ])))
        );
        assert_eq!(
            parse(&whole[used..]),
            Ok(Some((Frame::Reply(Ok(Value::String("OK".into()))), 5)))
        );
    }

    #[test]
    fn a_push_is_no_commands_reply() {
        let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        assert_eq!(parse(push), Ok(Some((Frame::Push, push.len()))));
    }

    #[test]
    fn what_no_server_sends_is_malformed() {
        let cases: [&[u8]; 14] = [
            b"?x\r\n",
            b"+OK\n",
            b":12a\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999\r\n",
            b"*-5\r\n",
            b"*99999999999\r\n",
            b"#x\r\n",
            b",nope\r\n",
            b"_x\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"$\xff\r\n",
        ];
        for bytes in cases {
            assert!(
                parse(bytes).is_err(),
                "{:?} was read",
                String::from_utf8_lossy(bytes)
            );
        }
        // A line that never ends is malformed once it is longer than any
        // reply's.
        let long = vec![b'+'; MAX_LINE + 2];
        assert_eq!(parse(&long), Err(Malformed("a line too long")));
        assert_eq!(parse(&long[..100]), Ok(None));
    }

    #[test]
    fn no_bytes_panic_the_reader() {
        // Random bytes, and random bytes spliced into valid replies: every
        // outcome is a reply, "not yet" or `Malformed`, and a reply never
        // claims more bytes than it was given.
        let valid: &[u8] = b"*3\r\n$5\r\nhello\r\n:-7\r\n*2\r\n_\r\n#f\r\n+OK\r\n-ERR x\r\n";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"*$:+-_#,=!>~\r\n0123456789-x";
        let (mut read, mut malformed) = (0, 0);
        for _ in 0..200_000 {
            let mut bytes = valid.to_vec();
            let len = (next() % 48) as usize;
            if next() % 2 == 0 {
                bytes.clear();
                for _ in 0..len {
                    bytes.push(alphabet[(next() % alphabet.len() as u64) as usize]);
                }
            } else {
                for _ in 0..1 + next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize];
                }
                bytes.truncate(len.max(1) + (next() % 40) as usize);
            }
            let mut at = 0;
            loop {
                match parse(&bytes[at..]) {
                    Ok(Some((_, used))) => {
                        assert!(used > 0 && at + used <= bytes.len());
                        at += used;
                        read += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        malformed += 1;
                        break;
                    }
                }
            }
        }
        // Both outcomes were met often: the bytes were not all of one kind.
        assert!(
            read > 20_000 && malformed > 20_000,
            "{read} read, {malformed} malformed"
        );
    }
}
