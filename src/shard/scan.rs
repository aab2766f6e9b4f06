//! The default key of an event read by a hand-written scanner of the payload's top-level
//! object: the fast path of [`super::default_key_of`], which decides whether each event of
//! the stream is this shard's (and so runs once per event of every shard).
//!
//! It answers only when it is sure its answer is the one of `crate::payload::default_key`
//! (serde_json over the whole top-level object): keys and the values `payload::Ids::parse`
//! decodes must be plain (no escapes, no control characters, valid UTF-8; such values are
//! strings, `null`, `true`, `false` or integers), `content` must be an array whose first item (if any)
//! is an object, and every other value is skipped by the rules of serde_json's `ignore_value`
//! (strict JSON syntax; strings only checked for escapes and control characters). Anything
//! else (an escape in a key or a key value, a fraction, an exponent or a container where a
//! string is read, malformed JSON, nesting deeper than 128) is "unsure": the caller falls back
//! to serde_json.
//! A payload that is not a JSON object has no key, whatever follows.

/// `None`: unsure, use serde_json.
type Sure<T> = Option<T>;

/// The default key of `data` (an event of `kind`): `Some(key)` when sure, `None` when unsure.
/// The key is the conversation (`conversation`, else `conversationId`, else a `conversation`
/// event's `id`), else the group (`conversation_group`, else `conversationGroupId`); of
/// duplicate keys the last counts, and a value that is not a string counts as absent.
pub(super) fn default_key<'a>(kind: &str, data: &'a [u8]) -> Sure<Option<&'a str>> {
    let mut p = Scanner {
        b: data,
        i: 0,
        end: false,
    };
    if p.ws() != Some(b'{') {
        // Not an object (or nothing): serde_json gives no key, whether it parses or not.
        return Some(None);
    }
    p.i += 1;
    // conversation, conversationId, id, conversation_group, conversationGroupId
    let mut f: [Option<&'a [u8]>; 5] = [None; 5];
    if p.ws()? == b'}' {
        return Some(None);
    }
    loop {
        if p.ws()? != b'"' {
            return None;
        }
        p.i += 1;
        let key = p.plain_str()?;
        p.colon()?;
        let slot = match key {
            b"conversation" => Some(0),
            b"conversationId" => Some(1),
            b"id" => Some(2),
            b"conversation_group" => Some(3),
            b"conversationGroupId" => Some(4),
            // Read (as strings) by `payload::Ids::parse`: as strict as it is.
            b"entry"
            | b"entry_role"
            | b"entry_channel"
            | b"channel"
            | b"entry_content_type"
            | b"contentType" => {
                p.scalar()?;
                None
            }
            b"content" => {
                p.content()?;
                None
            }
            _ => {
                p.skip_value()?;
                None
            }
        };
        if let Some(slot) = slot {
            f[slot] = p.scalar()?;
        }
        p.after_member()?;
        if p.end {
            break;
        }
    }
    // The kind is only looked at when it matters (its bytes are one more cold cache line
    // for an event just received on another thread).
    let id = || if kind == "conversation" { f[2] } else { None };
    // Checked to be UTF-8 when read.
    f[0].or(f[1])
        .or_else(id)
        .or(f[3])
        .or(f[4])
        .map(std::str::from_utf8)
        .transpose()
        .ok()
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The index of the first `"`, `\\` or control character (< 0x20) in `s`, 8 bytes at a time,
/// and whether the bytes before it are all ASCII.
#[inline]
fn find_stop(s: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    // Every byte passed, or'ed: bit 7 of some byte is set if one of them is not ASCII.
    let mut seen = 0u64;
    while let Some(word) = s.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero (quote, backslash) or below 0x20; only
        // bytes above a match can be flagged falsely, so the lowest flag is a true match.
        let hit = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if hit != 0 {
            let at = (hit.trailing_zeros() / 8) as usize;
            seen |= x & ((1u64 << (at * 8)) - 1);
            return Some((i + at, seen & HIGH == 0));
        }
        seen |= x;
        i += 8;
    }
    for (n, &c) in s.get(i..)?.iter().enumerate() {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some((i + n, seen & HIGH == 0));
        }
        seen |= u64::from(c);
    }
    None
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Set by `after_member` at the object's closing brace.
    end: bool,
}

/// Deeper nesting than this: unsure (serde_json's own limit is 128 for what it decodes).
const MAX_DEPTH: u32 = 128;

impl<'a> Scanner<'a> {
    /// Skips JSON whitespace; the next byte, not consumed (`None` at the end).
    #[inline]
    fn ws(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b' ' | b'\n' | b'\t' | b'\r' => self.i += 1,
                _ => return Some(c),
            }
        }
        None
    }

    #[inline]
    fn colon(&mut self) -> Sure<()> {
        (self.ws()? == b':').then(|| self.i += 1)
    }

    /// After a member of the top-level object: `,` (more follow) or `}` (sets `end`).
    #[inline]
    fn after_member(&mut self) -> Sure<()> {
        match self.ws()? {
            b',' => {
                self.i += 1;
                Some(())
            }
            b'}' => {
                self.i += 1;
                self.end = true;
                Some(())
            }
            _ => None,
        }
    }

    /// A string whose opening quote was consumed, with no escape and no control character,
    /// valid UTF-8: its bytes, borrowed.
    #[inline]
    fn plain_str(&mut self) -> Sure<&'a [u8]> {
        let rest = &self.b[self.i..];
        let (n, ascii) = find_stop(rest)?;
        if rest[n] != b'"' {
            return None;
        }
        self.i += n + 1;
        let text = &rest[..n];
        (ascii || std::str::from_utf8(text).is_ok()).then_some(text)
    }

    /// A value read as "a string or nothing": a plain string, or `null`/`true`/`false`
    /// (`Some(None)`); anything else is unsure.
    #[inline]
    fn scalar(&mut self) -> Sure<Option<&'a [u8]>> {
        match self.ws()? {
            b'"' => {
                self.i += 1;
                self.plain_str().map(Some)
            }
            b'n' => self.literal(b"null").map(|()| None),
            b't' => self.literal(b"true").map(|()| None),
            b'f' => self.literal(b"false").map(|()| None),
            // serde_json decodes an integer exactly or as a float; only a float can fail
            // (out of range), so a fraction or an exponent is unsure.
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                self.skip_number()?;
                let n = &self.b[start..self.i];
                (n.len() <= 300 && !n.iter().any(|&c| matches!(c, b'.' | b'e' | b'E')))
                    .then_some(None)
            }
            _ => None,
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Sure<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// `content`: `Ids::parse` reads the first item's `role` (keys and `role` decoded, every
    /// other value ignored) and ignores the other items.
    fn content(&mut self) -> Sure<()> {
        match self.ws()? {
            b'[' => self.i += 1,
            b'"' | b'n' | b't' | b'f' => return self.scalar().map(drop),
            _ => return None,
        }
        match self.ws()? {
            b']' => {
                self.i += 1;
                return Some(());
            }
            b'{' => self.i += 1,
            _ => return None,
        }
        // The first item: an object.
        if self.ws()? == b'}' {
            self.i += 1;
        } else {
            loop {
                if self.ws()? != b'"' {
                    return None;
                }
                self.i += 1;
                let key = self.plain_str()?;
                self.colon()?;
                if key == b"role" {
                    self.scalar()?;
                } else {
                    self.skip_value()?;
                }
                match self.ws()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        loop {
            match self.ws()? {
                b',' => {
                    self.i += 1;
                    self.skip_value()?;
                }
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skips one value as serde_json's `ignore_value` does (iteratively).
    fn skip_value(&mut self) -> Sure<()> {
        // One bit per open container, 1 for an object.
        let mut stack: u128 = 0;
        let mut depth = 0u32;
        loop {
            match self.ws()? {
                b'"' => {
                    self.i += 1;
                    self.skip_str()?;
                }
                b'n' => self.literal(b"null")?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'-' | b'0'..=b'9' => self.skip_number()?,
                c @ (b'[' | b'{') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    let object = c == b'{';
                    let close = if object { b'}' } else { b']' };
                    if self.ws()? == close {
                        self.i += 1;
                    } else {
                        stack = (stack << 1) | u128::from(object);
                        depth += 1;
                        if object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // After a value: `,` or the closers of the containers it ends.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let object = stack & 1 == 1;
                match self.ws()? {
                    b',' => {
                        self.i += 1;
                        if object {
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.i += 1;
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// A key of a skipped object and its colon.
    fn member_key(&mut self) -> Sure<()> {
        if self.ws()? != b'"' {
            return None;
        }
        self.i += 1;
        self.skip_str()?;
        self.colon()
    }

    /// Skips a string whose opening quote was consumed: escapes checked (`\uXXXX` needs four
    /// hex digits), control characters refused, other bytes not checked (serde_json's
    /// `ignore_str`).
    fn skip_str(&mut self) -> Sure<()> {
        loop {
            let rest = &self.b[self.i..];
            let (n, _) = find_stop(rest)?;
            self.i += n + 1;
            match rest[n] {
                b'"' => return Some(()),
                b'\\' => match *self.b.get(self.i)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                    b'u' => {
                        let hex = self.b.get(self.i + 1..self.i + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.i += 5;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// Skips a number (strict JSON: no leading zeros, digits after `.` and the exponent).
    fn skip_number(&mut self) -> Sure<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match *self.b.get(self.i)? {
            b'0' => {
                self.i += 1;
                if self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        };
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            self.digits();
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    #[inline]
    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }
}
