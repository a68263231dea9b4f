#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the repository's golden files
(fuzz/corpus/<target>/golden-*), and hand-built WAL records and segments. The seeds of
the targets without golden files come from `cargo test -p regionkv-raft --lib
write_fuzz_seeds -- --ignored`. Run from anywhere; it overwrites only golden-* and
wal-* seeds."""
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def golden(path):
    return (ROOT / path).read_bytes()


def payloads(data):
    """The payloads of a client-protocol golden file, each after its u32 LE length."""
    out = []
    while len(data) >= 4:
        (n,) = struct.unpack_from("<I", data)
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


def frame(magic, kind, payload):
    return magic + bytes([1, kind]) + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def wal_record(lsn, kind, payload, durable):
    rest = struct.pack("<IIB3xQ", zlib.crc32(payload), len(payload), kind, durable)
    hcrc = zlib.crc32(struct.pack("<Q", lsn) + rest)
    return struct.pack("<I", hcrc) + rest + payload


def segment_header(seg_id, start):
    body = b"rkvWAL\r\n" + struct.pack("<IIQQ", 1, 64, seg_id, start)
    body += bytes(60 - len(body))
    return body + struct.pack("<I", zlib.crc32(body))


def main():
    eng = "engine/tests/golden/"
    for v in range(1, 6):
        put("engine_manifest", f"golden-v{v}", golden(f"{eng}manifest-v{v}.bin"))
        put("engine_checkpoint", f"golden-v{v}", golden(f"{eng}checkpoint-v{v}.bin"))
    for kind, name in [(0, "txn-lock-v2-async"), (1, "txn-record-v2-async"), (2, "dup-entry-v1"), (3, "sink-entry-v1")]:
        put("engine_record", f"golden-{name}", bytes([kind]) + golden(f"{eng}{name}.bin"))
    for v in (1, 2):
        put("raft_log_record", f"golden-v{v}", golden(f"raft/tests/golden/raft-log-v{v}.bin"))
    put("raft_recovery_state", "golden-v1", golden("raft/tests/golden/txn-recovery-state-v1.bin"))

    proto = "src/proto/golden/"
    for name in ["txn-requests-v1", "txn-answers-v1", "health-v1", "tso-v1", "txn-session-v1"]:
        for i, p in enumerate(payloads(golden(f"{proto}{name}.bin"))[:4]):
            target = "client_request" if "requests" in name else "client_response"
            put(target, f"golden-{name}-{i}", p)
            kind = 0b1010 if target == "client_request" else 0b1100
            if i == 0:
                put("client_frame", f"golden-{name}", frame(b"rkvc", kind, p))
    put("client_status", "golden-v1", b"\x00" + golden(f"{proto}store-status-v1.bin"))
    put("client_status", "golden-v2", b"\x01" + golden(f"{proto}store-status-v2.bin"))

    rec = wal_record(64, 1, b"payload", 3)
    put("wal_record", "wal-data", struct.pack("<Q", 64) + rec)
    put("wal_record", "wal-seal", struct.pack("<Q", 0) + wal_record(0, 2, b"", 0))
    put("wal_segment_header", "wal-header", segment_header(1, 0))
    image = segment_header(1, 0) + wal_record(0, 1, b"first", 0) + wal_record(29, 1, b"second", 29)
    put("wal_segment", "wal-torn", b"\x01" + image + b"\x07" * 10)
    sealed = image + wal_record(59, 2, b"", 59)
    put("wal_segment", "wal-sealed", b"\x00" + sealed + bytes(64))


if __name__ == "__main__":
    main()
