//! Golden files of the sink state (follower side of duplication): the entry format
//! and checkpoint version 5's header field 7, decoded by the current binary (see
//! `golden.rs` for how golden files are made and kept).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use regionkv_engine::CheckpointFile;
use regionkv_engine::codec;
use regionkv_engine::sink::{SINK_FORMAT, SinkEntry, SinkSlot};

mod sink_data;
use sink_data::{TOO_NEW_SINK, golden_sink, golden_sinks};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
#[ignore = "writes the golden sink entry of the current format; run on a version bump"]
fn regenerate_golden_sink_entry() -> TestResult {
    let bytes = golden_sink(0xD0_0001, 11).encode();
    std::fs::write(golden_dir().join(format!("sink-entry-v{SINK_FORMAT}.bin")), bytes)?;
    Ok(())
}

#[test]
fn golden_sink_entry_v1_decodes_field_by_field() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("sink-entry-v1.bin"))?;
    assert_eq!(bytes[0], 1, "the format byte comes first");
    let entry = SinkEntry::decode(&bytes).map_err(|e| format!("{e:?}"))?;
    assert_eq!(entry, golden_sink(0xD0_0001, 11));
    assert_eq!((entry.mark_of(b"b"), entry.mark_of(b"zz")), (40, 41));
    Ok(())
}

/// Fails when a field of a sink entry is removed, renumbered or retyped.
#[test]
fn sink_entry_schema_is_stable() -> TestResult {
    let bytes = golden_sink(0xD0_0001, 11).encode();
    assert_eq!(bytes[0], SINK_FORMAT);
    let fields = codec::fields(&bytes[1..]).map_err(|e| format!("{e:?}"))?;
    let u64s = |tag: u16| -> Vec<u64> {
        (fields.iter().filter(|f| f.tag == tag))
            .map(|f| u64::from_le_bytes(f.value.try_into().unwrap_or_default()))
            .collect()
    };
    // (tag, field, value): as released in format 1.
    for (tag, name, want) in [
        (1, "dup_id", 0xD0_0001),
        (2, "source_region", 11),
        (3, "incarnation", 3),
        (4, "seed_id", 0x5EED),
    ] {
        assert_eq!(u64s(tag), vec![want], "{name} is at tag {tag}");
    }
    // Pieces at tag 5: 1 start, 2 end (bounded) or 3 unbounded (empty), 4 mark.
    let pieces: Vec<Vec<(u16, Vec<u8>)>> = (fields.iter().filter(|f| f.tag == 5))
        .map(|f| {
            let inner = codec::fields(f.value).unwrap_or_default();
            inner.iter().map(|g| (g.tag, g.value.to_vec())).collect()
        })
        .collect();
    assert_eq!(
        pieces,
        vec![
            vec![(1, b"a".to_vec()), (2, b"c".to_vec()), (4, 40u64.to_le_bytes().to_vec())],
            vec![(1, b"c".to_vec()), (3, Vec::new()), (4, 41u64.to_le_bytes().to_vec())],
        ]
    );
    assert!(fields.iter().all(|f| (1..=5).contains(&f.tag)), "no other tag");
    assert_eq!(bytes, std::fs::read(golden_dir().join("sink-entry-v1.bin"))?);
    Ok(())
}

#[test]
fn golden_checkpoint_v5_carries_the_sink_state() -> TestResult {
    let bytes = std::fs::read(golden_dir().join("checkpoint-v5.bin"))?;
    let file = CheckpointFile::open(Bytes::from(bytes), Path::new("checkpoint-v5.bin"))?;
    let header = file.header();
    assert_eq!(header.applied_index, 42);
    assert_eq!(header.dups.as_ref().map(regionkv_engine::dup::DupTable::len), Some(4));
    let sinks = header.sinks.as_ref().ok_or("no sink state")?;
    assert_eq!(sinks, &golden_sinks()?);
    assert_eq!(sinks.len(), 3);
    assert_eq!(sinks.get(0xD0_0001, 12), Some(&SinkSlot::Known(golden_sink(0xD0_0001, 12))));
    assert_eq!(
        sinks.get(0xD0_0005, 13),
        Some(&SinkSlot::Unreadable(Bytes::from_static(TOO_NEW_SINK)))
    );
    assert!(sinks.is_frozen(0xD0_0005));
    // The checkpoint of version 4 has none.
    let v4 = std::fs::read(golden_dir().join("checkpoint-v4.bin"))?;
    let v4 = CheckpointFile::open(Bytes::from(v4), Path::new("checkpoint-v4.bin"))?;
    assert_eq!(v4.header().sinks, None);
    Ok(())
}
