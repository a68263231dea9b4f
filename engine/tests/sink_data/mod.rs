//! The golden sink state (since checkpoint version 5), shared by `golden.rs` (the
//! checkpoint scenario) and `golden_sink.rs` (the entry's schema).

use regionkv_engine::codec;
use regionkv_engine::sink::{SinkEntry, SinkPiece, SinkTable};

/// A sink entry of a format newer than this binary's: kept byte for byte.
pub const TOO_NEW_SINK: &[u8] = b"\x02a newer sink entry";

/// The golden sink entry: every field set, a bounded and an unbounded piece.
pub fn golden_sink(dup_id: u64, source_region: u64) -> SinkEntry {
    SinkEntry {
        dup_id,
        source_region,
        incarnation: 3,
        seed_id: Some(0x5EED),
        pieces: vec![
            SinkPiece { start: b"a".to_vec(), end: Some(b"c".to_vec()), mark: 40 },
            SinkPiece { start: b"c".to_vec(), end: None, mark: 41 },
        ],
    }
}

/// The golden checkpoint's sink state: two entries and one of a newer format.
pub fn golden_sinks() -> Result<SinkTable, Box<dyn std::error::Error>> {
    let mut table = SinkTable::default();
    table.set(golden_sink(0xD0_0001, 11));
    table.set(golden_sink(0xD0_0001, 12));
    let mut buf = Vec::new();
    table.encode(&mut buf);
    codec::put_nested(&mut buf, 1, |out| {
        codec::put_u64(out, 1, 0xD0_0005);
        codec::put_u64(out, 2, 13);
        codec::put_field(out, 3, TOO_NEW_SINK);
    });
    SinkTable::decode(&buf).map_err(|e| format!("{e:?}").into())
}
