//! JSON (`serde_json::Value`) as `google.protobuf.Value` on the wire, and the limits a
//! checkpoint value must respect (docs/semantics.md, section 7).
//!
//! The generated code's `google.protobuf.Value` is [`WireValue`] (build.rs maps it with
//! `extern_path`): it encodes JSON straight to the wire and decodes it back with its own nesting
//! limit, [`MAX_DEPTH`]. prost's generic decoder stops at 100 *message* levels and one JSON
//! object level costs three of them (`Value` -> `Struct` -> map entry -> `Value`), which left
//! about 33 JSON levels, while a Go server (protobuf-go allows 10,000 levels) stores far deeper
//! values. The limit stays bounded: the decoder recurses once per level and the input is the
//! server's.
//!
//! Objects, arrays, strings, bools and nulls round-trip exactly. Numbers travel as 64-bit floats
//! (the wire type): integers up to 2^53 come back as integers, larger ones lose precision, and
//! non-finite floats cannot be represented in JSON at all (they read as null).

use bytes::{Buf, BufMut};
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint};
use prost::encoding::{DecodeContext, WireType};
use prost::DecodeError;

type Json = serde_json::Value;

/// The deepest nesting of objects and arrays a checkpoint value may have (`{}` is one level).
/// Deeper values are refused when the snapshot is taken, and a stored one fails to load.
pub const MAX_DEPTH: usize = 100;

/// Largest integer a double holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Bytes of an `AdminCheckpoint` echo besides its value and the two strings: field keys, length
/// prefixes and the `updated_at` timestamp, rounded up.
const ECHO_OVERHEAD: usize = 64;

/// `google.protobuf.Value`, held as JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireValue(pub Json);

/// JSON -> the wire value.
pub fn json_to_value(json: &Json) -> WireValue {
    WireValue(json.clone())
}

/// The wire value -> JSON.
pub fn value_to_json(value: &WireValue) -> Json {
    value.0.clone()
}

// -- limits -------------------------------------------------------------------------------------

/// Nesting depth of a JSON value: 0 for a scalar, 1 for `{}` or `[]`, ... (only called on values
/// serde_json parsed, which are at most 128 levels deep).
pub fn depth(value: &Json) -> usize {
    match value {
        Json::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Json::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A processor's snapshot (JSON text) as the value to store, or why a checkpoint cannot hold it:
/// nested deeper than [`MAX_DEPTH`], a number beyond a 64-bit float, or (with `max_message_size`,
/// the limit of the client that stores it) an `AdminCheckpoint` too large to be read back.
pub fn snapshot_value(
    text: &str,
    client_id: &str,
    content_type: &str,
    max_message_size: Option<usize>,
) -> Result<Json, String> {
    let value: Json = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("recursion limit exceeded") {
            too_deep(None)
        } else if msg.contains("number out of range") {
            "it contains a number beyond the range of a checkpoint number (a 64-bit float, \
             magnitude at most about 1.8e308)"
                .to_string()
        } else {
            format!("it is not valid JSON: {msg}")
        }
    })?;
    let d = depth(&value);
    if d > MAX_DEPTH {
        return Err(too_deep(Some(d)));
    }
    if let Some(limit) = max_message_size {
        let size = message_len(&value, client_id, content_type);
        if size > limit {
            return Err(format!(
                "the checkpoint message would be {size} bytes, over max_message_size ({limit} \
                 bytes): the server's answer repeats it and could not be read back; raise \
                 max_message_size (on the server too) or keep the snapshot smaller"
            ));
        }
    }
    Ok(value)
}

fn too_deep(depth: Option<usize>) -> String {
    let got = match depth {
        Some(d) => format!("{d} levels"),
        None => "more than 128 levels".to_string(),
    };
    format!(
        "it nests objects/arrays {got} deep; a checkpoint value supports at most {MAX_DEPTH} levels"
    )
}

/// Upper bound of the encoded size of an `AdminCheckpoint` carrying `value` (what the server
/// answers a write with).
pub fn message_len(value: &Json, client_id: &str, content_type: &str) -> usize {
    let v = value_len(value);
    ECHO_OVERHEAD + client_id.len() + content_type.len() + v + encoded_len_varint(v as u64)
}

/// True when `message` is a protobuf decoding failure (a client-side one: the stored value is
/// too deep for [`MAX_DEPTH`], not UTF-8, or malformed).
pub fn is_decode_failure(message: &str) -> bool {
    message.contains("failed to decode Protobuf message")
}

// -- encoding -----------------------------------------------------------------------------------

fn len_delimited(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

/// Encoded length of a `Value` message body.
fn value_len(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) => 2,
        Json::Number(_) => 9,
        Json::String(s) => len_delimited(s.len()),
        Json::Array(items) => len_delimited(list_len(items)),
        Json::Object(map) => len_delimited(struct_len(map)),
    }
}

fn list_len(items: &[Json]) -> usize {
    items.iter().map(|i| len_delimited(value_len(i))).sum()
}

fn entry_len(key: &str, value: &Json) -> usize {
    len_delimited(key.len()) + len_delimited(value_len(value))
}

fn struct_len(map: &serde_json::Map<String, Json>) -> usize {
    map.iter()
        .map(|(k, v)| len_delimited(entry_len(k, v)))
        .sum()
}

fn put_bytes(tag: u32, data: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(data.len() as u64, buf);
    buf.put_slice(data);
}

fn encode_value(v: &Json, buf: &mut impl BufMut) {
    match v {
        Json::Null => {
            encode_key(1, WireType::Varint, buf);
            encode_varint(0, buf);
        }
        Json::Number(n) => {
            encode_key(2, WireType::SixtyFourBit, buf);
            buf.put_f64_le(n.as_f64().unwrap_or(f64::NAN));
        }
        Json::String(s) => put_bytes(3, s.as_bytes(), buf),
        Json::Bool(b) => {
            encode_key(4, WireType::Varint, buf);
            encode_varint(u64::from(*b), buf);
        }
        Json::Object(map) => {
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(struct_len(map) as u64, buf);
            for (k, item) in map {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(entry_len(k, item) as u64, buf);
                put_bytes(1, k.as_bytes(), buf);
                encode_key(2, WireType::LengthDelimited, buf);
                encode_varint(value_len(item) as u64, buf);
                encode_value(item, buf);
            }
        }
        Json::Array(items) => {
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(list_len(items) as u64, buf);
            for item in items {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(value_len(item) as u64, buf);
                encode_value(item, buf);
            }
        }
    }
}

// -- decoding -----------------------------------------------------------------------------------

#[allow(deprecated)] // prost offers no other constructor for a custom decoding error
fn decode_error(what: String) -> DecodeError {
    DecodeError::new(what)
}

/// One field's payload, borrowed from the message being decoded.
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Other,
}

fn need(buf: &impl Buf, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        return Err(decode_error("buffer underflow".into()));
    }
    Ok(())
}

/// Reads one field of wire type `wt` from a slice (length-delimited payloads are borrowed).
fn read_field<'a>(buf: &mut &'a [u8], wt: WireType) -> Result<Field<'a>, DecodeError> {
    if wt != WireType::LengthDelimited {
        return read_scalar(buf, wt);
    }
    let n = read_len(buf)?;
    let (data, rest) = buf.split_at(n);
    *buf = rest;
    Ok(Field::Bytes(data))
}

/// Reads a field that is not length-delimited (varint, fixed 64, skipped fixed 32; groups are
/// refused) from any buffer.
fn read_scalar<'a>(buf: &mut impl Buf, wt: WireType) -> Result<Field<'a>, DecodeError> {
    Ok(match wt {
        WireType::Varint => Field::Varint(decode_varint(buf)?),
        WireType::SixtyFourBit => {
            need(buf, 8)?;
            Field::Fixed64(buf.get_u64_le())
        }
        WireType::ThirtyTwoBit => {
            need(buf, 4)?;
            buf.advance(4);
            Field::Other
        }
        WireType::LengthDelimited => {
            return Err(decode_error(
                "a length-delimited field read as a scalar".into(),
            ))
        }
        WireType::StartGroup | WireType::EndGroup => {
            return Err(decode_error("groups are not supported".into()))
        }
    })
}

/// The length prefix of a length-delimited field, checked against what the buffer holds.
fn read_len(buf: &mut impl Buf) -> Result<usize, DecodeError> {
    let n = usize::try_from(decode_varint(buf)?)
        .map_err(|_| decode_error("length too large".into()))?;
    need(buf, n)?;
    Ok(n)
}

fn utf8(data: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(data.to_vec())
        .map_err(|_| decode_error("a string in the checkpoint value is not valid UTF-8".into()))
}

fn number_to_json(n: f64) -> Json {
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        // Exact: |n| <= 2^53 fits an i64 without rounding.
        Json::Number(serde_json::Number::from(n as i64))
    } else {
        serde_json::Number::from_f64(n)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

/// Merges one field of a `Value` at nesting `depth` into `out` (the last kind set wins).
fn merge_value_field(
    out: &mut Json,
    tag: u32,
    field: Field<'_>,
    depth: usize,
) -> Result<(), DecodeError> {
    match (tag, field) {
        (1, Field::Varint(_)) => *out = Json::Null,
        (2, Field::Fixed64(bits)) => *out = number_to_json(f64::from_bits(bits)),
        (3, Field::Bytes(data)) => *out = Json::String(utf8(data)?),
        (4, Field::Varint(b)) => *out = Json::Bool(b != 0),
        (5, Field::Bytes(data)) => *out = Json::Object(decode_struct(data, depth + 1)?),
        (6, Field::Bytes(data)) => *out = Json::Array(decode_list(data, depth + 1)?),
        (1..=6, _) => return Err(decode_error(format!("Value field {tag}: wrong wire type"))),
        _ => {} // an unknown field: skipped, as protobuf requires
    }
    Ok(())
}

fn enter(depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(decode_error(format!(
            "the checkpoint value nests objects/arrays more than {MAX_DEPTH} levels deep"
        )));
    }
    Ok(())
}

fn decode_value(mut buf: &[u8], depth: usize) -> Result<Json, DecodeError> {
    let mut out = Json::Null;
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf)?;
        let field = read_field(&mut buf, wt)?;
        merge_value_field(&mut out, tag, field, depth)?;
    }
    Ok(out)
}

fn decode_struct(
    mut buf: &[u8],
    depth: usize,
) -> Result<serde_json::Map<String, Json>, DecodeError> {
    enter(depth)?;
    let mut map = serde_json::Map::new();
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf)?;
        if let (1, Field::Bytes(mut entry)) = (tag, read_field(&mut buf, wt)?) {
            let (mut key, mut value) = (String::new(), Json::Null);
            while !entry.is_empty() {
                let (tag, wt) = decode_key(&mut entry)?;
                match (tag, read_field(&mut entry, wt)?) {
                    (1, Field::Bytes(k)) => key = utf8(k)?,
                    (2, Field::Bytes(v)) => value = decode_value(v, depth)?,
                    _ => {}
                }
            }
            map.insert(key, value);
        }
    }
    Ok(map)
}

fn decode_list(mut buf: &[u8], depth: usize) -> Result<Vec<Json>, DecodeError> {
    enter(depth)?;
    let mut items = Vec::new();
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf)?;
        if let (1, Field::Bytes(v)) = (tag, read_field(&mut buf, wt)?) {
            items.push(decode_value(v, depth)?);
        }
    }
    Ok(items)
}

impl prost::Message for WireValue {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_value(&self.0, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        _ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // The top level of the value: its payload is gathered once, then decoded as a slice
        // with this module's own depth limit (prost's is not involved below this point).
        let data;
        let field = if wire_type == WireType::LengthDelimited {
            let n = read_len(buf)?;
            data = buf.copy_to_bytes(n);
            Field::Bytes(&data)
        } else {
            read_scalar(buf, wire_type)?
        };
        merge_value_field(&mut self.0, tag, field, 0)
    }

    fn encoded_len(&self) -> usize {
        value_len(&self.0)
    }

    fn clear(&mut self) {
        self.0 = Json::Null;
    }
}

#[cfg(test)]
#[path = "jsonvalue_tests.rs"]
mod tests;
