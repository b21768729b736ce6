"""Read the records of an offline W&B run file (``run-*.wandb``) without a server.

The file is a 7-byte header (``:W&B``, magic, version) followed by 32 KiB blocks of log records,
each ``crc32c(4) length(2) type(1) payload``, type FULL=1 FIRST=2 MIDDLE=3 LAST=4, payloads being
``wandb_internal_pb2.Record`` protobufs.
"""
from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset = [], b"", HEADER
    while offset + 7 <= len(data):
        room = BLOCK - (offset % BLOCK)
        if room < 7:  # block trailer padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if length == 0 and kind == 0:
            offset += room
            continue
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history_and_summary(run_dir: Path) -> tuple[list[dict[str, str]], dict[str, str], dict[str, str]]:
    """(history rows, final summary, config) of the single offline W&B run under ``run_dir``."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir}"
    history, summary, config = [], {}, {}
    for record in read_records(files[-1]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = item.value_json
        elif kind == "config":
            for item in record.config.update:
                config[item.key] = item.value_json
        elif kind == "run":
            for item in record.run.config.update:
                config[item.key] = item.value_json
    return history, summary, config
